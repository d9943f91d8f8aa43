"""Run the firmware unchanged on CPython, behind thin hardware shims.

``install()`` puts ``firmware/`` and ``firmware/host/`` (the shims: ``machine``,
``network``, ``ntptime``, ``esp32``, ``umqtt.simple``, ``micropython``) on
``sys.path`` and gives ``time`` the MicroPython tick functions the firmware
uses. Simulation, the demo and the CPython firmware tests go through it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
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
