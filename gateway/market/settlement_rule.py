"""The settlement rule, as pure functions over integers: how much of each fill was delivered, who gets what.

Inputs for one (grid, interval): the fills (ordered Wh and escrowed NOIA as the chain
recorded them, the maker's and the taker's household) and each household's metered
export and import in the interval (gateway/aggregator/intervals.py, summed over its
devices). Output per fill: delivered Wh, payment to the maker, refund to the taker.

**Delivered Wh** is the weighted max-min fair allocation (progressive filling; worked
examples in docs/settlement.md):

1. Every fill gets the same fraction ``lambda`` of its ordered Wh, and ``lambda`` rises
   from 0 for all fills together.
2. A *meter* is one household's export (shared by the fills it sells) or its import
   (shared by the fills it buys). When a meter's fills together reach its metered Wh,
   those fills stop at their current fraction; when ``lambda`` reaches 1, every fill
   still rising stops at its order. The other fills keep rising.
3. So: pro rata by ordered Wh; what one fill cannot use (its other side's meter ran
   out earlier) is shared pro rata among the other fills of the same meter. The
   result is unique. A household the gateway has no meter for (``None``) has 0 Wh.
4. Integers: exact fractions, then each fill rounds down; the Wh lost to rounding go
   back one at a time, to fills in order of the largest fractional part (ties: the
   smaller fill id), only where both of the fill's meters still have 1 Wh unallocated
   and the fill is below its order.

Hence a meter's fills never get more, in total, than the meter shows; a fill never
gets more than it ordered.

**Money**: payment = ``noia * delivered // ordered`` (rounded down), refund =
``noia - payment``: payment + refund == escrow exactly, per fill.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class FillTerms:
    """One fill as the chain escrowed it, with the households behind its two addresses."""
    fill_id: bytes
    maker_household: str | None
    taker_household: str | None
    ordered_wh: int
    noia: int

    def __post_init__(self) -> None:
        if len(self.fill_id) != 32 or self.ordered_wh <= 0 or self.noia <= 0:
            raise ValueError("a fill needs a 32-byte id, ordered Wh > 0 and NOIA > 0")


@dataclass(frozen=True)
class Allocation:
    fill_id: bytes
    ordered_wh: int
    delivered_wh: int
    noia: int        # escrowed
    payment: int     # to the maker
    refund: int      # to the taker


def delivered_exact(fills: Sequence[FillTerms], export_wh: Mapping[str, int],
                    import_wh: Mapping[str, int]) -> list[Fraction]:
    """Progressive filling with exact fractions: the fraction of its order each fill gets."""
    meters: dict[tuple[str, str], list[int]] = {}
    level: list[Fraction | None] = [None] * len(fills)
    for i, f in enumerate(fills):
        for side, h in (("export", f.maker_household), ("import", f.taker_household)):
            if h is None:
                level[i] = Fraction(0)  # no meter, no delivery
            else:
                meters.setdefault((side, h), []).append(i)
    cap = {m: Fraction(max(0, int((export_wh if m[0] == "export" else import_wh).get(m[1], 0)))) for m in meters}
    while any(x is None for x in level):
        best = Fraction(1)
        for m, idx in meters.items():
            rising = [i for i in idx if level[i] is None]
            if rising:
                used = _used(level, fills, idx)
                best = min(best, (cap[m] - used) / sum(fills[i].ordered_wh for i in rising))
        best = max(best, Fraction(0))
        stop = set()
        for m, idx in meters.items():
            rising = [i for i in idx if level[i] is None]
            if rising:
                used = _used(level, fills, idx)
                if cap[m] - used <= best * sum(fills[i].ordered_wh for i in rising):
                    stop.update(rising)
        if best == 1:
            stop.update(i for i, x in enumerate(level) if x is None)
        for i in stop:
            level[i] = best
    return [(x or Fraction(0)) * f.ordered_wh for x, f in zip(level, fills)]


def _used(level: Sequence[Fraction | None], fills: Sequence[FillTerms], idx: Iterable[int]) -> Fraction:
    """Wh a meter's stopped fills hold."""
    total = Fraction(0)
    for i in idx:
        x = level[i]
        if x is not None:
            total += x * fills[i].ordered_wh
    return total


def delivered_wh(fills: Sequence[FillTerms], export_wh: Mapping[str, int],
                 import_wh: Mapping[str, int]) -> list[int]:
    """Delivered Wh per fill (same order as ``fills``): the rule in the module docstring."""
    exact = delivered_exact(fills, export_wh, import_wh)
    out = [int(math.floor(x)) for x in exact]
    left: dict[tuple[str, str | None], int] = {}
    for side, metered, attr in (("export", export_wh, "maker_household"), ("import", import_wh, "taker_household")):
        for f in fills:
            h = getattr(f, attr)
            if h is not None:
                left[(side, h)] = max(0, int(metered.get(h, 0)))
    for i, f in enumerate(fills):
        if f.maker_household is not None:
            left[("export", f.maker_household)] -= out[i]
        if f.taker_household is not None:
            left[("import", f.taker_household)] -= out[i]
    for _, _, i in sorted((-(x - out[i]), fills[i].fill_id, i) for i, x in enumerate(exact) if x > out[i]):
        f = fills[i]
        mk, tk = ("export", f.maker_household), ("import", f.taker_household)
        if out[i] < f.ordered_wh and left.get(mk, 0) >= 1 and left.get(tk, 0) >= 1:
            out[i] += 1
            left[mk] -= 1
            left[tk] -= 1
    return out


def money(noia: int, delivered: int, ordered: int) -> tuple[int, int]:
    """(payment to the maker, refund to the taker): payment rounds down, the refund takes the rest."""
    if not 0 <= delivered <= ordered or ordered <= 0 or noia < 0:
        raise ValueError("money: 0 <= delivered <= ordered, ordered > 0")
    payment = noia * delivered // ordered
    return payment, noia - payment


def settle(fills: Iterable[FillTerms], export_wh: Mapping[str, int], import_wh: Mapping[str, int]) -> list[Allocation]:
    """The allocations of one interval's fills, ordered by fill id (the settle-batch order)."""
    fs = sorted(fills, key=lambda f: f.fill_id)
    if len({f.fill_id for f in fs}) != len(fs):
        raise ValueError("duplicate fill id")
    out = []
    for f, d in zip(fs, delivered_wh(fs, export_wh, import_wh)):
        p, r = money(f.noia, d, f.ordered_wh)
        out.append(Allocation(f.fill_id, f.ordered_wh, d, f.noia, p, r))
    return out
