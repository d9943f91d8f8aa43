"""``metanoia device flash``: MicroPython with esptool, the bundle with mpremote,
then what the device holds is read back and checked against the manifest.

Order (each step a real command; ``--dry-run`` prints them exactly):

1. ``esptool write-flash -z 0x1000 FIRMWARE.bin`` (ESP32: bootloader at 0x1000,
   partition table and app follow inside the image; esptool checks the written
   flash's hash itself). Only with ``--firmware``; ``--erase`` first wipes the
   whole flash, for new boards only (it restarts the device's seq at 1).
2. ``exec``: remove ``main.py`` (no device loop, so no watchdog), ``reset``, wait
   for the REPL.
3. ``exec``: check the board reads the bundle's .mpy version; remove the firmware packages (a stale ``.py`` would shadow its
   ``.mpy``), then ``cp -r`` the bundle's files (``config.json`` unless
   ``--keep-config``, which keeps a provisioned device's settings).
4. ``exec``: SHA-256 of every bundle file on the device, compared with the
   manifest; a mismatch removes ``main.py`` again and fails. Then ``reset``.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gateway.installer import InstallerError
from gateway.installer.build import Bundle
from gateway.installer.transport import MpremoteTransport, Transport, check_port, wait_for_repl

ESPTOOL = [sys.executable, "-m", "esptool"]
CHIP = "esp32"
APP_OFFSET = 0x1000              # the ESP32's second-stage bootloader, start of firmware.bin
MAX_IMAGE = 0x230000 - APP_OFFSET  # up to the vfs partition (firmware/board/partitions-4MiB-metanoia.csv)
# Extended image header, chip id (uint16 at byte 12) -> name (esptool's targets).
IMAGE_CHIPS = {0: "ESP32", 2: "ESP32-S2", 5: "ESP32-C3", 9: "ESP32-S3", 12: "ESP32-C2", 13: "ESP32-C6",
               16: "ESP32-H2", 18: "ESP32-P4"}
DEVICE_ONLY_LAST = "main.py"     # copied with the rest, but it only runs after the final reset

DISARM = """import os
try:
    os.remove("main.py")
except OSError:
    pass
"""

CLEAN = """import os
def _rm(p):
    try:
        st = os.stat(p)
    except OSError:
        return
    if st[0] & 0x4000:
        for n in os.listdir(p):
            _rm(p + "/" + n)
        os.rmdir(p)
    else:
        os.remove(p)
for _p in %s:
    _rm(_p)
"""

# Runs on the device: one JSON line {path: sha256 hex or null}.
VERIFY = """import hashlib, binascii, json
_out = {}
_buf = bytearray(512)
for _p in %s:
    _h = hashlib.sha256()
    try:
        with open(_p, "rb") as _f:
            while True:
                _n = _f.readinto(_buf)
                if not _n:
                    break
                _h.update(_buf[:_n])
        _out[_p] = binascii.hexlify(_h.digest()).decode()
    except OSError:
        _out[_p] = None
print(json.dumps(_out))
"""


class FlashError(InstallerError):
    pass


@dataclass(frozen=True)
class Step:
    what: str
    argv: tuple[str, ...] = ()
    cwd: Path | None = None

    def shell(self) -> str:
        if not self.argv:
            return f"# {self.what}"
        cmd = shlex.join(self.argv)
        return f"# {self.what}\n" + (f"(cd {shlex.quote(str(self.cwd))} && {cmd})" if self.cwd else cmd)


@dataclass
class Options:
    port: str
    firmware: Path | None = None
    bundle: Bundle | None = None
    baud: int = 460800
    erase: bool = False
    keep_config: bool = False
    connect_attempts: int | None = None     # esptool's default (7) when None
    repl_timeout: float = 30.0
    esptool: list[str] = field(default_factory=lambda: list(ESPTOOL))


def check_image(path: Path) -> None:
    """An ESP32 application image (magic 0xE9, chip id 0) that fits before vfs."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlashError(f"cannot read {path}: {e.strerror}", "no_firmware_file") from None
    if len(data) < 24 or data[0] != 0xE9:
        raise FlashError(f"{path} is not an ESP32 firmware image (no 0xE9 header): use MicroPython's "
                         "firmware.bin for ESP32_GENERIC or our METANOIA board", "bad_image")
    chip = struct.unpack_from("<H", data, 12)[0]
    if chip != 0:
        raise FlashError(f"{path} is built for {IMAGE_CHIPS.get(chip, f'chip id {chip}')}, not ESP32: "
                         "download the ESP32 image", "wrong_chip")
    if len(data) > MAX_IMAGE:
        raise FlashError(f"{path} is {len(data)} bytes; at most {MAX_IMAGE} fit before the vfs partition",
                         "image_too_big")


