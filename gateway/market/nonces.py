"""Order nonces that never repeat for a maker, across restarts and even a lost database.

The chain refuses a second fill of (maker, nonce), so a repeated nonce would
make a fresh quote unfillable. Nonces are handed out from blocks reserved in
SQLite: one ``BEGIN IMMEDIATE`` transaction, committed with
``synchronous=FULL``, moves the maker's high-water mark past the block before
any nonce of it is used. A restart continues from the high-water mark (the
rest of the last block is skipped: gaps are fine, repeats are not), and
several processes sharing the file get disjoint blocks.

Each block also starts at no less than the current time in microseconds: if
the database is lost, new nonces still lie above every nonce issued before
(as long as fewer than one nonce per microsecond was issued on average and the
clock did not go back). Both rules together: the stored mark covers a clock
that went back, the clock covers a lost file.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS peer_nonces (maker BLOB PRIMARY KEY, next_nonce INTEGER NOT NULL)"
_INT64_MAX = (1 << 63) - 1


class NonceStore:
    """``next()`` → a nonce never handed out before for ``maker``; blocks of ``block`` per fsync."""

    def __init__(self, path: Path | str, maker: bytes, *, block: int = 4096,
                 clock_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        if len(maker) != 20 or block < 1:
            raise ValueError("a 20-byte maker and a block >= 1")
        self.maker = maker
        self.block = block
        self._clock_us = clock_us
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._next = 0
        self._end = 0  # the current block is [_next, _end)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nonces")
        self._pending: Future[tuple[int, int]] | None = None
        self._next, self._end = self._reserve()  # at start-up, not on the first quote

    def _reserve(self) -> tuple[int, int]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT next_nonce FROM peer_nonces WHERE maker = ?", (self.maker,)).fetchone()
            start = max(row[0] if row else 0, self._clock_us())
            end = start + self.block
            if end > _INT64_MAX:
                raise OverflowError("nonce space of the store exhausted")
            db.execute("INSERT INTO peer_nonces (maker, next_nonce) VALUES (?, ?) "
                       "ON CONFLICT(maker) DO UPDATE SET next_nonce = excluded.next_nonce", (self.maker, end))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.debug("nonce block [%d, %d) reserved for 0x%s", start, end, self.maker.hex())
        return start, end

    def next(self) -> int:
        if self._next >= self._end:
            if self._pending is not None:
                pending, self._pending = self._pending, None
                self._next, self._end = pending.result()
            else:
                self._next, self._end = self._reserve()
        n = self._next
        self._next = n + 1
        if self._pending is None and self._end - self._next <= self.block // 2:
            self._pending = self._pool.submit(self._reserve)
        return n

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._db.close()
