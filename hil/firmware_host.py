"""Run the firmware unchanged on CPython, behind thin hardware shims.

``install()`` puts ``firmware/`` and ``firmware/host/`` (the shims: ``machine``,
``network``, ``ntptime``, ``esp32``, ``umqtt.simple``, ``micropython``) on
``sys.path`` and gives ``time`` the MicroPython tick functions the firmware
uses. Simulation, the demo and the CPython firmware tests go through it.

Where ``firmware/`` is (``locate_firmware``): ``$METANOIA_FIRMWARE`` if set
(a firmware tree of one's own); else ``hil/firmware/`` beside this module,
which is where an installed wheel carries it (setup.py copies it there);
else ``firmware/`` beside ``hil/`` in a source checkout or editable install.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = Path("device") / "version.py"   # every firmware tree has it (the build stamps it)


class FirmwareNotFound(RuntimeError):
    """No firmware tree where one was expected (a broken install, a wrong $METANOIA_FIRMWARE)."""


def locate_firmware() -> Path:
    env = os.environ.get("METANOIA_FIRMWARE")
    if env:
        found = Path(env).expanduser().resolve()
        if not (found / MARKER).is_file():
            raise FirmwareNotFound(f"METANOIA_FIRMWARE={env} is not a firmware tree (no {MARKER.as_posix()})")
        return found
    for candidate in (Path(__file__).resolve().parent / "firmware", ROOT / "firmware"):
        if (candidate / MARKER).is_file():
            return candidate
    raise FirmwareNotFound("the firmware sources are missing: reinstall metanoia-edge, or set METANOIA_FIRMWARE "
                           "to a firmware/ folder")


FIRMWARE = locate_firmware()
SHIMS = FIRMWARE / "host"

_TICKS_PERIOD = 1 << 30  # MicroPython's ticks wrap at 2**30 on most ports


def _ticks_ms() -> int:
    return int(time.monotonic() * 1000) & (_TICKS_PERIOD - 1)


def _ticks_us() -> int:
    return int(time.monotonic() * 1_000_000) & (_TICKS_PERIOD - 1)


def _ticks_add(ticks: int, delta: int) -> int:
    return (ticks + delta) % _TICKS_PERIOD


def _ticks_diff(a: int, b: int) -> int:
    half = _TICKS_PERIOD // 2
    return ((a - b + half) % _TICKS_PERIOD) - half


def install() -> None:
    """Idempotently make firmware modules importable on CPython."""
    for p in (str(SHIMS), str(FIRMWARE)):
        if p not in sys.path:
            sys.path.append(p)
    for name, fn in (("ticks_ms", _ticks_ms), ("ticks_us", _ticks_us), ("ticks_add", _ticks_add),
                     ("ticks_diff", _ticks_diff), ("sleep_ms", lambda ms: time.sleep(ms / 1000)),
                     ("sleep_us", lambda us: time.sleep(us / 1_000_000))):
        if not hasattr(time, name):
            setattr(time, name, fn)