def esptool_argv(o: Options, *args: str) -> list[str]:
    argv = [*o.esptool, "--chip", CHIP, "--port", o.port, "--baud", str(o.baud)]
    if o.connect_attempts is not None:
        argv += ["--connect-attempts", str(o.connect_attempts)]
    return argv + list(args)


def bundle_names(b: Bundle, keep_config: bool) -> list[str]:
    """Top-level names of the bundle's fs/ to copy."""
    names = sorted({f.path.split("/")[0] for f in b.files})
    return [n for n in names if not (keep_config and n == "config.json")]


def verified_paths(b: Bundle, keep_config: bool) -> list[str]:
    return [f.path for f in b.files if not (keep_config and f.path == "config.json")]


def plan(o: Options) -> list[Step]:
    """Every step, with the exact command it runs."""
    steps: list[Step] = []
    if o.firmware is not None:
        if o.erase:
            steps.append(Step("erase the whole flash (new boards only)", tuple(esptool_argv(o, "erase-flash"))))
        steps.append(Step(f"write MicroPython at {APP_OFFSET:#x} (esptool verifies the flash hash)",
                          tuple(esptool_argv(o, "write-flash", "-z", f"{APP_OFFSET:#x}", str(o.firmware)))))
    if o.bundle is not None:
        b = o.bundle
        mp = MpremoteTransport(o.port)
        names = bundle_names(b, o.keep_config)
        packages = [n for n in names if (b.fs / n).is_dir()]
        if o.firmware is not None:
            steps.append(Step(f"wait until MicroPython's first boot gives a REPL (up to {o.repl_timeout:.0f} s)"))
        steps += [
            Step("remove main.py: the board boots to a quiet REPL, no watchdog", tuple(mp.argv("exec", DISARM))),
            Step("reset", tuple(mp.argv("reset"))),
            Step(f"wait until the REPL answers (up to {o.repl_timeout:.0f} s)"),
            Step(f"check that the board's MicroPython reads .mpy version {b.mpy_version}",
                 tuple(mp.argv("exec", MPY_CHECK))),
            Step("remove the old firmware packages", tuple(mp.argv("exec", CLEAN % json.dumps(packages)))),
            Step(f"copy bundle {b.version}", tuple(mp.argv(*mp.tree_args(b.fs, names))), b.fs),
            Step("read back the SHA-256 of every file and compare with the manifest",
                 tuple(mp.argv("exec", VERIFY % json.dumps(verified_paths(b, o.keep_config))))),
            Step("reset: the firmware starts", tuple(mp.argv("reset"))),
        ]
    return steps


def classify_esptool(port: str, text: str) -> FlashError:
    """esptool's failure texts -> what the installer should do."""
    if "Could not open" in text or "could not open port" in text:
        if "Errno 13" in text or "Permission denied" in text:
            return FlashError(f"permission denied on {port}: add yourself to the dialout group "
                              "(sudo usermod -aG dialout $USER) and log in again", "port_permission")
        if "Errno 16" in text or "Resource busy" in text:
            return FlashError(f"{port} is in use by another program (a serial console, mpremote repl?): "
                              "close it", "port_busy")
        return FlashError(f"no serial port {port}: is the board plugged in? "
                          "Look with: ls /dev/serial/by-id/ /dev/ttyUSB*", "no_port")
    if "Wrong chip argument" in text or "Wrong --chip" in text:
        chip = text.split("This chip is ", 1)[1].split(",", 1)[0] if "This chip is " in text else "another chip"
        return FlashError(f"the board on {port} is an {chip}, not an ESP32: this firmware is for the ESP32 only",
                          "wrong_chip")
    if "Failed to connect" in text or "No serial data received" in text or "Wrong boot mode" in text:
        return FlashError(f"the board on {port} is not in download mode: hold BOOT, tap EN (reset), "
                          "release BOOT, then run the command again", "not_in_download_mode")
    last = [ln for ln in text.strip().splitlines() if ln.strip()]
    return FlashError(f"esptool failed on {port}: {last[-1] if last else 'no output'}", "esptool")


