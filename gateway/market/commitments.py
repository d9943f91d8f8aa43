"""Outstanding quotes: the Wh a maker has signed away and a taker may still fill.

A signed order cannot be taken back (short of a cancel on the chain), so
until it expires the maker must count it against its inventory, whether or
not the taker ever fills it. Each quote is held until ``expiry + grace``
(``grace`` covers a block timestamp a little behind the maker's clock: the
chain accepts a fill while block time < expiry) and then released, so a
taker that asks and never fills only ties energy up for one order lifetime.
``release(nonce)`` drops a quote early once the maker agent has seen it filled
(and lowered the inventory) or cancelled.

Per interval a running total is kept and expired quotes are popped from one
heap: O(log n) per quote, whatever the number outstanding.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class Commitment:
    nonce: int
    interval_start: int
    wh: int
    expiry: int


class Outstanding:
    def __init__(self, grace_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self._by_nonce: dict[int, Commitment] = {}
        self._totals: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []  # (expiry, nonce)

    def prune(self, now: float) -> None:
        heap = self._heap
        limit = now - self.grace_s
        while heap and heap[0][0] <= limit:
            _expiry, nonce = heapq.heappop(heap)
            c = self._by_nonce.pop(nonce, None)
            if c is not None:
                self._sub(c)

    def committed(self, interval_start: int, now: float) -> int:
        self.prune(now)
        return self._totals.get(interval_start, 0)

    def add(self, c: Commitment) -> None:
        if c.nonce in self._by_nonce:
            raise ValueError(f"nonce {c.nonce} already outstanding")
        self._by_nonce[c.nonce] = c
        self._totals[c.interval_start] = self._totals.get(c.interval_start, 0) + c.wh
        heapq.heappush(self._heap, (c.expiry, c.nonce))

    def release(self, nonce: int) -> bool:
        """Forget a filled or cancelled quote (its heap entry is skipped when it expires)."""
        c = self._by_nonce.pop(nonce, None)
        if c is None:
            return False
        self._sub(c)
        return True

    def _sub(self, c: Commitment) -> None:
        left = self._totals[c.interval_start] - c.wh
        if left:
            self._totals[c.interval_start] = left
        else:
            del self._totals[c.interval_start]

    def __len__(self) -> int:
        return len(self._by_nonce)
