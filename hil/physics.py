"""A small physical model of a household: rooftop PV and load, integrated into meter counters.

``Household(name, kwp, base_load_w, seed)`` integrates PV power and household
load over (simulated) time into the counters a grid meter and an inverter
keep: ``import_wh`` grows while load > PV, ``export_wh`` while PV > load,
``pv_wh`` with PV output. ``advance(t)`` integrates up to unix time ``t`` in
steps of at most ``step_s``; the model is deterministic for a seed, so tests
and demos are reproducible.

- PV: a clear-sky-ish bell between sunrise and sunset (sin^1.3 of the solar
  day), scaled by kWp and a performance ratio, times a cloud factor that
  changes every 10 minutes (deterministic from the seed).
- Load: a base load plus a morning peak (~07:30) and an evening peak (~19:30),
  with per-minute noise.

Clocks: ``SimClock(start, speed)`` runs ``speed`` simulated seconds per wall
second (accelerated time for the demo); ``ManualClock(t)`` only moves when
told (tests).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field


def _noise(seed: int, bucket: int) -> float:
    """Deterministic pseudo-random number in [0, 1) from (seed, bucket)."""
    x = (seed * 0x9E3779B1 + bucket * 0x85EBCA77) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    x = (x * 0x297A2D39) & 0xFFFFFFFF
    x ^= x >> 15
    return x / 2**32


class ManualClock:
    """A clock for tests: ``now()`` returns what ``set``/``advance`` made it."""

    def __init__(self, t: float = 1_750_000_000.0) -> None:
        self.t = float(t)

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def set(self, t: float) -> None:
        self.t = float(t)


class SimClock:
    """Accelerated wall clock: ``speed`` simulated seconds per real second."""

    def __init__(self, start: float | None = None, speed: float = 1.0) -> None:
        self.start = time.time() if start is None else float(start)
        self.speed = speed
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed


def pv_power_w(t: float, kwp: float, seed: int, tz_hours: float = 9.0,
               sunrise_h: float = 6.0, sunset_h: float = 19.0, pr: float = 0.8) -> float:
    """PV AC output in W at unix time ``t``."""
    if kwp <= 0:
        return 0.0
    hour = ((t + tz_hours * 3600) % 86400) / 3600
    if not sunrise_h < hour < sunset_h:
        return 0.0
    x = (hour - sunrise_h) / (sunset_h - sunrise_h)
    clear = math.sin(math.pi * x) ** 1.3
    cloud = 0.55 + 0.45 * _noise(seed, int(t // 600))
    return kwp * 1000.0 * pr * clear * cloud


def load_w(t: float, base_w: float, seed: int, tz_hours: float = 9.0) -> float:
    """Household consumption in W at unix time ``t``."""
    hour = ((t + tz_hours * 3600) % 86400) / 3600
    morning = 900.0 * math.exp(-((hour - 7.5) / 1.0) ** 2)
    evening = 1600.0 * math.exp(-((hour - 19.5) / 1.5) ** 2)
    noise = 0.85 + 0.3 * _noise(seed + 7, int(t // 60))
    return (base_w + morning + evening) * noise


@dataclass
class Household:
    """One household's PV, load and the counters its meters would show."""

    name: str
    kwp: float = 5.0
    base_load_w: float = 350.0
    seed: int = 1
    tz_hours: float = 9.0
    step_s: float = 60.0
    import_wh: float = 0.0
    export_wh: float = 0.0
    pv_wh: float = 0.0
    t: float | None = None
    pv_w: float = 0.0
    load_w: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Meters in the field are not new: start the counters somewhere plausible.
        if not (self.import_wh or self.export_wh or self.pv_wh):
            self.import_wh = 1_000_000 + 50_000 * _noise(self.seed, 1)
            self.export_wh = 200_000 * _noise(self.seed, 2) if self.kwp > 0 else 0.0
            self.pv_wh = 2_000_000 * _noise(self.seed, 3) if self.kwp > 0 else 0.0

    @property
    def grid_w(self) -> float:
        """Grid power, + import / - export."""
        return self.load_w - self.pv_w

    def _powers(self, t: float) -> tuple[float, float]:
        return (pv_power_w(t, self.kwp, self.seed, self.tz_hours),
                load_w(t, self.base_load_w, self.seed, self.tz_hours))

    def advance(self, t: float) -> None:
        """Integrate powers into the counters up to time ``t`` (never backwards)."""
        with self._lock:
            if self.t is None:
                self.t = t
                self.pv_w, self.load_w = self._powers(t)
                return
            while self.t < t:
                dt = min(self.step_s, t - self.t)
                pv, load = self._powers(self.t + dt / 2)
                wh = dt / 3600.0
                self.pv_wh += pv * wh
                net = load - pv
                if net > 0:
                    self.import_wh += net * wh
                else:
                    self.export_wh -= net * wh
                self.t += dt
            self.pv_w, self.load_w = self._powers(t)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {"import_wh": self.import_wh, "export_wh": self.export_wh, "pv_wh": self.pv_wh,
                    "pv_w": self.pv_w, "load_w": self.load_w, "grid_w": self.load_w - self.pv_w}
