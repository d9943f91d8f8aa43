"""Per-household forecasts of PV, load and surplus for one delivery interval (docs/market.md).

Simple, explained, and measured:

- **PV** = a weighted mean of the same 15-minute slot over the last ``pv_days``
  days (the most recent day weighs ``pv_days``, the oldest 1), times a *recent
  ratio*: PV of the last ``ratio_days`` full days over the mean daily PV of the
  ``pv_days`` days (clamped to ``ratio_clamp``), so a cloudy spell pulls the
  forecast down. Days with no row for the slot are skipped.
- **Load** (consumption = PV + import - export, what the household used) = the
  mean of the same weekday and slot over the last ``load_weeks`` weeks; with
  fewer than ``min_weeks`` of those, the same slot over every day of the last
  ``load_days`` days.
- **Net** = PV - load; **surplus** = max(0, net), **deficit** = max(0, -net).
  The self-consumption reserve is the household's policy (``Policy.reserve_wh``)
  and is taken off by the maker agent and the wallet, not here, so the wallet's
  ``ByPolicy(forecast_surplus_wh=...)`` gets this raw surplus.

Slots are UTC-aligned; KST is a whole number of hours off UTC, so a slot is
also a KST quarter hour, and "the same slot yesterday" is exactly 86,400 s
earlier. Weekdays are KST weekdays. Only data before ``asof`` is used.

``backtest`` forecasts every interval of a span from the data before it (made
``lead_s`` ahead) and compares with what the meter showed: MAE and bias per
household, for PV, load and net.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

DAY = 86_400
WEEK = 7 * DAY
INTERVAL_S = 900


class ForecastError(Exception):
    """A forecast that cannot be made; ``reason``: ``no_history``, ``bad_interval``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EnergyRow(Protocol):
    """What the forecast reads of an interval (``IntervalEnergy`` has it)."""

    @property
    def start(self) -> int: ...
    @property
    def import_wh(self) -> int: ...
    @property
    def export_wh(self) -> int: ...
    @property
    def pv_wh(self) -> int: ...


class HistorySource(Protocol):
    """``IntervalEngine`` is one: a household's interval rows with start in [start, end)."""

    def household_intervals(self, household: str, start: int | None = None,
                            end: int | None = None) -> Sequence[EnergyRow]: ...


@dataclass(frozen=True, slots=True)
class Actual:
    """One metered interval as the forecast sees it."""

    start: int
    pv_wh: int
    load_wh: int

    @property
    def net_wh(self) -> int:
        return self.pv_wh - self.load_wh


def actual_of(row: EnergyRow) -> Actual:
    """PV and consumption of a metered interval: load = PV + import - export (never below 0)."""
    return Actual(row.start, row.pv_wh, max(0, row.pv_wh + row.import_wh - row.export_wh))


@dataclass(frozen=True)
class ForecastConfig:
    pv_days: int = 7
    ratio_days: int = 2
    ratio_clamp: tuple[Fraction, Fraction] = (Fraction(1, 2), Fraction(3, 2))
    load_weeks: int = 4
    min_weeks: int = 2
    load_days: int = 14
    interval_s: int = INTERVAL_S
    tz_offset_s: int = 9 * 3600   # weekdays are local (KST) weekdays

    def __post_init__(self) -> None:
        if min(self.pv_days, self.ratio_days, self.load_weeks, self.min_weeks, self.load_days) < 1:
            raise ValueError("forecast windows must be at least 1")
        if DAY % self.interval_s:
            raise ValueError("interval_s must divide a day")


@dataclass(frozen=True)
class Forecast:
    """One household's forecast for the interval starting at ``start`` (Wh), with its reasons."""

    household: str
    start: int
    asof: int
    pv_wh: int
    load_wh: int
    pv_days_used: tuple[tuple[int, int, int], ...]   # (day's slot start, pv Wh, weight)
    pv_ratio: Fraction
    load_rule: str                                   # "same weekday" | "all days" | "none"
    load_slots_used: tuple[tuple[int, int], ...]     # (slot start, load Wh)
    explanation: tuple[str, ...]

    @property
    def net_wh(self) -> int:
        return self.pv_wh - self.load_wh

    @property
    def surplus_wh(self) -> int:
        return max(0, self.net_wh)

    @property
    def deficit_wh(self) -> int:
        return max(0, -self.net_wh)

    def to_json(self) -> dict[str, Any]:
        return {"household": self.household, "start": self.start, "asof": self.asof, "pv_wh": self.pv_wh,
                "load_wh": self.load_wh, "net_wh": self.net_wh, "surplus_wh": self.surplus_wh,
                "deficit_wh": self.deficit_wh,
                "pv_days_used": [{"start": s, "pv_wh": w, "weight": k} for s, w, k in self.pv_days_used],
                "pv_ratio": f"{self.pv_ratio.numerator}/{self.pv_ratio.denominator}",
                "load_rule": self.load_rule,
                "load_slots_used": [{"start": s, "load_wh": w} for s, w in self.load_slots_used],
                "explanation": list(self.explanation)}


