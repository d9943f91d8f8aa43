"""SVG charts: well-formed XML, accessible (role, title, desc), bars that are the data, text escaped."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest

from gateway.web.readmodel import balance_chart, household_chart, household_view, interval_chart, operator_view
from gateway.web.readmodel.charts import Series

from .conftest import Day

NS = {"s": "http://www.w3.org/2000/svg"}


@pytest.fixture(scope="module")
def day(shared_day: Day) -> Day:
    """This module only reads the market day: the one the read-only modules share."""
    return shared_day


def bars(svg: ET.Element, series: str) -> list[ET.Element]:
    for g in svg.findall("s:g", NS):
        t = g.find("s:title", NS)
        if t is not None and t.text == series:
            return g.findall("s:rect", NS)
    return []


def test_household_chart_is_the_days_intervals(day: Day) -> None:
    v = asyncio.run(household_view(day.cx, "sun-1", day.now))
    svg = ET.fromstring(household_chart(v))
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "household-intervals-title household-intervals-desc"
    assert svg.find("s:title", NS).text == "sun-1: energy per 15 minutes today"     # type: ignore[union-attr]
    desc = svg.find("s:desc", NS).text                                                # type: ignore[union-attr]
    assert f"import {v.today.import_wh:,} Wh" in desc and f"PV {v.today.pv_wh:,} Wh" in desc
    assert f"{len(v.intervals)} intervals of 15 minutes" in desc
    exp = bars(svg, "export")
    assert len(exp) == sum(1 for p in v.intervals if p.export_wh > 0) > 0
    # heights proportional to the Wh; every export bar hangs from the same zero line
    exporting = [p for p in v.intervals if p.export_wh > 0]
    pairs = [(p.export_wh, float(r.get("height", "nan"))) for p, r in zip(exporting, exp)]
    (w0, h0), *rest = pairs
    for w, hgt in rest:
        assert hgt == pytest.approx(h0 * w / w0, abs=0.15)
    assert len({r.get("y") for r in exp}) == 1
    titles = [r.find("s:title", NS).text for r in exp]                               # type: ignore[union-attr]
    assert all(t.endswith(" Wh") and " export " in t for t in titles)               # type: ignore[union-attr]
    pv = [e for e in svg.findall("s:polyline", NS)]
    assert len(pv) == 1 and len(pv[0].get("points", "").split()) == len(v.intervals)


def test_balance_chart_from_the_operator_view(day: Day) -> None:
    v = asyncio.run(operator_view(day.cx, time.time(), day=day.start))
    svg = ET.fromstring(balance_chart(v))
    assert len(bars(svg, "P2P traded")) == sum(1 for b in v.balance if b.p2p_wh > 0) > 0
    assert len(bars(svg, "grid import")) == sum(1 for b in v.balance if b.import_wh > 0)


def test_text_is_escaped_and_ids_checked() -> None:
    evil = "<script>alert('x')</script> & \"quotes\""
    out = interval_chart("c1", evil, [0, 900], [Series(evil, (5, 0), "up", "red\" onload=\"x"),
                                               Series("pv", (1, 2), "line", "#fa0")])
    assert "<script>" not in out and 'onload="x"' not in out
    svg = ET.fromstring(out)
    assert svg.find("s:title", NS).text == evil                                       # type: ignore[union-attr]
    assert len(bars(svg, evil)) == 1
    for bad in ("C1", "1c", "c 1", "c\"1", ""):
        with pytest.raises(ValueError):
            interval_chart(bad, "t", [], [])
    with pytest.raises(ValueError):
        interval_chart("c", "t", [0], [Series("s", (1, 2), "up", "red")])
    empty = ET.fromstring(interval_chart("c", "nothing", [], [Series("s", (), "up", "red")]))
    assert "no intervals yet" in (empty.find("s:desc", NS).text or "")              # type: ignore[union-attr]
