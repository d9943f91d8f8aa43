"""A uniform-price call auction per interval (pay-as-clear, as in Grid Singularity's gsy-e).

Bids and asks are collected until the gate closure (``CallAuction`` only sees
the closed book), then:

1. **Sort.** Asks by price ascending, bids by price descending; a price tie goes
   to the earlier order (``seq``), then to the smaller id (deterministic).
2. **Match.** Walk both lists: while the best remaining bid's price >= the best
   remaining ask's price, match ``min`` of their remaining Wh. The last pair
   matched is the *marginal* bid ``b*`` and ask ``a*``; the order left with
   Wh (the marginal unit) is filled partially and its rest stays unmatched.
3. **Price.** Supply meets demand for every price in ``[lo, hi]`` with
   ``lo = max(a*, the best unmatched bid)`` and ``hi = min(b*, the best unmatched
   ask)`` (an absent side is no bound). The clearing price is
   ``lo + floor((hi - lo) * k)``, ``k = 1/2`` by default (the middle of the
   range). So a partly filled marginal bid sets the price (``lo = hi = b*``:
   demand is left over), a partly filled marginal ask likewise, and no
   unmatched order would trade at the price.
4. **Pay as clear.** Every match is priced at the clearing price: no matched
   ask is above it and no matched bid below it.

Nothing matches when the best bid is below the best ask (no overlap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
import math

from .base import BookOrder, Clearing, Match, MechanismError, ask_priority, bid_priority, check_book


@dataclass(frozen=True)
class CallAuction:
    k: Fraction = Fraction(1, 2)
    name: str = "auction"

    def __post_init__(self) -> None:
        if not 0 <= self.k <= 1:
            raise MechanismError("bad_order", "k is in [0, 1]")

    def clear(self, interval_start: int, bids: Sequence[BookOrder], asks: Sequence[BookOrder]) -> Clearing:
        check_book(bids, asks)
        B = sorted(bids, key=bid_priority)
        A = sorted(asks, key=ask_priority)
        rb = [b.wh for b in B]
        ra = [a.wh for a in A]
        pairs: list[tuple[int, int, int]] = []
        i = j = 0
        while i < len(B) and j < len(A) and B[i].price_per_wh >= A[j].price_per_wh:
            q = min(rb[i], ra[j])
            pairs.append((i, j, q))
            rb[i] -= q
            ra[j] -= q
            if rb[i] == 0:
                i += 1
            if ra[j] == 0:
                j += 1
        if not pairs:
            best = (f"best bid {B[0].price_per_wh}" if B else "no bids") + ", " + \
                   (f"best ask {A[0].price_per_wh}" if A else "no asks")
            return Clearing(interval_start, self.name, (), None, (f"no overlap: {best}",))
        bi, aj, _ = pairs[-1]
        b_star, a_star = B[bi].price_per_wh, A[aj].price_per_wh
        lo, hi = a_star, b_star
        if i < len(B):
            lo = max(lo, B[i].price_per_wh)
        if j < len(A):
            hi = min(hi, A[j].price_per_wh)
        assert lo <= hi
        price = lo + math.floor((hi - lo) * self.k)
        matches = tuple(Match(B[x].id, A[y].id, B[x].household, A[y].household, q, price) for x, y, q in pairs)
        vol = sum(q for _, _, q in pairs)
        expl = (f"{len(B)} bids, {len(A)} asks; matched {vol} Wh in {len(pairs)} pair(s)",
                f"marginal bid {b_star}, marginal ask {a_star}",
                f"clearing range [{lo}, {hi}] (next unmatched bid "
                f"{B[i].price_per_wh if i < len(B) else '-'}, ask {A[j].price_per_wh if j < len(A) else '-'})",
                f"price = {lo} + floor(({hi} - {lo}) x {self.k}) = {price} per Wh, paid by every match")
        return Clearing(interval_start, self.name, matches, price, expl)
