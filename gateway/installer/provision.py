"""``metanoia device provision``: the host's half of provisioning a device.

Runs ``device.provision`` on the device over a ``Transport`` (mpremote on a
board, MicroPython under Node in CI), then writes the provisioning record of
docs/devices.md with a fresh one-time claim code, ready for ``metanoia gateway
devices add``. Settings travel in a file on the device, never on a command line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.devices import BadRecordError, check_name, record_from_dict
from gateway.installer import InstallerError
from gateway.installer.claim import new_claim_code
from gateway.installer.site import check_gateway_url
from gateway.installer.transport import DeviceError, Transport

SETTINGS_PATH = "/provision.json"
RUN = "from device import provision\nprovision.run_file({bus})\n"
CONFIGURE = "from device import provision\nprovision.configure_file({bus})\n"
MQTT_KEYS = {"host", "port", "user", "password", "ssl", "ca_file"}
# The device loop arms the ESP32's watchdog, which nothing stops: main.py is
# parked and the board reset, so provisioning runs on a quiet REPL; it comes back
# afterwards, whatever happened.
PARK = """import os
try:
    os.stat("main.py")
    try:
        os.remove("main.py.parked")
    except OSError:
        pass
    os.rename("main.py", "main.py.parked")
    print("parked")
except OSError:
    print("no main.py")
"""
UNPARK = """import os
try:
    os.rename("main.py.parked", "main.py")
except OSError:
    pass
"""

# Device-side exception names -> (reason, what the installer should do).
_DEVICE_ERRORS = {
    "ATECCWakeError": ("no_chip", "no ATECC608 answers on the I2C bus: check its wiring (SDA GPIO21, SCL GPIO22, "
                                  "3V3, GND, pull-ups) and signer.address in the config"),
    "ATECCNoResponseError": ("no_chip", "the ATECC608 stopped answering: check its wiring and power"),
    "ATECCConfigError": ("chip_config", "the ATECC608's config zone is locked with another layout; this chip "
                                        "cannot hold the device key: fit a new, unconfigured chip"),
    "ATECCExecutionError": ("chip_refused", "the ATECC608 refused a step (lock state or slot config)"),
    "ConfigError": ("bad_device_config", "the device refused the settings"),
    "ImportError": ("no_firmware", "the device has no Metanoia firmware: run metanoia device flash first"),
}


class ProvisionError(InstallerError):
    pass


@dataclass(frozen=True)
class Provisioned:
    record: dict[str, Any]       # the provisioning record (with the claim code)
    device: dict[str, Any]       # what the device reported
    path: Path | None            # where the record was written


def settings_for(grid: str, *, wifi_ssid: str | None = None, wifi_password: str | None = None,
                 broker: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keys of config.json that provisioning sets (others stay as built)."""
    try:
        check_name(grid, "grid")
    except BadRecordError as e:
        raise ProvisionError(str(e), "bad_grid") from None
    s: dict[str, Any] = {"grid": grid}
    if wifi_ssid is not None:
        if len(wifi_ssid.encode()) > 32:
            raise ProvisionError("the Wi-Fi SSID is longer than 32 bytes", "bad_wifi")
        if wifi_password and not 8 <= len(wifi_password) <= 63:
            raise ProvisionError("the Wi-Fi password must be 8-63 characters (WPA2)", "bad_wifi")
        s["wifi"] = {"ssid": wifi_ssid, "password": wifi_password or ""}
    if broker:
        s["mqtt"] = dict(broker)
    return s


def run_on_device(t: Transport, settings: dict[str, Any], bus: str = "None", code: str = RUN) -> dict[str, Any]:
    """Park main.py, put the settings, run the device module, parse its JSON line."""
    parked = "parked" in t.exec(PARK)
    try:
        if parked:
            t.reset()
        t.put(SETTINGS_PATH, json.dumps(settings).encode())
        out = t.exec(code.format(bus=bus), timeout=120.0)
    except DeviceError as e:
        name = e.traceback.strip().splitlines()[-1].split(":")[0].strip() if e.traceback.strip() else ""
        reason, hint = _DEVICE_ERRORS.get(name.rsplit(".", 1)[-1], ("device_error", "the device raised an error"))
        raise ProvisionError(f"{hint} ({e})", reason) from None
    finally:
        if parked:
            t.exec(UNPARK)
            t.reset()
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ProvisionError(f"the device printed no result: {out.strip()[-200:]!r}", "device_error")


def provision(t: Transport, *, gateway_url: str, grid: str, name: str | None = None, profile: str | None = None,
              out_dir: Path | None = None, bus: str = "None", **settings_kw: Any) -> Provisioned:
    """Provision the device behind ``t`` and write ``out_dir/<device_id>.json``."""
    check_gateway_url(gateway_url)
    if name is not None and not (0 < len(name) <= 64 and name.isprintable()):
        raise ProvisionError("--name must be 1-64 printable characters (the flat, e.g. 101-A)", "bad_name")
    dev = run_on_device(t, settings_for(grid, **settings_kw), bus)
    record: dict[str, Any] = {"device_id": dev["device_id"], "public_key": dev["public_key"],
                              "claim_code": new_claim_code(), "grid": dev["grid"],
                              "profile": profile or dev["profile"]}
    if name:
        record["name"] = name
    try:
        record_from_dict(record)  # exactly the check `gateway devices add` makes
    except BadRecordError as e:
        raise ProvisionError(f"the device's answer makes no valid record: {e}", e.reason or "bad_record") from None
    path = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{record['device_id']}.json"
        # The claim code is a secret until the label is on the device: 0600.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=1) + "\n")
    return Provisioned(record, dev, path)


def load_credentials(path: Path) -> tuple[str, dict[str, Any]]:
    """(device id, mqtt settings) from broker-config's ``credentials/<device id>.json``."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror}", "no_file") from None
    except ValueError:
        raise ProvisionError(f"{path} is not JSON", "not_json") from None
    mqtt = data.get("mqtt") if isinstance(data, dict) else None
    if not isinstance(mqtt, dict) or set(mqtt) != MQTT_KEYS or not isinstance(data.get("device_id"), str):
        raise ProvisionError(f"{path} is not a device credential from `metanoia gateway broker-config` "
                             "(credentials/<device id>.json)", "bad_credentials")
    return data["device_id"], mqtt


def configure(t: Transport, *, credentials: Path | None = None, ca: bytes | None = None, bus: str = "None",
              **settings_kw: Any) -> dict[str, Any]:
    """Put a broker credential (and the complex's CA) and/or Wi-Fi on a provisioned device."""
    settings: dict[str, Any] = {}
    if settings_kw.get("wifi_ssid") is not None:
        settings = settings_for("x", **settings_kw)
        del settings["grid"]
    if credentials is not None:
        device_id, mqtt = load_credentials(credentials)
        settings["mqtt"] = mqtt
        settings["expect_device_id"] = device_id
        if mqtt["ssl"] and ca is None:
            raise ProvisionError("the credential is for a TLS broker: give --ca (ca.crt from broker-config)",
                                 "missing_ca")
    if not settings:
        raise ProvisionError("nothing to configure: give --credentials and/or --wifi-ssid", "nothing_to_do")
    if ca is not None:
        if b"-----BEGIN CERTIFICATE-----" not in ca:
            raise ProvisionError("--ca is not a PEM certificate", "missing_ca")
        t.put(settings.get("mqtt", {}).get("ca_file") or "/ca.crt", ca)
    return run_on_device(t, settings, bus, CONFIGURE)
