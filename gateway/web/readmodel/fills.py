"""A household's fills with their chain transactions and settlement, joined from three places.

- ``trades`` (gateway db, ``gateway/market/trades.py``): the fill, its state and
  the chain client submission key it went out under;
- ``chain_outbox`` (the market's outbox db and the gateway db): that submission's
  tx hash and block height;
- ``settlement_fills`` / ``settlement_batches`` (gateway db, ``settlement.py``):
  delivered Wh, payment, refund and the settle-batch tx that carried them.

Every query names the household, so a household's list holds only fills where it
is the maker or the taker; the counterparty is shown only as "a neighbour".
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from gateway import db as gdb
from gateway.market.trades import _COLS as TRADE_COLS, Trade, _trade   # the table's own columns and decoding
from gateway.market.settlement import PART_ELSEWHERE, PART_RECLAIMED

from .sources import NOIA_UNITS, tables


@dataclass(frozen=True)
class FillView:
    fill_id: str                 # 0x + 64 hex: the order digest, the chain's fill id
    interval_start: int
    side: str                    # this household's side: buy | sell
    wh: int                      # ordered
    noia: int                    # escrowed by the buyer, NOIA units
    won_per_kwh: Decimal         # the trade's price
    origin: str                  # agent | manual:<order id> (this household's side)
    mechanism: str
    state: str                   # trades.state: pending | submitted | final | rejected | settled
    reason: str | None           # the chain's reason when rejected
    fill_tx: str | None          # 0x hash of the fill transaction
    fill_height: int | None
    settlement: str              # unsettled | planned | final | rejected | elsewhere (settled by another gateway)
    delivered_wh: int | None
    payment: int | None          # NOIA units to the seller
    refund: int | None           # NOIA units back to the buyer
    settle_tx: str | None        # 0x hash of the settle-batch transaction
    settle_height: int | None


def won_per_kwh(noia: int, wh: int, won_per_noia: int = 1) -> Decimal:
    if wh <= 0:
        return Decimal(0)
    return (Decimal(noia) * 1000 * won_per_noia / (Decimal(wh) * NOIA_UNITS)).quantize(Decimal("0.01"))


def _hex(b: bytes | None) -> str | None:
    return None if b is None else "0x" + bytes(b).hex()


def outbox_txs(paths: tuple[Path, ...], keys: list[str]) -> dict[str, tuple[str | None, int | None, str]]:
    """{submission key: (tx hash, height, outbox state)} over every outbox database that exists."""
    out: dict[str, tuple[str | None, int | None, str]] = {}
    if not keys:
        return out
    for path in paths:
        if not path.exists():
            continue
        conn = gdb.connect(path, readonly=True)
        try:
            if "chain_outbox" not in tables(conn):
                continue
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                q = ",".join("?" * len(part))
                for key, h, height, state in conn.execute(
                        f"SELECT key, tx_hash, height, state FROM chain_outbox WHERE key IN ({q})", part):
                    out.setdefault(key, (_hex(h), height, state))
        finally:
            conn.close()
    return out


def household_trades(conn: sqlite3.Connection, grid: str, household: str, *, start: int | None = None,
                     end: int | None = None, limit: int | None = 200) -> list[Trade]:
    """The household's fills (maker or taker) in [start, end), newest interval first."""
    if "trades" not in tables(conn):
        return []
    q = (f"SELECT {TRADE_COLS} FROM trades WHERE grid = ? AND (maker_household = ? OR taker_household = ?) "
         "AND interval_start >= ? AND interval_start < ? ORDER BY interval_start DESC, fill_id")
    args: list[object] = [grid, household, household, start if start is not None else -2**62,
                          end if end is not None else 2**62]
    if limit is not None:
        q += " LIMIT ?"
        args.append(limit)
    return [_trade(r) for r in conn.execute(q, args)]


SettledFill = tuple[int, int, int, int, str, str | None, int | None]


def settlement_of(conn: sqlite3.Connection, grid: str, fill_ids: list[bytes]) -> dict[bytes, SettledFill]:
    """{fill id: (part, delivered, payment, refund, state, settle tx, height)}: the live (non-rejected) row."""
    have = tables(conn)
    if "settlement_fills" not in have or not fill_ids:
        return {}
    out: dict[bytes, SettledFill] = {}
    for i in range(0, len(fill_ids), 500):
        part = fill_ids[i:i + 500]
        q = ",".join("?" * len(part))
        for fid, p, start, dwh, pay, ref, state, h, height in conn.execute(
                "SELECT f.fill_id, f.part, f.start, f.delivered_wh, f.payment, f.refund, f.state, b.tx_hash, b.height "
                "FROM settlement_fills f LEFT JOIN settlement_batches b ON b.grid = f.grid AND b.start = f.start AND "
                f"b.part = f.part WHERE f.grid = ? AND f.fill_id IN ({q}) ORDER BY f.state = 'rejected'",
                (grid, *part)):
            out.setdefault(bytes(fid), (p, dwh, int(pay), int(ref), state, _hex(h), height))
    return out


def fill_views(conn: sqlite3.Connection, outboxes: tuple[Path, ...], grid: str, household: str, *,
               won_per_noia: int = 1, limit: int | None = 200) -> list[FillView]:
    trades = household_trades(conn, grid, household, limit=limit)
    txs = outbox_txs(outboxes, [t.submission for t in trades])
    settled = settlement_of(conn, grid, [t.fill_id for t in trades])
    out = []
    for t in trades:
        side = "buy" if t.taker_household == household else "sell"
        h, height, _st = txs.get(t.submission, (None, t.height, ""))
        s = settled.get(t.fill_id)
        if s is None:
            sstate, dwh, pay, ref, stx, sh = "unsettled", None, None, None, None, None
        else:
            part, dwh, pay, ref, sstate, stx, sh = s
            if part == PART_ELSEWHERE:
                sstate = "elsewhere"
            elif part == PART_RECLAIMED:  # the taker took the whole escrow back after the settle timeout
                sstate = "reclaimed"
        out.append(FillView("0x" + t.fill_id.hex(), t.interval_start, side, t.wh, t.noia,
                            won_per_kwh(t.noia, t.wh, won_per_noia), t.origin if side == "buy" else t.maker_origin,
                            t.mechanism, t.state, t.reason, h, height if height is not None else t.height,
                            sstate, dwh, pay, ref, stx, sh))
    return out


def settled_money(conn: sqlite3.Connection, grid: str, household: str, start: int, end: int) -> dict[str, int]:
    """Final settlements of intervals in [start, end): Wh bought/sold as delivered, NOIA paid/received."""
    out = {"bought_wh": 0, "sold_wh": 0, "paid": 0, "received": 0}
    if "settlement_fills" not in tables(conn):
        return out
    for side, wh_key, money_key in (("taker_household", "bought_wh", "paid"),
                                    ("maker_household", "sold_wh", "received")):
        for dwh, pay in conn.execute(
                f"SELECT delivered_wh, payment FROM settlement_fills WHERE grid = ? AND {side} = ? AND "
                "state = 'final' AND start >= ? AND start < ?", (grid, household, start, end)):
            out[wh_key] += int(dwh)
            out[money_key] += int(pay)
    return out
