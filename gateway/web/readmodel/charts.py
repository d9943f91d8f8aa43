"""Interval charts as small server-rendered SVG: no JavaScript, no charting library, readable without CSS.

Energy drawn into the home (import, P2P bought) goes up from the zero line,
energy leaving it (export, P2P sold) goes down; PV is a line. Each bar has a
``<title>`` (a tooltip and what a screen reader reads), the chart a ``<title>``
and a ``<desc>`` with the totals, and the ``<svg>`` is ``role="img"`` labelled
by both. Every text is escaped; ids are checked. Times are KST, as on the bill.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING

from gateway.market.bill import KST

if TYPE_CHECKING:
    from .household import HouseholdView
    from .operator import OperatorView

_ID = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


@dataclass(frozen=True)
class Series:
    name: str
    values: tuple[int, ...]        # one per interval
    kind: str                      # up | down | line
    color: str                     # an SVG colour (fill for bars, stroke for the line)
    narrow: bool = False           # drawn as a narrower bar over the wide one (P2P inside import/export)


def _esc(s: object) -> str:
    return escape(str(s), quote=True)


def _nice_step(span: float, ticks: int = 4) -> int:
    raw = max(span / ticks, 1)
    mag = 10 ** (len(str(int(raw))) - 1)
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return int(m * mag)
    return int(10 * mag)


def _hhmm(t: int) -> str:
    return datetime.fromtimestamp(t, KST).strftime("%H:%M")


def interval_chart(chart_id: str, title: str, starts: Sequence[int], series: Sequence[Series], *,
                   interval_s: int = 900, unit: str = "Wh", width: int = 720, height: int = 260) -> str:
    """An SVG bar/line chart of per-interval figures (see the module docstring)."""
    if not _ID.match(chart_id):
        raise ValueError("chart id: a lowercase letter, then up to 40 of [a-z0-9-]")
    for s in series:
        if len(s.values) != len(starts) or s.kind not in ("up", "down", "line"):
            raise ValueError(f"series {s.name!r}: one value per interval, kind up|down|line")
    left, right, top, bottom = 56, 12, 12, 40
    pw, ph = width - left - right, height - top - bottom
    up = max([0] + [v for s in series if s.kind in ("up", "line") for v in s.values])
    down = max([0] + [v for s in series if s.kind == "down" for v in s.values])
    step = _nice_step(up + down)
    top_v = -(-up // step) * step if up else 0
    bot_v = -(-down // step) * step if down else 0
    span = max(top_v + bot_v, step)

    def y(v: float) -> float:
        return top + (top_v - v) * ph / span

    n = max(len(starts), 1)
    slot = pw / n
    totals = "; ".join(f"{s.name} {sum(s.values):,} {unit}" for s in series)
    when = f"{_hhmm(starts[0])} to {_hhmm(starts[-1] + interval_s)} KST" if starts else "no intervals yet"
    desc = f"{len(starts)} intervals of {interval_s // 60} minutes, {when}. Totals: {totals}."
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{chart_id}" viewBox="0 0 {width} {height}" '
           f'width="100%" role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" '
           'font-family="sans-serif" font-size="11">',
           f'<title id="{chart_id}-title">{_esc(title)}</title>',
           f'<desc id="{chart_id}-desc">{_esc(desc)}</desc>']
    # axes and grid
    v = -bot_v
    while v <= top_v:
        yy = y(v)
        stroke = "#444" if v == 0 else "#ddd"
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="{stroke}"/>')
        out.append(f'<text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end">{abs(v):,}</text>')
        v += step
    out.append(f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" '
               f'text-anchor="middle">{_esc(unit)}</text>')
    every = max(1, round(n / 8))
    for i, s0 in enumerate(starts):
        if i % every == 0:
            out.append(f'<text x="{left + i * slot:.1f}" y="{top + ph + 14}" text-anchor="middle">'
                       f'{_esc(_hhmm(s0))}</text>')
    # bars
    for s in series:
        if s.kind == "line":
            continue
        w = slot * (0.4 if s.narrow else 0.8)
        out.append(f'<g class="series" fill="{_esc(s.color)}"><title>{_esc(s.name)}</title>')
        for i, (s0, val) in enumerate(zip(starts, s.values)):
            if val <= 0:
                continue
            x = left + i * slot + (slot - w) / 2
            y0, y1 = (y(val), y(0)) if s.kind == "up" else (y(0), y(-val))
            out.append(f'<rect x="{x:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{max(y1 - y0, 0.5):.1f}">'
                       f'<title>{_esc(_hhmm(s0))} {_esc(s.name)} {val:,} {_esc(unit)}</title></rect>')
        out.append("</g>")
    for s in series:
        if s.kind != "line" or not starts:
            continue
        pts = " ".join(f"{left + (i + 0.5) * slot:.1f},{y(val):.1f}" for i, val in enumerate(s.values))
        out.append(f'<polyline class="series" fill="none" stroke="{_esc(s.color)}" stroke-width="2" points="{pts}">'
                   f'<title>{_esc(s.name)}</title></polyline>')
    # legend
    lx = left
    for s in series:
        out.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{_esc(s.color)}"/>'
                   f'<text x="{lx + 14}" y="{height - 5}">{_esc(s.name)}</text>')
        lx += 24 + 7 * len(s.name)
    out.append("</svg>")
    return "\n".join(out)


def household_chart(view: HouseholdView, chart_id: str = "household-intervals", interval_s: int = 900) -> str:
    """The household's day: import/bought up, export/sold down, PV as a line."""
    pts = view.intervals
    return interval_chart(chart_id, f"{view.household}: energy per {interval_s // 60} minutes today",
                          [p.start for p in pts], [
                              Series("import", tuple(p.import_wh for p in pts), "up", "#d9534f"),
                              Series("bought from neighbours", tuple(p.bought_wh for p in pts), "up", "#7b3fa0", True),
                              Series("export", tuple(p.export_wh for p in pts), "down", "#5cb85c"),
                              Series("sold to neighbours", tuple(p.sold_wh for p in pts), "down", "#2a7d2a", True),
                              Series("PV", tuple(p.pv_wh for p in pts), "line", "#f0ad4e")],
                          interval_s=interval_s)


def balance_chart(view: OperatorView, chart_id: str = "complex-balance", interval_s: int = 900) -> str:
    """The complex per interval: import up, export down, P2P traded, PV."""
    pts = view.balance
    return interval_chart(chart_id, f"Complex {view.grid}: balance per {interval_s // 60} minutes today",
                          [p.start for p in pts], [
                              Series("grid import", tuple(p.import_wh for p in pts), "up", "#d9534f"),
                              Series("P2P traded", tuple(p.p2p_wh for p in pts), "up", "#7b3fa0", True),
                              Series("grid export", tuple(p.export_wh for p in pts), "down", "#5cb85c"),
                              Series("PV", tuple(p.pv_wh for p in pts), "line", "#f0ad4e")],
                          interval_s=interval_s)
