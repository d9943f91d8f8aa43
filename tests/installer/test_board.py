"""The installer's commands against the real mpremote, on an emulated ESP32
behind a pty (hil/raw_repl_board.py: MicroPython's raw REPL answered by
MicroPython under Node, an ATECC608 emulator on I2C 0). Only esptool's write of
MicroPython itself cannot run without a board."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway.cli import main as metanoia
from gateway.db import connect
from gateway.devices import DeviceRegistry
from gateway.installer import build
from gateway.telemetry.decode import decode_message, verify
from hil.raw_repl_board import RawReplBoard

pytestmark = pytest.mark.micropython
GW = "https://gw.oak-court.example"


def device_tree(board: RawReplBoard, b: build.Bundle) -> dict[str, str]:
    return {f.path: hashlib.sha256(board.session.get("/" + f.path)).hexdigest() for f in b.files}


def test_flash_provision_configure_update_on_a_board_through_mpremote(bundle: build.Bundle, tmp_path: Path,
                                                                      capsys, monkeypatch):
    with RawReplBoard(None, seed=b"board-on-a-pty") as board:
        board.session.put("/main.py", b"import device_loop_of_an_old_release\n")
        board.session.put("/device/loop.py", b"OLD = True\n")  # would shadow loop.mpy
        # Flash: the bundle copied by `mpremote cp -r`, read back, verified.
        assert metanoia(["device", "flash", "--port", board.port, "--bundle", str(bundle.root)]) == 0
        out = capsys.readouterr().out
        assert f"verified {len(bundle.files)} files; firmware {bundle.version} starts" in out
        assert device_tree(board, bundle) == {f.path: f.sha256 for f in bundle.files}
        assert "loop.py" not in board.session.exec("import os\nprint(os.listdir('/device'))")
        assert board.resets >= 1
        # Provision: device.app opens I2C 0 from the config, as on the ESP32.
        monkeypatch.setenv("METANOIA_WIFI_PASSWORD", "correct-horse-1")
        resets = board.resets
        assert metanoia(["device", "provision", "--port", board.port, "--gateway", GW, "--grid", "oak-court",
                         "--name", "101-A", "--wifi-ssid", "flat-101", "--out", str(tmp_path / "records"),
                         "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.splitlines()[-1])
        record = Path(summary["record"])
        # main.py (the device loop and its watchdog) was parked across a reset, and is back.
        assert board.resets == resets + 2
        listing = board.session.exec("import os\nprint(sorted(os.listdir('/')))")
        assert "'main.py'" in listing and "parked" not in listing
        assert summary["configured"] and summary["fresh_key"] and summary["firmware_version"] == bundle.version
        db = tmp_path / "gw.db"
        assert metanoia(["gateway", "devices", "add", str(record), "--db", str(db)]) == 0
        assert metanoia(["gateway", "broker-config", "--db", str(db), "--out", str(tmp_path / "broker"),
                         "--grid", "oak-court", "--hostname", "192.168.10.2"]) == 0
        capsys.readouterr()
        # Configure: the credential from broker-config, and the CA.
        cred = tmp_path / "broker" / "credentials" / f"{summary['device_id']}.json"
        assert metanoia(["device", "configure", "--port", board.port, "--credentials", str(cred),
                         "--ca", str(tmp_path / "broker" / "ca.crt")]) == 0
        assert f"broker 192.168.10.2 as {summary['device_id']} (TLS), grid oak-court" in capsys.readouterr().out
        conf = json.loads(board.session.get("/config.json"))
        assert conf["mqtt"] == json.loads(cred.read_text())["mqtt"] and conf["wifi"]["ssid"] == "flat-101"
        # An update keeps the provisioned config.
        assert metanoia(["device", "flash", "--port", board.port, "--bundle", str(bundle.root), "--keep-config"]) == 0
        assert json.loads(board.session.get("/config.json")) == conf
        # What main.py does at boot, from the bundle's own modules: device.app wires the
        # chip (I2C 0), the meter (Modbus RTU on UART 2), the flash partition and MQTT over
        # TLS from /config.json; one cycle reads the meter, signs in the chip, commits.
        out = board.session.exec(
            "import binascii\nfrom device import app, config\n"
            "dev = app.build(config.load('/config.json'), clock=lambda: 1780000000)\n"
            "seq = dev.sample()\n"
            "print(binascii.hexlify([p for s, p in dev.ring.pending(4, 1 << 20) if s == seq][0]).decode())\n"
            "print(dev.counters['meter_errors'], dev.mqtt.server)")
        sig, status = out.strip().splitlines()
        assert status == "0 192.168.10.2"
    stored = DeviceRegistry(connect(db)).get(summary["device_id"])
    assert stored is not None
    (sign1,) = decode_message(bytes.fromhex(sig))
    reading = verify(sign1, stored.public_key_pem())
    # The emulated SDM630's registers: 1,000 kWh imported, 12.5 kWh exported, 830 W.
    assert (reading.import_wh, reading.export_wh, reading.power_w, reading.time) == (1000000, 12500, 830, 1780000000)
    assert not reading.software_key  # signed in the secure element


def test_a_bad_copy_is_caught_by_the_read_back(bundle: build.Bundle, capsys):
    """The board's file system corrupts one file as it is written (a flaky cable)."""
    with RawReplBoard(None) as board:
        # A closure, so the patch outlives the soft reboots that clear globals.
        board.session.exec("import builtins\n"
                           "def _install(real):\n"
                           "    class Flaky:\n"
                           "        def __init__(self, f):\n"
                           "            self.f, self.first = f, True\n"
                           "        def write(self, b):\n"
                           "            if self.first:\n"
                           "                self.first, b = False, bytes([b[0] ^ 1]) + bytes(b[1:])\n"
                           "            return self.f.write(b)\n"
                           "        def close(self):\n"
                           "            self.f.close()\n"
                           "    def fopen(p, m='r', *a):\n"
                           "        f = real(p, m, *a)\n"
                           "        return Flaky(f) if 'w' in m and p.endswith('cose.mpy') else f\n"
                           "    builtins.open = fopen\n"
                           "_install(builtins.open)\n")
        assert metanoia(["device", "flash", "--port", board.port, "--bundle", str(bundle.root)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error [verify_mismatch]") and "telemetry/cose.mpy" in err
        assert "main.py" not in board.session.exec("import os\nprint(os.listdir('/'))")
