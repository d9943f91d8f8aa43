"""Money conservation under any sequence of transactions (hypothesis stateful test).

Random transfers, fills, cancels, settlements and reclaims, valid or not, go through
``build_block`` one block at a time. After every block: balances + escrows are
unchanged, every escrow belongs to a fill neither settled nor reclaimed, and no fill
is both settled and reclaimed, the incremental state
root equals the root computed from scratch, and a follower re-executing the
block agrees (kit.Chain checks that on every block).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.validator.genesis import DEFAULT_SETTLE_TIMEOUT
from gateway.validator.state import ESCROW, RECLAIMED, SETTLED, accumulate, state_root, total_money
from gateway.validator.tx import Cancel, Reclaim

from .kit import COMPLEX, GENESIS_TIME, INTERVAL, START_BALANCE, USERS, Chain, fill, order, settle, transfer, vtx

users = st.sampled_from(list(USERS))
amounts = st.one_of(st.integers(0, 3000), st.just(START_BALANCE), st.integers(0, 2 * START_BALANCE))


class ChainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.chain = Chain()
        self.supply = total_money(self.chain.store.items())
        self.fills: list[tuple[bytes, int, int]] = []  # fill id, noia, wh
        self.order_nonce = 0

    def _send(self, sender: int, payload, nonce_skew: int = 0) -> None:
        n = self.chain.nonces.get(sender, 0) + nonce_skew
        _, res, rejected = self.chain.block([vtx(sender, max(n, 0), payload)])
        if res.receipts:
            self.chain.nonces[sender] = self.chain.nonces.get(sender, 0) + 1
            if res.receipts[0].fill_id is not None:
                self.last_fill = res.receipts[0].fill_id

    @rule(a=users, b=users, amount=amounts, skew=st.sampled_from([0, 0, 0, -1, 1]))
    def transfer(self, a: int, b: int, amount: int, skew: int) -> None:
        self._send(a, transfer(b, amount), skew)

    @rule(maker=users, taker=users, noia=amounts, wh=st.integers(0, 2000), reuse=st.booleans(),
          interval=st.sampled_from([GENESIS_TIME, GENESIS_TIME + INTERVAL]))
    def fill(self, maker: int, taker: int, noia: int, wh: int, reuse: bool, interval: int) -> None:
        if not reuse:
            self.order_nonce += 1
        self.last_fill = None
        self._send(taker, fill(order(maker, nonce=self.order_nonce, noia=noia, wh=wh, interval_start=interval)))
        if self.last_fill is not None:
            self.fills.append((self.last_fill, noia, wh, interval))

    @rule(maker=users, ahead=st.integers(0, 2))
    def cancel(self, maker: int, ahead: int) -> None:
        self._send(maker, Cancel(self.order_nonce + ahead))

    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        if not self.fills:
            return
        picks = data.draw(st.lists(st.sampled_from(self.fills), min_size=1, max_size=3, unique_by=lambda f: f[0]))
        entries = []
        for fid, noia, wh, _ in picks:
            delivered = data.draw(st.integers(0, wh + 1))
            pay = data.draw(st.integers(0, noia))
            refund = noia - pay + data.draw(st.sampled_from([0, 0, 0, 1]))
            entries.append((fid, delivered, pay, refund))
        self.chain.time += INTERVAL  # both intervals are over by now
        self._send(COMPLEX, settle(entries, interval_start=picks[0][3]))

    @rule(data=st.data(), sender=users, late=st.booleans())
    def reclaim(self, data: st.DataObject, sender: int, late: bool) -> None:
        """A known fill or a made-up id; ``late``: first move the clock to the fill's deadline."""
        if self.fills and data.draw(st.booleans()):
            fid, _, _, interval = data.draw(st.sampled_from(self.fills))
            if late:
                self.chain.time = max(self.chain.time, interval + INTERVAL + DEFAULT_SETTLE_TIMEOUT - 1)
        else:
            fid = data.draw(st.binary(min_size=32, max_size=32))
        self._send(sender, Reclaim(fid))

    @invariant()
    def money_is_conserved(self) -> None:
        items = list(self.chain.store.items())
        assert total_money(items) == self.supply
        escrows = {k[1:] for k, _ in items if k[:1] == ESCROW}
        settled = {k[1:] for k, _ in items if k[:1] == SETTLED}
        reclaimed = {k[1:] for k, _ in items if k[:1] == RECLAIMED}
        assert not escrows & settled and not escrows & reclaimed and not settled & reclaimed
        assert state_root(accumulate(items)) == self.chain.store.head.state_root


TestChainMachine = ChainMachine.TestCase
TestChainMachine.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
