"""Forecasts: explained by hand on small histories; measured against simulated meters (hil.physics)."""

from __future__ import annotations

import sqlite3
from fractions import Fraction

import pytest

from gateway.aggregator.intervals import IntervalEnergy
from gateway.market.forecast import (DAY, WEEK, Actual, Forecaster, ForecastConfig, ForecastError, History,
                                     backtest, backtest_source, simulated_rows)
from hil.physics import Household

T0 = 1_750_032_000 - 1_750_032_000 % DAY   # a UTC midnight
S = T0 + 30 * DAY + 4 * 3600               # 13:00 KST on day 30


def test_pv_is_a_weighted_mean_of_the_same_slot_and_load_the_same_weekday() -> None:
    rows = [Actual(S - d * DAY, 100 * d, 50) for d in range(1, 8)]           # pv 100, 200, ... 700 Wh
    rows += [Actual(S - k * WEEK, 0, 300 + k) for k in (1, 2, 3, 4)]         # the same weekday: load 301..304
    f = Forecaster(config=ForecastConfig(ratio_days=7)).forecast_from(History("h1", rows), S)
    # weights 7 (yesterday) .. 1 (a week ago, whose row is the 0 Wh one): 7700 / 28 = 275; no full days: ratio 1
    assert f.pv_ratio == 1 and f.pv_wh == (100 * 7 + 200 * 6 + 300 * 5 + 400 * 4 + 500 * 3 + 600 * 2 + 0) // 28
    assert f.load_rule == "same weekday" and f.load_wh == 303      # 302.5, rounded half up
    assert f.pv_days_used[0] == (S - DAY, 100, 7)
    assert f.net_wh == f.pv_wh - f.load_wh and f.deficit_wh == max(0, -f.net_wh)
    assert any("weighted mean" in e for e in f.explanation) and any("same weekday" in e for e in f.explanation)


def test_pv_weighted_mean_by_hand() -> None:
    rows = [Actual(S - d * DAY, w, 100) for d, w in ((1, 400), (2, 200), (3, 100))]
    f = Forecaster(config=ForecastConfig(pv_days=3, ratio_days=1)).forecast_from(History("h", rows), S)
    assert f.pv_wh == round(Fraction(400 * 3 + 200 * 2 + 100 * 1, 6))       # 283
    # the daily totals are unknown (only one slot a day): no ratio
    assert f.pv_ratio == 1
    # load: no same-weekday rows, falls back to all days: 100
    assert f.load_rule == "all days" and f.load_wh == 100
    assert f.surplus_wh == 183


def test_the_recent_ratio_scales_pv_and_is_clamped() -> None:
    days = 7
    rows = []
    for d in range(1, days + 1):        # full days of 96 slots; the last 2 days at half the output
        for s in range(96):
            t = T0 + 30 * DAY - d * DAY + s * 900
            rows.append(Actual(t, 10 if d <= 2 else 20, 5))
    h = History("h", rows)
    start = T0 + 30 * DAY + 12 * 3600
    f = Forecaster().forecast_from(h, start)
    # mean daily PV of 2 days 960, of 7 days (2*960 + 5*1920)/7; ratio = 960 / that
    assert f.pv_ratio == Fraction(960 * 7, 2 * 960 + 5 * 1920)
    base = Fraction(10 * 7 + 10 * 6 + 20 * (5 + 4 + 3 + 2 + 1), 28)
    assert f.pv_wh == round(base * f.pv_ratio)
    lo = Forecaster(config=ForecastConfig(ratio_clamp=(Fraction(9, 10), Fraction(11, 10)))).forecast_from(h, start)
    assert lo.pv_ratio == Fraction(9, 10)


def test_only_data_before_asof_is_used_and_no_history_is_zero() -> None:
    rows = [Actual(S - DAY, 500, 100)]
    f = Forecaster().forecast_from(History("h", rows), S, asof=S - DAY)       # yesterday's slot not over yet
    assert f.pv_wh == 0 and f.load_wh == 0 and f.load_rule == "none"
    with pytest.raises(ForecastError) as e:
        Forecaster().forecast_from(History("h", rows), S + 1)
    assert e.value.reason == "bad_interval"


def test_forecast_reads_the_interval_engines_rows() -> None:
    class Source:
        def household_intervals(self, household: str, start: int | None = None, end: int | None = None):
            assert end == S
            return [IntervalEnergy(S - DAY, 900, import_wh=20, export_wh=330, pv_wh=400, readings=15,
                                   estimated=False)]
    f = Forecaster(Source()).forecast("h1", S)
    assert f.pv_wh == 400 and f.load_wh == 400 + 20 - 330 and f.surplus_wh == 310


@pytest.mark.parametrize("kwp, base_w, seed", [(5.0, 350.0, 1), (3.0, 300.0, 3), (0.0, 500.0, 2)])
def test_backtest_against_simulated_meters(kwp: float, base_w: float, seed: int) -> None:
    """35 days of a physics household; the last 7 forecast one interval ahead and compared with the meter."""
    rows = simulated_rows(Household(f"h{seed}", kwp=kwp, base_load_w=base_w, seed=seed), T0, 35)
    bt = backtest(Forecaster(), History(f"h{seed}", rows), T0 + 28 * DAY, T0 + 35 * DAY)
    assert bt.pv.n == bt.load.n == 7 * 96
    # load: the weekly profile is a good model of this load (+-15% noise per minute): MAE < 5% of the mean
    assert bt.load.mae < 0.05 * bt.load.actual_mean and abs(bt.load.bias) < 0.01 * bt.load.actual_mean
    if kwp:
        # PV: the 10-minute cloud factor is random (0.55..1.0), the forecast can only get its mean right
        assert bt.pv_daylight.mae < 0.15 * bt.pv_daylight.actual_mean
        assert abs(bt.pv.bias) < 0.02 * bt.pv_daylight.actual_mean
        # and it beats "the same slot yesterday"
        naive = [abs(next(r.pv_wh for r in rows if r.start == s - DAY) - a) for s, _, a, _, _ in bt.rows]
        assert bt.pv.mae < sum(naive) / len(naive)
    else:
        assert bt.pv.mae == 0 and bt.pv_daylight.n == 0


def test_backtest_source_reads_the_household_history() -> None:
    rows = simulated_rows(Household("h", kwp=4.0, seed=9), T0, 30)

    class Source:
        def household_intervals(self, household: str, start: int | None = None, end: int | None = None):
            return [IntervalEnergy(r.start, 900, r.load_wh, r.pv_wh, r.pv_wh, 15, False) for r in rows
                    if (start is None or r.start >= start) and (end is None or r.start < end)]
    bt = backtest_source(Forecaster(Source()), "h", T0 + 29 * DAY, T0 + 30 * DAY)
    assert bt.load.n == 96 and bt.to_json()["household"] == "h"
