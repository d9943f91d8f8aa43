"""From a match or a quote to a fill on the chain, the same for every mechanism.

``Filler.fill(taker_household, signed_order, auth)``:

1. the wallet authorises and records the buy (``Wallet.sign_tx(..., Fill)``
   under the household's policy or the homeowner's order; keyed by the order
   digest, so doing it again is the same spend);
2. the trade is written to the ``trades`` table (``pending``) before anything
   leaves the gateway;
3. the fill goes to the chain client under the idempotency key
   ``fill:0x<fill id>`` (``submitted``), which signs it with the household's
   key through ``WalletKeyring`` and sends it exactly once;
4. on finality the trade is ``final`` (the taker's NOIA is in escrow; settlement
   takes over) or ``rejected`` with the chain's reason; the maker's wallet
   records the sell as filled and its Peer releases the quote.

``Executor.execute(clearing, book)`` turns a call auction's matches into signed
orders (the seller's wallet signs: under its policy with the forecast surplus,
or under the homeowner's order) and fills them through the ``Filler``. A
match's order is reserved to the buyer, expires at the interval's start, and
its nonce is derived from (grid, interval, bid id, ask id): executing the same
clearing again makes the same orders (same fill ids, the same spends).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.chain_client import ChainClient, Intent as ChainIntent
from gateway.chain_client.errors import FinalityTimeout
from gateway.market.trades import FINAL, PENDING, REJECTED, SUBMITTED, Trade, TradeLog
from gateway.market.wallet import Wallet
from gateway.market.wallet_policy import Authorisation, ByHomeowner, ByPolicy
from gateway.validator.crypto import keccak256
from gateway.validator.order import Domain, Order, SignedOrder, grid_id
from gateway.validator.tx import Fill, Tx

from .base import BookOrder, Clearing, Match

log = logging.getLogger(__name__)

EXTERNAL = "external"   # a maker household not in this gateway's wallet


def derived_nonce(tag: bytes, *parts: str | int) -> int:
    """A 256-bit order nonce from a tag and parts (top bit set: never one of a Peer's counter nonces)."""
    h = keccak256(tag + b"".join(str(p).encode() + b"\x00" for p in parts))
    return int.from_bytes(h, "big") | (1 << 255)


@dataclass
class Filler:
    wallet: Wallet
    trades: TradeLog
    chain: ChainClient
    grid: str
    domain: Domain
    fill_timeout_s: float = 30.0
    on_final: list[Callable[[Trade], None]] = field(default_factory=list)

    def household_of(self, address: bytes) -> str:
        for h in self.wallet.households():
            if self.wallet.address(h) == address:
                return h
        return EXTERNAL

    async def fill(self, taker_household: str, signed: SignedOrder, auth: Authorisation, *, mechanism: str,
                   origin: str = "agent", maker_origin: str = "agent", wait: bool = True) -> Trade:
        o = signed.order
        taker = self.wallet.address(taker_household)
        fid = o.digest(self.domain)
        # 1. authorise + record the buy (the outbox signs the same payload with its own nonce)
        self.wallet.sign_tx(taker_household, Tx(self.domain.chain_id, taker, 0, Fill(signed)), self.domain, auth)
        # 2. the trade row, before the chain hears of it
        key = f"fill:0x{fid.hex()}"
        trade = self.trades.record(Trade(fid, self.grid, o.interval_start, self.household_of(o.maker), o.maker,
                                         taker_household, taker, o.wh, o.noia, mechanism, origin, maker_origin, signed,
                                         key, PENDING))
        # 3. exactly once through the outbox
        await self.chain.submit(ChainIntent(key, taker, Fill(signed)))
        if trade.state == PENDING:
            self.trades.mark(fid, SUBMITTED)
        log.info("market: %s fill 0x%s: %s buys %d Wh from %s for %d", mechanism, fid.hex()[:16],
                 taker_household, o.wh, trade.maker_household, o.noia)
        return await self.follow(fid) if wait else self.trades.get(fid) or trade

    async def follow(self, fid: bytes) -> Trade:
        """Wait for the fill's receipt and record the outcome (also resumes a trade after a restart)."""
        t = self.trades.get(fid)
        assert t is not None
        if t.state not in (PENDING, SUBMITTED):
            return t
        if t.state == PENDING:  # crashed between recording and submitting: submit again (same key, same tx)
            await self.chain.submit(ChainIntent(t.submission, t.taker, Fill(t.signed_order)))
            self.trades.mark(fid, SUBMITTED)
        try:
            r = await self.chain.wait_final(t.submission, self.fill_timeout_s)  # type: ignore[arg-type]
        except FinalityTimeout:
            return self.trades.get(fid) or t
        if r.ok:
            self.trades.mark(fid, FINAL, height=r.height)
        else:
            self.trades.mark(fid, REJECTED, reason=r.reason or "rejected")
        t = self.trades.get(fid) or t
        if t.state == FINAL:
            if t.maker_household != EXTERNAL:
                self.wallet.confirm_fill(t.maker_household, fid)
            for cb in self.on_final:
                cb(t)
        else:
            log.warning("market: fill 0x%s rejected: %s", fid.hex()[:16], t.reason)
        return t

    async def resume(self) -> list[Trade]:
        """Follow every trade left pending or submitted (after a restart)."""
        return list(await asyncio.gather(*(self.follow(t.fill_id) for t in self.trades.live())))


@dataclass
class Executor:
    """Matches of a mechanism -> orders signed by the sellers -> fills sent by the buyers."""

    filler: Filler
    surplus_wh: Callable[[str, int], int]      # the maker agent's forecast surplus (household, interval)

    def _auths(self, clearing: Clearing, book: Mapping[str, BookOrder]) -> dict[tuple[str, str], Authorisation]:
        """Per (order id, counterparty order id): the authorisation that side signs with."""
        out: dict[tuple[str, str], Authorisation] = {}
        by_order: dict[str, list[Match]] = {}
        for m in clearing.matches:
            by_order.setdefault(m.bid_id, []).append(m)
            by_order.setdefault(m.ask_id, []).append(m)
        for oid, ms in by_order.items():
            o = book[oid]
            if o.origin.startswith("manual:"):
                approval = o.origin[len("manual:"):]   # the manual order id is the wallet approval's id
                # one homeowner order, several counterparties: split it into one approval per match
                children = self.filler.wallet.split_approval(approval, [m.wh for m in ms]) if len(ms) > 1 else None
                for k, m in enumerate(ms):
                    other = m.ask_id if oid == m.bid_id else m.bid_id
                    out[(oid, other)] = ByHomeowner(children[k].id if children else approval)
            else:
                for m in ms:
                    other = m.ask_id if oid == m.bid_id else m.bid_id
                    out[(oid, other)] = ByPolicy(forecast_surplus_wh=self.surplus_wh(o.household, clearing.interval_start)
                                                 if o.side == "sell" else None)
        return out

    async def execute(self, clearing: Clearing, book: Sequence[BookOrder], *, now: int) -> list[Trade]:
        f = self.filler
        by_id = {o.id: o for o in book}
        auths = self._auths(clearing, by_id)
        start = clearing.interval_start
        trades = []
        for m in clearing.matches:
            seller, buyer = by_id[m.ask_id], by_id[m.bid_id]
            order = Order(nonce=derived_nonce(b"metanoia/match/v1", f.grid, start, m.bid_id, m.ask_id),
                          expiry=start, maker=f.wallet.address(seller.household),
                          taker=f.wallet.address(buyer.household), wh=m.wh, interval_start=start, noia=m.noia,
                          grid=grid_id(f.grid))
            sig = f.wallet.sign_order(seller.household, order, f.domain, auths[(m.ask_id, m.bid_id)])
            trades.append(await f.fill(buyer.household, SignedOrder(order, sig), auths[(m.bid_id, m.ask_id)],
                                       mechanism=clearing.mechanism, origin=buyer.origin,
                                       maker_origin=seller.origin, wait=False))
        return list(await asyncio.gather(*(f.follow(t.fill_id) for t in trades)))