def run_esptool(step: Step, port: str, timeout: float = 600.0) -> str:
    try:
        proc = subprocess.run(list(step.argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FlashError(f"esptool did not finish within {timeout:.0f} s on {port}", "esptool_timeout") from None
    if proc.returncode != 0:
        raise classify_esptool(port, proc.stdout + proc.stderr)
    return proc.stdout


def verify(t: Transport, b: Bundle, keep_config: bool = False) -> list[str]:
    """Paths whose bytes on the device differ from the manifest (empty: all good)."""
    paths = verified_paths(b, keep_config)
    out = t.exec(VERIFY % json.dumps(paths), timeout=120.0)
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise FlashError(f"the device printed no hashes: {out.strip()[-200:]!r}", "verify_failed")
    got = json.loads(lines[-1])
    want = {f.path: f.sha256 for f in b.files}
    return [p for p in paths if got.get(p) != want[p]]


MPY_CHECK = """import sys
print(getattr(sys.implementation, "_mpy", 0) & 0xFF, sys.version)
"""


def check_mpy(t: Transport, b: Bundle) -> None:
    """The board's MicroPython must load the bundle's .mpy format (6: MicroPython 1.19+)."""
    out = t.exec(MPY_CHECK).strip().splitlines()[-1]
    got, _, version = out.partition(" ")
    if int(got) != b.mpy_version:
        raise FlashError(f"the board's MicroPython ({version}) reads .mpy version {got}, the bundle has "
                         f"{b.mpy_version}: flash a current MicroPython with --firmware", "mpy_mismatch")


def install_bundle(t: Transport, b: Bundle, keep_config: bool = False) -> None:
    """Steps 3-4 over any transport (the real board, or MicroPython under Node)."""
    check_mpy(t, b)
    names = bundle_names(b, keep_config)
    t.exec(CLEAN % json.dumps([n for n in names if (b.fs / n).is_dir()]), timeout=120.0)
    t.put_tree(b.fs, names)
    bad = verify(t, b, keep_config)
    if bad:
        t.exec(DISARM)
        raise FlashError(f"verify failed: {len(bad)} file(s) on the device differ from bundle {b.version}: "
                         f"{', '.join(bad[:5])}. main.py was removed so the board stays at the REPL; "
                         "run the flash again (a flaky USB cable is the usual cause)", "verify_mismatch")


def flash(o: Options, say: Callable[[str], None] = print) -> None:
    """Run the plan against a real board on ``o.port``."""
    check_port(o.port)
    if o.firmware is not None:
        check_image(o.firmware)
        for step in plan(dataclasses.replace(o, bundle=None)):
            say(step.what)
            run_esptool(step, o.port)
    if o.bundle is not None:
        mp = MpremoteTransport(o.port, timeout=o.repl_timeout)
        if o.firmware is not None:
            say("waiting for MicroPython's first boot")
            wait_for_repl(mp, o.repl_timeout)
        say("remove main.py and reset")
        mp.exec(DISARM, timeout=o.repl_timeout)
        mp.run("reset")
        wait_for_repl(mp, o.repl_timeout)
        say(f"copy bundle {o.bundle.version} and verify")
        install_bundle(mp, o.bundle, o.keep_config)
        mp.run("reset")
        say(f"verified {len(verified_paths(o.bundle, o.keep_config))} files; firmware {o.bundle.version} starts")