class History:
    """A household's metered intervals, indexed by start (built once, then many forecasts)."""

    def __init__(self, household: str, rows: Iterable[EnergyRow | Actual]) -> None:
        self.household = household
        self.by_start: dict[int, Actual] = {}
        for r in rows:
            a = r if isinstance(r, Actual) else actual_of(r)
            self.by_start[a.start] = a
        self._daily: dict[int, int] = {}

    def daily_pv(self, day_start: int, interval_s: int) -> int | None:
        """PV Wh of the UTC day starting at ``day_start`` (None when any slot is missing)."""
        if day_start not in self._daily:
            total = 0
            for s in range(day_start, day_start + DAY, interval_s):
                a = self.by_start.get(s)
                if a is None:
                    self._daily[day_start] = -1
                    break
                total += a.pv_wh
            else:
                self._daily[day_start] = total
        v = self._daily[day_start]
        return None if v < 0 else v


def _mean(values: Sequence[int], weights: Sequence[int] | None = None) -> Fraction:
    if weights is None:
        return Fraction(sum(values), len(values))
    return Fraction(sum(v * w for v, w in zip(values, weights)), sum(weights))


def _round(x: Fraction) -> int:
    return int(x + Fraction(1, 2)) if x >= 0 else -int(-x + Fraction(1, 2))


class Forecaster:
    """Forecasts from a ``HistorySource`` (the interval engine) or from a ``History`` in memory."""

    def __init__(self, source: HistorySource | None = None, config: ForecastConfig | None = None) -> None:
        self.source = source
        self.config = config or ForecastConfig()

    def history(self, household: str, asof: int) -> History:
        """The rows a forecast made at ``asof`` may read (from the source)."""
        if self.source is None:
            raise ForecastError("no_history", "no history source")
        c = self.config
        span = max(c.pv_days, c.load_weeks * 7, c.load_days) + 1
        return History(household, self.source.household_intervals(household, asof - span * DAY, asof))

    def forecast(self, household: str, start: int, asof: int | None = None) -> Forecast:
        asof = start if asof is None else asof
        return self.forecast_from(self.history(household, asof), start, asof)

    def forecast_from(self, h: History, start: int, asof: int | None = None) -> Forecast:
        c = self.config
        asof = start if asof is None else asof
        if start % c.interval_s:
            raise ForecastError("bad_interval", f"{start} is not a multiple of {c.interval_s}")
        L = c.interval_s
        expl: list[str] = []

        # PV: same slot, last pv_days days with the slot's row known before asof
        pv_used: list[tuple[int, int, int]] = []
        for d in range(1, c.pv_days + 1):
            s = start - d * DAY
            a = h.by_start.get(s)
            if a is not None and s + L <= asof:
                pv_used.append((s, a.pv_wh, c.pv_days + 1 - d))
        if pv_used:
            base = _mean([w for _, w, _ in pv_used], [k for _, _, k in pv_used])
            # the recent ratio: last ratio_days full days against the mean over pv_days days
            last_day = (asof // DAY) * DAY - DAY   # the last UTC day complete before asof
            days = [h.daily_pv(last_day - i * DAY, L) for i in range(c.pv_days)]
            known = [v for v in days if v is not None]
            recent = [v for v in days[:c.ratio_days] if v is not None]
            ratio = Fraction(1)
            if known and recent and sum(known) > 0:
                ratio = _mean(recent) / _mean(known)
                ratio = min(max(ratio, c.ratio_clamp[0]), c.ratio_clamp[1])
            pv = max(0, _round(base * ratio))
            expl.append("pv: weighted mean of the same slot on " + ", ".join(
                f"-{(start - s) // DAY}d {w} Wh (x{k})" for s, w, k in pv_used) + f" = {float(base):.1f} Wh")
            if known and recent:
                expl.append(f"pv: recent ratio = mean daily PV of the last {len(recent)} day(s) "
                            f"{float(_mean(recent)):.0f} Wh / of {len(known)} day(s) {float(_mean(known)):.0f} Wh "
                            f"= {float(ratio):.3f} (clamped to {float(c.ratio_clamp[0])}..{float(c.ratio_clamp[1])})")
            expl.append(f"pv: {float(base):.1f} x {float(ratio):.3f} = {pv} Wh")
        else:
            ratio = Fraction(1)
            pv = 0
            expl.append(f"pv: no history for this slot in the last {c.pv_days} days: 0 Wh")

        # load: same weekday and slot, falling back to the same slot on all days
        weekly = [(start - k * WEEK, h.by_start[start - k * WEEK].load_wh) for k in range(1, c.load_weeks + 1)
                  if start - k * WEEK in h.by_start and start - k * WEEK + L <= asof]
        if len(weekly) >= c.min_weeks:
            rule, used = "same weekday", weekly
        else:
            used = [(start - d * DAY, h.by_start[start - d * DAY].load_wh) for d in range(1, c.load_days + 1)
                    if start - d * DAY in h.by_start and start - d * DAY + L <= asof]
            rule = "all days" if used else "none"
        if used:
            load = _round(_mean([w for _, w in used]))
            if rule == "same weekday":
                expl.append("load: mean of the same weekday and slot, " + ", ".join(
                    f"-{(start - s) // WEEK}w {w} Wh" for s, w in used) + f" = {load} Wh")
            else:
                expl.append(f"load: only {len(weekly)} week(s) of the same weekday (< {c.min_weeks}): mean of the "
                            f"same slot on {len(used)} day(s) of the last {c.load_days} = {load} Wh")
        else:
            load = 0
            expl.append("load: no history for this slot: 0 Wh")
        net = pv - load
        expl.append(f"net = {pv} - {load} = {net} Wh: " + (f"surplus {net} Wh" if net > 0 else
                                                          f"deficit {-net} Wh" if net < 0 else "balanced"))
        return Forecast(h.household, start, asof, pv, load, tuple(pv_used), ratio, rule, tuple(used), tuple(expl))


@dataclass(frozen=True)
class ErrorStats:
    n: int
    mae: float      # mean |forecast - actual| Wh
    bias: float     # mean (forecast - actual) Wh: > 0 over-forecasts
    actual_mean: float

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mae_wh": round(self.mae, 2), "bias_wh": round(self.bias, 2),
                "actual_mean_wh": round(self.actual_mean, 2)}


