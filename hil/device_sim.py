"""Simulated meter devices: the real firmware on CPython, wired to the virtual rig.

Each device is built by the firmware's own ``device.app.build`` from a config
dict, exactly as on an ESP32, after the host shims have been given its
hardware: the rig's serial port (``machine.attach_uart``), a flash image
(``esp32.attach_flash``) and, for publishing, a broker address. Keys are
software keys (dev-board style, flagged in every reading), kept in the
device's own folder like a key file on a dev board's flash.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hil import firmware_host
from hil.modbus_rig import Endpoints

firmware_host.install()

import esp32  # noqa: E402  (host shims, importable only after install())
import machine  # noqa: E402
from device import app, config  # noqa: E402
from device.loop import Device  # noqa: E402

_next_uart = [100]


def public_key_pem(raw: bytes) -> str:
    """PEM SubjectPublicKeyInfo for a 64-byte X||Y P-256 public key."""
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class SimulatedDevice:
    name: str
    workdir: Path
    device: Device
    config: dict[str, Any]

    @property
    def device_id(self) -> bytes:
        return bytes(self.device.signer.device_id)

    @property
    def public_key(self) -> bytes:
        return bytes(self.device.signer.public_key)

    def identity(self) -> dict[str, str]:
        """What ``device.json`` holds: nothing secret."""
        return {"device_id": self.device_id.hex(), "public_key_pem": public_key_pem(self.public_key),
                "grid": self.config["grid"], "name": self.name}

    def write_identity(self, path: Path) -> None:
        path.write_text(json.dumps(self.identity(), indent=2) + "\n")


def device_config(ep: Endpoints, workdir: Path, grid: str, mqtt: tuple[str, int] | None,
                  interval_s: int = 60) -> dict[str, Any]:
    """The config.json an installer would write for this household's hardware."""
    label = f"readings-{workdir.resolve()}"
    if ep.meter_tcp is not None:
        grid_meter: dict[str, Any] = {"profile": ep.meter_profile, "bus": "tcp", "host": ep.meter_tcp[0],
                                      "port": ep.meter_tcp[1], "unit": ep.meter_unit}
    else:
        uart_id = _next_uart[0]
        _next_uart[0] += 1
        machine.attach_uart(uart_id, ep.meter_port)
        grid_meter = {"profile": ep.meter_profile, "bus": "rtu", "uart": uart_id, "tx": None, "rx": None,
                      "de": None, "unit": ep.meter_unit}
    pv = None
    if ep.inverter_tcp is not None:
        pv = {"profile": "sunspec", "bus": "tcp", "host": ep.inverter_tcp[0], "port": ep.inverter_tcp[1],
              "unit": 1}
    host, port = mqtt or ("127.0.0.1", 1883)
    return config.merge(config.DEFAULTS, {
        "grid": grid, "interval_s": interval_s,
        "mqtt": {"host": host, "port": port},
        "grid_meter": grid_meter, "pv_inverter": pv,
        "signer": {"type": "software", "key_file": str(workdir / "devkey.bin")},
        "flash": {"partition": label},
    })


def build_device(name: str, ep: Endpoints, workdir: Path, clock: Any, grid: str = "demo",
                 mqtt: tuple[str, int] | None = None, interval_s: int = 60,
                 flash_kb: int = 256, mqtt_options: dict[str, Any] | None = None) -> SimulatedDevice:
    """A firmware Device for one household of a running ``VirtualRig``.

    ``clock.now()`` gives the simulated unix time stamped into readings. The
    flash image lives in ``workdir`` so the device keeps its backlog and seq
    across process restarts, like a real one across reboots. ``mqtt_options``
    are merged over the config's ``mqtt`` keys (e.g. TLS and the device's
    broker credential from ``metanoia gateway broker-config``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = device_config(ep, workdir, grid, mqtt, interval_s)
    if mqtt_options:
        cfg = config.merge(cfg, {"mqtt": mqtt_options})
    esp32.attach_flash(cfg["flash"]["partition"], path=str(workdir / "flash.bin"), size=flash_kb * 1024)
    dev = app.build(cfg, clock=lambda: int(clock.now()))
    return SimulatedDevice(name, workdir, dev, cfg)


def wait_for(cond: Any, devices: list[SimulatedDevice], timeout: float) -> bool:
    """Service the devices' MQTT until ``cond()`` or the timeout; True if met."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        for d in devices:
            d.device.service()
        time.sleep(0.005)
    return True
