"""The ``trades`` table: every fill the agents and manual orders produce, for settlement to find.

One row per fill, keyed by the fill id (= the order's EIP-712 digest, the id
the chain's escrow and settle-batch use). The row is written **before** the
fill is submitted to the chain client (state ``pending``), so a crash between
the two leaves a row that ``live()`` returns and the agent resubmits under the
same idempotency key (``fill:0x<fill id>``): the outbox makes that one tx.

States: ``pending`` (recorded, not yet accepted by the chain client),
``submitted`` (in the outbox), ``final`` (the fill is in a final block: the
taker's NOIA is escrowed), ``rejected`` (the chain refused it: ``reason``).
Settlement reads ``final`` rows of an interval (``for_interval``) and may move
them on with ``mark(fill_id, "settled")``, or to ``reclaimed`` when the taker took
the escrow back after the chain's settle timeout (gateway/market/reclaim.py).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import db as gdb
from gateway.validator.crypto import to_checksum
from gateway.validator.order import SignedOrder

PENDING, SUBMITTED, FINAL, REJECTED, SETTLED = "pending", "submitted", "final", "rejected", "settled"
RECLAIMED = "reclaimed"
STATES = (PENDING, SUBMITTED, FINAL, REJECTED, SETTLED, RECLAIMED)
LIVE = (PENDING, SUBMITTED)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS trades (
        fill_id         BLOB    PRIMARY KEY,   -- order EIP-712 digest (32 bytes) = the chain's fill id
        grid            TEXT    NOT NULL,
        interval_start  INTEGER NOT NULL,      -- unix s, delivery interval
        maker_household TEXT    NOT NULL,      -- the seller
        maker           BLOB    NOT NULL,      -- 20-byte address
        taker_household TEXT    NOT NULL,      -- the buyer
        taker           BLOB    NOT NULL,
        wh              INTEGER NOT NULL,
        noia            TEXT    NOT NULL,      -- decimal uint256, token units (escrowed by the fill)
        mechanism       TEXT    NOT NULL,      -- rfq | auction
        origin          TEXT    NOT NULL,      -- agent | manual:<order id> (buyer side; seller side in maker_origin)
        maker_origin    TEXT    NOT NULL,
        signed_order    BLOB    NOT NULL,      -- 225 bytes (order.py), what the fill carries
        submission      TEXT    NOT NULL,      -- chain client idempotency key
        state           TEXT    NOT NULL,      -- pending | submitted | final | rejected | settled | reclaimed
        reason          TEXT,
        height          INTEGER,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS trades_by_interval ON trades (grid, interval_start, state)",
    "CREATE INDEX IF NOT EXISTS trades_by_state ON trades (state)",
)


class TradeError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Trade:
    fill_id: bytes
    grid: str
    interval_start: int
    maker_household: str
    maker: bytes
    taker_household: str
    taker: bytes
    wh: int
    noia: int
    mechanism: str
    origin: str
    maker_origin: str
    signed_order: SignedOrder
    submission: str
    state: str
    reason: str | None = None
    height: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"fill_id": "0x" + self.fill_id.hex(), "grid": self.grid, "interval_start": self.interval_start,
                "maker_household": self.maker_household, "maker": to_checksum(self.maker),
                "taker_household": self.taker_household, "taker": to_checksum(self.taker), "wh": self.wh,
                "noia": str(self.noia), "mechanism": self.mechanism, "origin": self.origin,
                "maker_origin": self.maker_origin, "submission": self.submission, "state": self.state,
                "reason": self.reason, "height": self.height}


_COLS = ("fill_id, grid, interval_start, maker_household, maker, taker_household, taker, wh, noia, mechanism, "
         "origin, maker_origin, signed_order, submission, state, reason, height")


def _trade(r: tuple[Any, ...]) -> Trade:
    return Trade(bytes(r[0]), r[1], r[2], r[3], bytes(r[4]), r[5], bytes(r[6]), r[7], int(r[8]), r[9], r[10], r[11],
                 SignedOrder.decode(bytes(r[12])), r[13], r[14], r[15], r[16])


class TradeLog:
    """The ``trades`` table on the gateway's database (``gateway/db.py`` connection)."""

    def __init__(self, conn: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.clock = clock
        gdb.ensure_schema(conn, "trades", SCHEMA)

    def record(self, t: Trade) -> Trade:
        """Insert ``t`` (state ``pending``); the same fill id again returns the stored row (idempotent)."""
        now = int(self.clock())
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO trades ({_COLS}, created_at, updated_at) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (t.fill_id, t.grid, t.interval_start, t.maker_household, t.maker, t.taker_household, t.taker, t.wh,
             str(t.noia), t.mechanism, t.origin, t.maker_origin, t.signed_order.encode(), t.submission, t.state,
             t.reason, t.height, now, now))
        if cur.rowcount == 0:
            stored = self.get(t.fill_id)
            assert stored is not None
            if (stored.signed_order, stored.taker_household) != (t.signed_order, t.taker_household):
                raise TradeError("conflict", f"fill 0x{t.fill_id.hex()} recorded with other terms")
            return stored
        return t

    def mark(self, fill_id: bytes, state: str, *, reason: str | None = None, height: int | None = None) -> None:
        if state not in STATES:
            raise TradeError("bad_state", state)
        cur = self.conn.execute("UPDATE trades SET state = ?, reason = COALESCE(?, reason), "
                                "height = COALESCE(?, height), updated_at = ? WHERE fill_id = ?",
                                (state, reason, height, int(self.clock()), fill_id))
        if cur.rowcount == 0:
            raise TradeError("unknown_fill", "0x" + fill_id.hex())

    def get(self, fill_id: bytes) -> Trade | None:
        r = self.conn.execute(f"SELECT {_COLS} FROM trades WHERE fill_id = ?", (fill_id,)).fetchone()
        return None if r is None else _trade(r)

    def for_interval(self, grid: str, interval_start: int, states: tuple[str, ...] = (FINAL,)) -> list[Trade]:
        q = ",".join("?" * len(states))
        return [_trade(r) for r in self.conn.execute(
            f"SELECT {_COLS} FROM trades WHERE grid = ? AND interval_start = ? AND state IN ({q}) ORDER BY fill_id",
            (grid, interval_start, *states))]

    def live(self) -> list[Trade]:
        return [_trade(r) for r in self.conn.execute(
            f"SELECT {_COLS} FROM trades WHERE state IN (?, ?) ORDER BY created_at", LIVE)]

    def all(self, grid: str | None = None) -> list[Trade]:
        if grid is None:
            rows = self.conn.execute(f"SELECT {_COLS} FROM trades ORDER BY interval_start, fill_id")
        else:
            rows = self.conn.execute(f"SELECT {_COLS} FROM trades WHERE grid = ? ORDER BY interval_start, fill_id",
                                     (grid,))
        return [_trade(r) for r in rows]

    def wh(self, household: str, side: str, interval_start: int) -> int:
        """Wh the household sold (``sell``) or bought (``buy``) for the interval, not counting rejected fills."""
        col = "maker_household" if side == "sell" else "taker_household"
        (n,) = self.conn.execute(f"SELECT COALESCE(SUM(wh), 0) FROM trades WHERE {col} = ? AND interval_start = ? "
                                 "AND state != ?", (household, interval_start, REJECTED)).fetchone()
        return int(n)


__all__ = ["TradeLog", "Trade", "TradeError", "PENDING", "SUBMITTED", "FINAL", "REJECTED", "SETTLED", "RECLAIMED",
           "SCHEMA"]