@dataclass(frozen=True)
class Backtest:
    household: str
    start: int
    end: int
    lead_s: int
    pv: ErrorStats
    load: ErrorStats
    net: ErrorStats
    pv_daylight: ErrorStats          # only intervals with PV metered or forecast
    rows: tuple[tuple[int, int, int, int, int], ...] = field(repr=False)  # start, pv f/a, load f/a

    def to_json(self) -> dict[str, Any]:
        return {"household": self.household, "start": self.start, "end": self.end, "lead_s": self.lead_s,
                "pv": self.pv.to_json(), "pv_daylight": self.pv_daylight.to_json(), "load": self.load.to_json(),
                "net": self.net.to_json()}


def _stats(pairs: Sequence[tuple[int, int]]) -> ErrorStats:
    n = len(pairs)
    if not n:
        return ErrorStats(0, 0.0, 0.0, 0.0)
    return ErrorStats(n, sum(abs(f - a) for f, a in pairs) / n, sum(f - a for f, a in pairs) / n,
                      sum(a for _, a in pairs) / n)


def backtest(forecaster: Forecaster, history: History, start: int, end: int, *, lead_s: int = INTERVAL_S) -> Backtest:
    """Forecast each interval in [start, end) from data before ``interval - lead_s``; compare with the meter."""
    L = forecaster.config.interval_s
    rows = []
    for s in range(start - start % L, end, L):
        a = history.by_start.get(s)
        if a is None:
            continue
        f = forecaster.forecast_from(history, s, s - lead_s)
        rows.append((s, f.pv_wh, a.pv_wh, f.load_wh, a.load_wh))
    pv = [(r[1], r[2]) for r in rows]
    load = [(r[3], r[4]) for r in rows]
    net = [(r[1] - r[3], r[2] - r[4]) for r in rows]
    return Backtest(history.household, start, end, lead_s, _stats(pv), _stats(load), _stats(net),
                    _stats([p for p in pv if p[0] or p[1]]), tuple(rows))


def backtest_source(forecaster: Forecaster, household: str, start: int, end: int, *,
                    lead_s: int = INTERVAL_S) -> Backtest:
    """``backtest`` reading the household's rows from the forecaster's source."""
    c = forecaster.config
    span = max(c.pv_days, c.load_weeks * 7, c.load_days) + 1
    if forecaster.source is None:
        raise ForecastError("no_history", "no history source")
    h = History(household, forecaster.source.household_intervals(household, start - span * DAY, end))
    return backtest(forecaster, h, start, end, lead_s=lead_s)


def simulated_rows(household: Any, start: int, days: int, interval_s: int = INTERVAL_S) -> list[Actual]:
    """Interval rows straight from a ``hil.physics.Household`` (no devices): PV and load per interval."""
    rows: list[Actual] = []
    household.advance(start)
    prev = household.snapshot()
    for s in range(start, start + days * DAY, interval_s):
        household.advance(s + interval_s)
        cur = household.snapshot()
        imp, exp, pv = (cur[k] - prev[k] for k in ("import_wh", "export_wh", "pv_wh"))
        rows.append(Actual(s, round(pv), max(0, round(pv + imp - exp))))
        prev = cur
    return rows


def by_household(forecaster: Forecaster, households: Iterable[str], start: int,
                 asof: int | None = None) -> Mapping[str, Forecast]:
    return {h: forecaster.forecast(h, start, asof) for h in households}


__all__ = ["Forecaster", "ForecastConfig", "Forecast", "ForecastError", "History", "Actual", "actual_of",
           "backtest", "backtest_source", "Backtest", "ErrorStats", "simulated_rows", "by_household"]
