"""Token buckets keyed by a string (a client IP, a maker or taker address), bounded in memory.

Used by the Peer and the Indexer. ``RateLimiter(rate, burst)``: ``rate`` tokens per
second (0 = no limit), at most ``burst`` saved up per key. ``allow(key, now)``
takes a token if there is one; ``retry_after(key)`` is the wait for the next.
At most ``max_keys`` buckets are kept (least recently used dropped first), so a
flood of new keys costs bounded memory; a dropped key comes back with a full
bucket, which only errs towards letting a rare key through.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        if rate < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate >= 0 (0: no limit), burst >= 1, max_keys >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)

    def allow(self, key: str, now: float | None = None, cost: float = 1.0) -> bool:
        if self.rate == 0:
            return True
        now = time.time() if now is None else now
        tokens = self._tokens(key, now)
        ok = tokens >= cost
        if ok:
            tokens -= cost
        self._buckets.pop(key, None)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok

    def retry_after(self, key: str, cost: float = 1.0) -> float:
        """Seconds until ``key`` has ``cost`` tokens again (0 if it has them now)."""
        if self.rate == 0 or key not in self._buckets:
            return 0.0
        tokens, _at = self._buckets[key]
        return max(0.0, (cost - tokens) / self.rate)

    def __len__(self) -> int:
        return len(self._buckets)
