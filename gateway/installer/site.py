"""The installer's site config: one TOML file per complex, with documented defaults.

It names what a whole batch of devices shares (grid, broker, gateway URL, meter
profile, optionally a Wi-Fi network) and becomes the device's ``/config.json``
in the bundle; ``provision`` later adds what is per flat (its Wi-Fi). Every
default works for the demo. Unknown keys are refused, so a typo cannot fall
back to a default; each refusal has its own reason code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.devices import BadRecordError, check_name
from gateway.installer import InstallerError

# The file's keys and their defaults (docs/installer.md has the same table).
DEFAULTS: dict[str, Any] = {
    "grid": "demo",                          # MQTT topic prefix; the utility names it
    "gateway_url": "http://127.0.0.1:8080",  # the pairing pages' base URL (labels)
    "meter": {"profile": "sdm630",           # sdm630 | sdm120 | sunspec
              "unit": 1},                    # Modbus unit id
    "wifi": {"ssid": "", "password": ""},    # usually per flat: give it to provision
    "broker": {"host": "127.0.0.1", "port": None,  # None: 8883 with TLS, else 1883
               "tls": False,
               "ca_file": None},             # PEM on this host; goes on the device as /ca.crt
    "device": {},                            # any other key of the firmware's config.json
}
PROFILES = ("sdm630", "sdm120", "sunspec")
DEVICE_CA_PATH = "/ca.crt"


class SiteConfigError(InstallerError):
    pass


@dataclass(frozen=True)
class SiteConfig:
    grid: str
    gateway_url: str
    profile: str
    unit: int
    wifi_ssid: str
    wifi_password: str = field(repr=False)
    broker_host: str
    broker_port: int
    broker_tls: bool
    ca_file: Path | None
    device: dict[str, Any]

    def device_config(self) -> dict[str, Any]:
        """The firmware's ``/config.json`` (only keys that differ from its defaults
        are needed, but writing these explicitly documents the device)."""
        cfg: dict[str, Any] = {
            "grid": self.grid,
            "wifi": {"ssid": self.wifi_ssid, "password": self.wifi_password},
            "mqtt": {"host": self.broker_host, "port": self.broker_port, "ssl": self.broker_tls,
                     "ca_file": DEVICE_CA_PATH if self.broker_tls else None},
            "grid_meter": {"profile": self.profile, "unit": self.unit},
        }
        if self.profile == "sunspec":
            cfg["grid_meter"]["bus"] = "tcp"
        for k, v in self.device.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        return cfg


def _merge(defaults: dict[str, Any], given: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = dict(defaults)
    for k, v in given.items():
        if k not in defaults:
            raise SiteConfigError(f"unknown key {path}{k} in the site config", "unknown_key")
        d = defaults[k]
        if isinstance(d, dict) and d and isinstance(v, dict):
            out[k] = _merge(d, v, f"{path}{k}.")
        elif isinstance(d, dict) and not isinstance(v, dict):
            raise SiteConfigError(f"{path}{k} must be a table", "bad_type")
        else:
            out[k] = v
    return out


def check_gateway_url(url: object) -> str:
    """An http(s) URL with a host and no query or fragment; no trailing slash."""
    if not isinstance(url, str):
        raise SiteConfigError("gateway_url must be a string", "bad_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SiteConfigError(f"gateway_url {url!r} must be http(s)://host[:port][/path]", "bad_url")
    return url.rstrip("/")


def from_dict(data: dict[str, Any], base: Path | None = None) -> SiteConfig:
    """Validate ``data`` over DEFAULTS; ``base`` resolves a relative ca_file."""
    if not isinstance(data, dict):
        raise SiteConfigError("the site config must be a table", "bad_type")
    c = _merge(DEFAULTS, data)
    try:
        check_name(c["grid"], "grid")
    except BadRecordError as e:
        raise SiteConfigError(str(e), "bad_grid") from None
    meter, wifi, broker = c["meter"], c["wifi"], c["broker"]
    if meter["profile"] not in PROFILES:
        raise SiteConfigError(f"meter.profile {meter['profile']!r} is not one of {', '.join(PROFILES)}",
                              "bad_profile")
    if not isinstance(meter["unit"], int) or isinstance(meter["unit"], bool) or not 1 <= meter["unit"] <= 247:
        raise SiteConfigError("meter.unit must be a Modbus unit id 1-247", "bad_unit")
    if not isinstance(wifi["ssid"], str) or len(wifi["ssid"].encode()) > 32:
        raise SiteConfigError("wifi.ssid must be a string of at most 32 bytes", "bad_wifi")
    if not isinstance(wifi["password"], str) or (wifi["password"] and not 8 <= len(wifi["password"]) <= 63):
        raise SiteConfigError("wifi.password must be empty or 8-63 characters (WPA2)", "bad_wifi")
    if not isinstance(broker["host"], str) or not broker["host"] or any(ch in broker["host"] for ch in " /:"):
        raise SiteConfigError("broker.host must be a host name or IP address", "bad_broker")
    if not isinstance(broker["tls"], bool):
        raise SiteConfigError("broker.tls must be true or false", "bad_broker")
    port = broker["port"] if broker["port"] is not None else (8883 if broker["tls"] else 1883)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise SiteConfigError("broker.port must be 1-65535", "bad_port")
    ca = broker["ca_file"]
    ca_path = None
    if broker["tls"]:
        if not ca:
            raise SiteConfigError("broker.tls needs broker.ca_file (ca.crt from gateway broker-config)", "missing_ca")
        ca_path = Path(ca) if base is None or Path(ca).is_absolute() else base / ca
        if not ca_path.is_file() or b"-----BEGIN CERTIFICATE-----" not in ca_path.read_bytes():
            raise SiteConfigError(f"broker.ca_file {ca_path} is not a PEM certificate", "missing_ca")
    return SiteConfig(grid=c["grid"], gateway_url=check_gateway_url(c["gateway_url"]), profile=meter["profile"],
                      unit=meter["unit"], wifi_ssid=wifi["ssid"], wifi_password=wifi["password"],
                      broker_host=broker["host"], broker_port=port, broker_tls=broker["tls"], ca_file=ca_path,
                      device=dict(c["device"]))


def load(path: Path | None) -> SiteConfig:
    """The site config from a TOML file (or all defaults when ``path`` is None)."""
    if path is None:
        return from_dict({})
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise SiteConfigError(f"cannot read {path}: {e.strerror}", "no_file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SiteConfigError(f"{path} is not TOML: {e}", "not_toml") from None
    return from_dict(data, Path(path).resolve().parent)

