"""A homeowner's manual orders, beside the automatic ones (docs/market.md).

A manual order sells or buys ``wh`` for one delivery interval at a limit price
(NOIA units per Wh: a sell takes at least, a buy pays at most). Placing one is
the homeowner's act (the CLI now, a signed-in web session later): it is
approved in the wallet (``Wallet.approve``: single use, MACed, expiring at the
interval's start) and recorded here. The order's id **is** that approval's id.

How it executes depends on the complex's mechanism:

- **rfq**: a *sell* is signed at once as a firm order (maker = the household,
  any taker, all its Wh, expiry = the interval's start) under the approval
  (``ByHomeowner``); taker agents see it beside the Peers' quotes
  (``firm_asks``) and fill it when it is the cheapest and fits their need.
  A *buy* is executed by the household's taker agent (``execute_buy``): one fill
  of the cheapest quote for up to its Wh within its price, under the approval.
- **auction**: the order enters the interval's book (``book_orders``) with
  origin ``manual:<id>``; if it matches several counterparties the approval is
  split into one per match (``Wallet.split_approval``).

``cancel``: an order nothing was signed for is just withdrawn (its approval
expires unused); a signed, unfilled firm order is withdrawn on the chain with a
``cancel`` transaction of its nonce (through the chain client), after which no
fill of it can apply. A filled order cannot be cancelled.

States: ``open`` (approved, nothing signed), ``signed`` (firm order out),
``cancelling``, ``cancelled``, ``filled`` (see ``trades``), ``expired``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
import builtins
from typing import Any

from gateway import db as gdb
from gateway.chain_client import ChainClient, Intent as ChainIntent
from gateway.market.mechanisms.base import BookOrder
from gateway.market.mechanisms.execute import derived_nonce
from gateway.market.trades import REJECTED, TradeLog
from gateway.market.wallet import Wallet
from gateway.market.wallet_policy import ByHomeowner, ByPolicy
from gateway.validator.crypto import ZERO_ADDRESS
from gateway.validator.order import Domain, Order, SignedOrder, grid_id
from gateway.validator.tx import Cancel, Tx

log = logging.getLogger(__name__)

OPEN, SIGNED, CANCELLING, CANCELLED, FILLED, EXPIRED = "open", "signed", "cancelling", "cancelled", "filled", "expired"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS manual_orders (
        id             TEXT    PRIMARY KEY,   -- = the wallet approval's id
        household      TEXT    NOT NULL,
        side           TEXT    NOT NULL,      -- sell | buy
        grid           TEXT    NOT NULL,
        interval_start INTEGER NOT NULL,
        wh             INTEGER NOT NULL,
        price_per_wh   TEXT    NOT NULL,      -- decimal, NOIA units per Wh (limit)
        mechanism      TEXT    NOT NULL,      -- rfq | auction
        state          TEXT    NOT NULL,
        signed_order   BLOB,                  -- a firm rfq sell: 225 bytes
        cancel_key     TEXT,                  -- chain client submission of the cancel
        reason         TEXT,
        seq            INTEGER NOT NULL,      -- arrival order (auction time priority)
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS manual_orders_by_interval ON manual_orders (grid, interval_start, state)",
)


class OrderError(Exception):
    """``reason``: ``bad_order``, ``unknown_order``, ``not_yours``, ``filled``, ``already_cancelled``,
    ``interval_past``, ``cancel_rejected``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ManualOrderRow:
    id: str
    household: str
    side: str
    grid: str
    interval_start: int
    wh: int
    price_per_wh: int
    mechanism: str
    state: str
    signed_order: SignedOrder | None
    reason: str | None
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "household": self.household, "side": self.side, "grid": self.grid,
                "interval_start": self.interval_start, "wh": self.wh, "price_per_wh": str(self.price_per_wh),
                "mechanism": self.mechanism, "state": self.state, "reason": self.reason,
                "order_nonce": None if self.signed_order is None else str(self.signed_order.order.nonce)}


