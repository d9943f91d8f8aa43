"""``metanoia device flash``: the dry run prints exactly what runs, and the real
esptool and mpremote, pointed at ports that fail in each known way, give the
installer a specific message. The device-side steps (clean, copy, read back
hashes) run on MicroPython under Node against the bundle."""

from __future__ import annotations

import json
import os
import shlex
import struct
import sys
import tty
from pathlib import Path

import pytest

from gateway.cli import main as metanoia
from gateway.installer import build, flash
from gateway.installer.transport import MPREMOTE, MpremoteTransport, PortError
from hil.esp_rom import EspRom
from hil.mp_session import NodeSession


def image(tmp_path: Path, chip_id: int = 0, size: int = 4096) -> Path:
    """A file with an ESP image header (magic 0xE9, extended header chip id)."""
    head = bytes([0xE9, 3, 2, 0x20]) + b"\x00" * 8 + struct.pack("<H", chip_id) + b"\x00" * 10
    p = tmp_path / "firmware.bin"
    p.write_bytes(head + b"\xff" * (size - len(head)))
    return p


@pytest.fixture()
def silent_port():
    """A pty nobody answers on: a board that is not in download mode (or has no REPL)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_dry_run_prints_the_exact_commands_and_touches_nothing(bundle: build.Bundle, tmp_path: Path, capsys):
    fw = image(tmp_path)
    assert metanoia(["device", "flash", "--port", "/dev/ttyUSB9", "--firmware", str(fw), "--bundle",
                     str(bundle.root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    commands = [ln for ln in shlex.split(out, comments=True)]
    assert commands  # shell-parsable
    want = flash.plan(flash.Options(port="/dev/ttyUSB9", firmware=fw, bundle=bundle))
    assert out == "\n".join(s.shell() for s in want) + "\n"
    esptool = [s.argv for s in want if "esptool" in s.argv]
    assert esptool == [(*flash.ESPTOOL, "--chip", "esp32", "--port", "/dev/ttyUSB9", "--baud", "460800",
                        "write-flash", "-z", "0x1000", str(fw))]
    copy = next(s for s in want if s.cwd is not None)
    assert copy.cwd == bundle.fs and copy.argv[len(MPREMOTE):len(MPREMOTE) + 2] == ("connect", "/dev/ttyUSB9")
    assert f"cd {bundle.fs} &&" in out and "cp -r device meter_driver secure_sign storage telemetry :" in out
    assert not Path("/dev/ttyUSB9").exists()


def test_erase_comes_first_and_only_when_asked(tmp_path: Path):
    fw = image(tmp_path)
    steps = flash.plan(flash.Options(port="/dev/ttyUSB0", firmware=fw, erase=True))
    assert [s.argv[-1] for s in steps if s.argv][:2] == ["erase-flash", str(fw)]
    assert not any("erase-flash" in s.argv for s in flash.plan(flash.Options(port="/dev/ttyUSB0", firmware=fw)))


def test_keep_config_leaves_the_provisioned_settings(bundle: build.Bundle):
    steps = flash.plan(flash.Options(port="/dev/ttyUSB0", bundle=bundle, keep_config=True))
    assert not any("config.json" in a for s in steps if s.cwd for a in s.argv)
    assert "config.json" not in flash.verified_paths(bundle, True)


def test_the_printed_commands_run_on_micropython(bundle: build.Bundle):
    """The exec steps of the plan, as printed, run on MicroPython and the read-back
    of a faithfully copied bundle matches the manifest."""
    steps = flash.plan(flash.Options(port="/dev/ttyUSB0", bundle=bundle))
    execs = {s.what: s.argv[-1] for s in steps if "exec" in s.argv}
    with NodeSession(None) as dev:
        dev.put("/main.py", b"print('old')")
        dev.put("/device/loop.py", b"stale = True")   # a stale source that would shadow loop.mpy
        dev.exec(execs["remove main.py: the board boots to a quiet REPL, no watchdog"])
        dev.exec(execs["remove the old firmware packages"])
        listing = dev.exec("import os\nprint(sorted(os.listdir('/')))")
        assert "'device'" not in listing and "'main.py'" not in listing
        dev.put_tree(bundle.fs, flash.bundle_names(bundle, False))
        hashes = json.loads(dev.exec(execs["read back the SHA-256 of every file and compare with the manifest"]))
    assert hashes == {f.path: f.sha256 for f in bundle.files}


def test_install_verifies_and_a_mismatch_disarms_the_board(bundle: build.Bundle):
    class FlakyCable(NodeSession):
        def put(self, path: str, data: bytes) -> None:
            if path == "/telemetry/cose.mpy":
                data = data[:-1] + bytes([data[-1] ^ 0x01])
            super().put(path, data)

    with NodeSession(None) as good:
        flash.install_bundle(good, bundle)
        assert flash.verify(good, bundle) == []
    with FlakyCable(None) as dev:
        with pytest.raises(flash.FlashError) as e:
            flash.install_bundle(dev, bundle)
        assert e.value.reason == "verify_mismatch" and "telemetry/cose.mpy" in str(e.value)
        assert "main.py" not in dev.exec("import os\nprint(os.listdir('/'))")


def test_a_micropython_that_cannot_load_the_bundle_is_refused_before_copying(bundle: build.Bundle):
    import dataclasses

    with NodeSession(None) as dev:
        flash.check_mpy(dev, bundle)  # MicroPython 1.27 under Node reads what mpy-cross wrote
        future = dataclasses.replace(bundle, mpy_version=bundle.mpy_version + 1)
        with pytest.raises(flash.FlashError) as e:
            flash.install_bundle(dev, future)
        assert e.value.reason == "mpy_mismatch" and "flash a current MicroPython" in str(e.value)
        assert "device" not in dev.exec("import os\nprint(os.listdir('/'))")


def test_a_missing_port_is_named_before_any_tool_runs(tmp_path: Path, capsys):
    assert metanoia(["device", "flash", "--port", "/dev/ttyNOPE", "--firmware", str(image(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error [no_port]: no serial port /dev/ttyNOPE") and "/dev/serial/by-id" in err


def test_real_esptool_on_a_missing_port(tmp_path: Path):
    o = flash.Options(port="/dev/ttyNOPE", firmware=image(tmp_path), connect_attempts=1)
    with pytest.raises(flash.FlashError) as e:
        flash.run_esptool(flash.plan(o)[0], o.port)
    assert e.value.reason == "no_port"


def test_real_esptool_on_a_silent_board_says_hold_boot_and_tap_en(tmp_path: Path, silent_port: str, capsys):
    code = metanoia(["device", "flash", "--port", silent_port, "--firmware", str(image(tmp_path)),
                     "--connect-attempts", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error [not_in_download_mode]:")
    assert "hold BOOT, tap EN (reset), release BOOT" in err


def test_real_esptool_on_another_chip_says_wrong_chip(tmp_path: Path):
    with EspRom(chip_id=9) as rom:  # an ESP32-S3's ROM
        o = flash.Options(port=rom.port, firmware=image(tmp_path), connect_attempts=1)
        with pytest.raises(flash.FlashError) as e:
            flash.flash(o, say=lambda _s: None)
    assert e.value.reason == "wrong_chip" and "ESP32-S3, not an ESP32" in str(e.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the tool as another user")
def test_real_esptool_without_permission_on_the_port_says_dialout(tmp_path: Path, silent_port: str, monkeypatch):
    import subprocess

    import shutil
    import tempfile

    os.chmod(silent_port, 0o600)  # root's; the tool runs as nobody
    home = Path(tempfile.mkdtemp(prefix="metanoia-nobody-"))  # esptool reads its config from cwd and ~
    os.chmod(home, 0o777)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run([*nobody, "-c", "import esptool"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True) if probe.returncode else None
    if probe.returncode != 0:  # else a "Permission denied" on the venv would pass for the port's
        pytest.skip(f"user nobody cannot run this venv's Python here: {probe.stderr.decode()[-200:]}")
    o = flash.Options(port=silent_port, firmware=image(home), connect_attempts=1, esptool=[*nobody, "-m", "esptool"])
    try:
        with pytest.raises(flash.FlashError) as e:
            flash.run_esptool(flash.plan(o)[0], o.port)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert e.value.reason == "port_permission" and f"permission denied on {silent_port}" in str(e.value)
    assert "dialout" in str(e.value)


def test_real_mpremote_on_a_board_without_a_repl_times_out_with_advice(bundle: build.Bundle, silent_port: str):
    with pytest.raises(PortError) as e:
        flash.flash(flash.Options(port=silent_port, bundle=bundle, repl_timeout=3.0), say=lambda _s: None)
    assert e.value.reason == "no_repl" and "is MicroPython flashed" in str(e.value)


def test_real_mpremote_on_a_missing_port():
    with pytest.raises(PortError) as e:
        MpremoteTransport("/dev/ttyNOPE").exec("pass")
    assert e.value.reason == "no_port"


@pytest.mark.parametrize("chip_id, size, reason", [(9, 4096, "wrong_chip"), (0, flash.MAX_IMAGE + 1, "image_too_big")])
def test_images_for_another_chip_or_too_big_are_refused(tmp_path: Path, chip_id: int, size: int, reason: str):
    with pytest.raises(flash.FlashError) as e:
        flash.check_image(image(tmp_path, chip_id, size))
    assert e.value.reason == reason


def test_a_file_that_is_no_firmware_image_is_refused(tmp_path: Path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(flash.FlashError) as e:
        flash.check_image(junk)
    assert e.value.reason == "bad_image"
    with pytest.raises(flash.FlashError) as e:
        flash.check_image(tmp_path / "missing.bin")
    assert e.value.reason == "no_firmware_file"
