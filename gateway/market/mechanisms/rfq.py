"""RFQ (the default, AirSwap's request-for-quote): bilateral, pay-as-ask.

On the network each taker agent asks the makers' Peers for signed quotes and
fills the cheapest (``agents.TakerAgent``). ``Rfq.clear`` is the same rule on
an in-memory book, so the two mechanisms can be compared on the same data:
takers in arrival order (``seq``), each buys from the cheapest asks
(price, then arrival) whose price is within its cap, at the ask's price, until
its Wh are covered or no ask is cheap enough. Each match is one quote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .base import BookOrder, Clearing, Match, ask_priority, check_book


@dataclass(frozen=True)
class Rfq:
    name: str = "rfq"

    def clear(self, interval_start: int, bids: Sequence[BookOrder], asks: Sequence[BookOrder]) -> Clearing:
        check_book(bids, asks)
        A = sorted(asks, key=ask_priority)
        left = {a.id: a.wh for a in A}
        matches: list[Match] = []
        for b in sorted(bids, key=lambda o: (o.seq, o.id)):
            need = b.wh
            for a in A:
                if need == 0 or a.price_per_wh > b.price_per_wh:
                    break
                if left[a.id] == 0 or a.household == b.household:
                    continue
                q = min(need, left[a.id])
                matches.append(Match(b.id, a.id, b.household, a.household, q, a.price_per_wh))
                left[a.id] -= q
                need -= q
        return Clearing(interval_start, self.name, tuple(matches), None,
                        (f"{len(bids)} takers in arrival order, each at the cheapest asks within its cap, pay-as-ask",))