_COLS = "id, household, side, grid, interval_start, wh, price_per_wh, mechanism, state, signed_order, reason, seq"


def _row(r: tuple[Any, ...]) -> ManualOrderRow:
    return ManualOrderRow(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7], r[8],
                          None if r[9] is None else SignedOrder.decode(bytes(r[9])), r[10], r[11])


class ManualOrders:
    def __init__(self, conn: sqlite3.Connection, wallet: Wallet, grid: str, domain: Domain, *,
                 trades: TradeLog | None = None, interval_s: int = 900,
                 clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.wallet = wallet
        self.grid = grid
        self.domain = domain
        self.trades = trades
        self.interval_s = interval_s
        self.clock = clock
        gdb.ensure_schema(conn, "manual_orders", SCHEMA)

    def place(self, household: str, side: str, interval_start: int, wh: int, price_per_wh: int, *,
              mechanism: str = "rfq") -> ManualOrderRow:
        now = int(self.clock())
        if side not in ("sell", "buy") or mechanism not in ("rfq", "auction"):
            raise OrderError("bad_order", "side is sell or buy, mechanism rfq or auction")
        if wh <= 0 or price_per_wh <= 0 or interval_start % self.interval_s:
            raise OrderError("bad_order", f"wh and price > 0, interval a multiple of {self.interval_s}")
        if interval_start <= now:
            raise OrderError("interval_past", f"the interval {interval_start} has started")
        approval = self.wallet.approve(household, side, ttl_s=interval_start - now, wh=wh,
                                       price_per_wh=price_per_wh, interval_start=interval_start)
        signed = None
        state = OPEN
        if mechanism == "rfq" and side == "sell":
            order = Order(nonce=derived_nonce(b"metanoia/manual/v1", approval.id), expiry=interval_start,
                          maker=self.wallet.address(household), taker=ZERO_ADDRESS, wh=wh,
                          interval_start=interval_start, noia=wh * price_per_wh, grid=grid_id(self.grid))
            signed = SignedOrder(order, self.wallet.sign_order(household, order, self.domain,
                                                               ByHomeowner(approval.id)))
            state = SIGNED
        (seq,) = self.conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM manual_orders").fetchone()
        self.conn.execute(f"INSERT INTO manual_orders ({_COLS}, created_at, updated_at) VALUES "
                          "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (approval.id, household, side, self.grid, interval_start, wh, str(price_per_wh), mechanism,
                           state, None if signed is None else signed.encode(), None, seq, now, now))
        log.info("manual order %s: %s %s %d Wh at %d/Wh for %d (%s)", approval.id, household, side, wh,
                 price_per_wh, interval_start, mechanism)
        got = self.get(approval.id)
        assert got is not None
        return got

    def get(self, order_id: str) -> ManualOrderRow | None:
        r = self.conn.execute(f"SELECT {_COLS} FROM manual_orders WHERE id = ?", (order_id,)).fetchone()
        return None if r is None else self._refresh(_row(r))

    def _set(self, order_id: str, state: str, *, reason: str | None = None, cancel_key: str | None = None) -> None:
        self.conn.execute("UPDATE manual_orders SET state = ?, reason = COALESCE(?, reason), "
                          "cancel_key = COALESCE(?, cancel_key), updated_at = ? WHERE id = ?",
                          (state, reason, cancel_key, int(self.clock()), order_id))

    def _refresh(self, o: ManualOrderRow) -> ManualOrderRow:
        """Bring the state up to date: filled (a trade from it, not rejected) or expired (interval started)."""
        if o.state in (CANCELLED, FILLED, EXPIRED):
            return o
        state = o.state
        if self.trades is not None and self._traded(o.id):
            state = FILLED
        elif o.interval_start <= self.clock() and o.state != CANCELLING:
            state = EXPIRED
        if state != o.state:
            self._set(o.id, state)
            return replace(o, state=state)
        return o

    def _traded(self, order_id: str) -> bool:
        origin = f"manual:{order_id}"
        (n,) = self.conn.execute("SELECT COUNT(*) FROM trades WHERE (origin = ? OR maker_origin = ?) AND state != ?",
                                 (origin, origin, REJECTED)).fetchone()
        return bool(n)

    def list(self, household: str | None = None) -> list[ManualOrderRow]:  # noqa: A003
        q = f"SELECT {_COLS} FROM manual_orders"
        args: tuple[str, ...] = ()
        if household is not None:
            q, args = q + " WHERE household = ?", (household,)
        return [self._refresh(_row(r)) for r in self.conn.execute(q + " ORDER BY seq", args)]

    # -- what the mechanisms see --
    def firm_asks(self, interval_start: int) -> builtins.list[tuple[str, SignedOrder]]:
        """Signed rfq sells of the interval still open (for the taker agents)."""
        return [(o.id, o.signed_order) for o in self.list() if o.state == SIGNED and o.signed_order is not None
                and o.interval_start == interval_start and o.grid == self.grid]

    def book_orders(self, interval_start: int) -> builtins.list[BookOrder]:
        """Open auction orders of the interval as book entries (origin ``manual:<id>``)."""
        return [BookOrder(f"manual:{o.id}", o.household, o.side, o.wh, o.price_per_wh, o.seq,  # type: ignore[arg-type]
                          f"manual:{o.id}") for o in self.list()
                if o.state == OPEN and o.mechanism == "auction" and o.interval_start == interval_start]

    async def execute_buy(self, order_id: str, taker: Any) -> builtins.list[Any]:
        """An open rfq buy through the household's ``TakerAgent``: one fill within its Wh and price."""
        o = self.get(order_id)
        if o is None:
            raise OrderError("unknown_order", order_id)
        if o.side != "buy" or o.mechanism != "rfq" or o.state != OPEN:
            raise OrderError("bad_order", f"order {order_id} is a {o.state} {o.mechanism} {o.side}")
        trades = await taker.cover(o.interval_start, need_wh=o.wh, cap=o.price_per_wh, auth=ByHomeowner(o.id),
                                   origin=f"manual:{o.id}", single=True)
        self.get(order_id)
        return trades  # type: ignore[no-any-return]

    # -- cancel --
    async def cancel(self, order_id: str, household: str, chain: ChainClient | None = None, *,
                     timeout: float = 30.0) -> ManualOrderRow:
        o = self.get(order_id)
        if o is None:
            raise OrderError("unknown_order", order_id)
        if o.household != household:
            raise OrderError("not_yours", "the order belongs to another household")
        if o.state == FILLED:
            raise OrderError("filled", "a filled order cannot be cancelled")
        if o.state in (CANCELLED, EXPIRED):
            raise OrderError("already_cancelled", f"the order is {o.state}")
        if o.signed_order is None:
            self._set(o.id, CANCELLED, reason="withdrawn")
        else:
            if chain is None:
                raise OrderError("bad_order", "a signed order is cancelled on the chain: a chain client is needed")
            addr = self.wallet.address(household)
            nonce = o.signed_order.order.nonce
            # the wallet signs cancels without authorisation (they spend nothing); this records nothing
            self.wallet.sign_tx(household, Tx(self.domain.chain_id, addr, 0, Cancel(nonce)), self.domain, ByPolicy())
            key = f"cancel:{o.id}"
            self._set(o.id, CANCELLING, cancel_key=key)
            sid = await chain.submit(ChainIntent(key, addr, Cancel(nonce)))
            r = await chain.wait_final(sid, timeout)
            if r.ok:
                self._set(o.id, CANCELLED, reason="cancelled on chain")
            else:
                self._set(o.id, SIGNED if r.reason != "order_already_filled" else FILLED, reason=r.reason)
                raise OrderError("cancel_rejected", r.reason or "rejected")
        log.info("manual order %s cancelled", o.id)
        got = self.get(o.id)
        assert got is not None
        return got


__all__ = ["ManualOrders", "ManualOrderRow", "OrderError", "OPEN", "SIGNED", "CANCELLING", "CANCELLED", "FILLED",
           "EXPIRED"]
