"""Brute-force limits and security counters that survive a restart of the web server.

In memory, a restart (a crash an attacker provokes, or an update they wait
for) would hand out a fresh burst of sign-in, TOTP and claim-code guesses. So
the token buckets live in the gateway's SQLite database: one row per (bucket,
key) in ``web_limits``, read and written in one ``BEGIN IMMEDIATE``
transaction per attempt (serialised across threads and processes; a few
writes a second at most at these rates). Keys are stored as SHA-256 of
``bucket:key`` (a mistyped password in the login field must not sit in the
database). A row whose bucket has refilled is the same as no row, so
``purge`` deletes those and the table stays as small as the recent attempts.

The counters the operator page shows (``web_security_counters``) are kept the
same way: one upsert per security event.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from gateway.db import ensure_schema, transaction

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS web_limits (
        bucket   TEXT NOT NULL,   -- a field of gateway.web.config.Limits
        key_hash BLOB NOT NULL,   -- SHA-256 of 'bucket:key' (a login, an address, an account, a device)
        tokens   REAL NOT NULL,   -- left at time 'at'
        at       REAL NOT NULL,   -- the web clock, unix s
        PRIMARY KEY (bucket, key_hash)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS web_security_counters (
        reason TEXT PRIMARY KEY,
        n      INTEGER NOT NULL) WITHOUT ROWID""",
)


def ensure_throttle_schema(conn: sqlite3.Connection) -> None:
    ensure_schema(conn, "web_throttle", SCHEMA)


@dataclass(frozen=True)
class Bucket:
    """``rate`` tokens per second (0: no limit), at most ``burst`` saved up."""

    rate: float
    burst: float

    def refilled(self, tokens: float, at: float, now: float) -> float:
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float   # seconds until the next token (0 when allowed)


def _key_hash(bucket: str, key: str) -> bytes:
    return hashlib.sha256(f"{bucket}:{key}".encode()).digest()


class PersistentBuckets:
    """Token buckets in ``web_limits``; ``conn`` gives this thread's connection."""

    def __init__(self, buckets: dict[str, Bucket], conn: Callable[[], sqlite3.Connection]) -> None:
        for name, b in buckets.items():
            if b.rate < 0 or b.burst < 1:
                raise ValueError(f"limit {name}: rate >= 0 (0: no limit), burst >= 1")
        self.buckets = buckets
        self.conn = conn

    def take(self, name: str, key: str, now: float) -> Verdict:
        """Take one token of bucket ``name`` for ``key`` if there is one; every attempt is recorded."""
        b = self.buckets[name]
        if b.rate == 0:
            return Verdict(True, 0.0)
        h = _key_hash(name, key)
        with transaction(self.conn()) as conn:
            row = conn.execute("SELECT tokens, at FROM web_limits WHERE bucket = ? AND key_hash = ?",
                               (name, h)).fetchone()
            tokens = b.burst if row is None else b.refilled(float(row[0]), float(row[1]), now)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            # a clock stepped back must not refill a bucket: keep the later time
            at = now if row is None else max(now, float(row[1]))
            conn.execute("INSERT OR REPLACE INTO web_limits (bucket, key_hash, tokens, at) VALUES (?, ?, ?, ?)",
                         (name, h, tokens, at))
        return Verdict(allowed, 0.0 if allowed else (1.0 - tokens) / b.rate)

    def purge(self, now: float) -> int:
        """Delete the rows whose bucket is full again (as good as no row); returns how many."""
        n = 0
        with transaction(self.conn()) as conn:
            for name, b in self.buckets.items():
                if b.rate == 0:
                    continue
                n += conn.execute("DELETE FROM web_limits WHERE bucket = ? AND tokens + (? - at) * ? >= ?",
                                  (name, now, b.rate, b.burst)).rowcount
        return n


class PersistentCounters:
    """Security events by reason, in ``web_security_counters``."""

    def __init__(self, conn: Callable[[], sqlite3.Connection]) -> None:
        self.conn = conn

    def add(self, reason: str) -> None:
        self.conn().execute("INSERT INTO web_security_counters (reason, n) VALUES (?, 1) "
                            "ON CONFLICT (reason) DO UPDATE SET n = n + 1", (reason,))

    def snapshot(self) -> Counter[str]:
        return Counter({str(r): int(n) for r, n in self.conn().execute(
            "SELECT reason, n FROM web_security_counters")})
