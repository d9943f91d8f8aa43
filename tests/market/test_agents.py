"""The agents end to end on real services: Peers and the Indexer over loopback HTTP, the real validator
(in-process, JSON-RPC on loopback), the chain client's outbox, the wallet. RFQ and the call auction make
the same kind of fills, recorded in ``trades``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import db as gdb
from gateway.aggregator.intervals import IntervalEnergy
from gateway.chain_client import BundledBackend, ClientConfig, Outbox, OutboxChainClient
from gateway.chain_client.rpc import JsonRpcClient
from gateway.market.agents import MakerAgent, MarketConfig, TakerAgent
from gateway.market.forecast import DAY, Forecaster
from gateway.market.indexer import Indexer, IndexerService
from gateway.market.mechanisms import BookOrder, CallAuction
from gateway.market.mechanisms.execute import Executor, Filler
from gateway.market.oracle import Oracle
from gateway.market.orders import ManualOrders
from gateway.market.peer import PeerConfig
from gateway.market.trades import FINAL, TradeLog
from gateway.market.wallet import Wallet, WalletKdf, WalletKeyring
from gateway.market.wallet_policy import Policy
from gateway.validator.genesis import parse_genesis
from gateway.validator.node import Node
from tests.gateway.validator.netkit import genesis_doc, node_configs

GRID = "test-complex"
NOIA = 10**18
# per household: (pv Wh, load Wh) in every past interval: a steady pattern the forecast repeats
PROFILE = {"h1": (1700, 200), "h2": (3500, 500), "h3": (0, 1500), "h4": (0, 400)}
CONFIG = ClientConfig(poll_interval=0.05, resubmit_after=2.0, backoff_initial=0.05, backoff_max=0.5)


class Meters:
    """A history source: 15 days of the profile (what IntervalEngine.household_intervals would give)."""

    def household_intervals(self, household: str, start: int | None = None, end: int | None = None):
        pv, load = PROFILE[household]
        assert start is not None and end is not None
        s0 = max(start - start % 900, end - 15 * DAY)
        return [IntervalEnergy(s, 900, import_wh=max(0, load - pv), export_wh=max(0, pv - load), pv_wh=pv,
                               readings=15, estimated=False) for s in range(s0 - s0 % 900, end, 900)]


@dataclass
class World:
    wallet: Wallet
    trades: TradeLog
    chain: OutboxChainClient
    filler: Filler
    config: MarketConfig
    makers: dict[str, MakerAgent]
    takers: dict[str, TakerAgent]
    indexer_url: str
    manual: ManualOrders
    rpc: JsonRpcClient
    start: int


def next_interval() -> int:
    now = int(time.time())
    return now - now % 900 + 1800     # 15-30 minutes ahead: quotes and orders stay fillable


@asynccontextmanager
async def world(tmp: Path) -> AsyncIterator[World]:
    wallet = Wallet(tmp / "wallet", b"test-master-secret-0123456789", kdf=WalletKdf.light())
    for h in PROFILE:
        wallet.create(h)
    wallet.set_policy("h1", Policy(sell_floor_per_wh=1, reserve_wh=200, interval_wh=5000))
    wallet.set_policy("h2", Policy(sell_floor_per_wh=NOIA // 2, interval_wh=5000))     # dearer than the oracle
    for h in ("h3", "h4"):
        wallet.set_policy(h, Policy(buy_cap_per_wh=NOIA, interval_wh=5000, daily_noia=10**21))
    doc = genesis_doc(1, 0.2)
    doc["balances"] = {"0x" + wallet.address(h).hex(): str(10**21) for h in ("h3", "h4")}
    g = parse_genesis(doc)
    node = Node(node_configs(tmp, g, 1)[0])
    await node.start()
    assert node.rpc_address is not None
    url = f"http://{node.rpc_address[0]}:{node.rpc_address[1]}/"
    conn = gdb.connect(tmp / "gateway.db")
    trades = TradeLog(conn)
    backend = BundledBackend.from_genesis(url, g, timeout=3)
    chain = OutboxChainClient(backend, Outbox(tmp / "gateway.db", backend.name), WalletKeyring(wallet), config=CONFIG)
    chain.start()
    config = MarketConfig(grid=GRID, domain=g.params().domain)
    forecaster = Forecaster(Meters())
    filler = Filler(wallet, trades, chain, GRID, config.domain, fill_timeout_s=20)
    indexer = IndexerService(Indexer(tmp / "indexer.db", config.domain))
    runners = []
    irun, iaddr = await indexer.start("127.0.0.1", 0)
    runners.append(irun)
    indexer_url = f"http://{iaddr[0]}:{iaddr[1]}/"
    rpc = JsonRpcClient(indexer_url)
    makers = {}
    for h in ("h1", "h2"):
        m = MakerAgent(h, wallet, forecaster, Oracle(), trades, config)
        peer = m.make_peer(str(tmp / f"nonces-{h}.db"), PeerConfig(grid=GRID, domain=config.domain, ip_rate=0,
                                                                   taker_rate=0))
        run, addr = await peer.start("127.0.0.1", 0)
        runners.append(run)
        m.locator = f"http://{addr[0]}:{addr[1]}/"  # type: ignore[attr-defined]
        filler.on_final.append(m.released)
        makers[h] = m
    manual = ManualOrders(conn, wallet, GRID, config.domain, trades=trades)
    takers = {h: TakerAgent(h, wallet, forecaster, trades, filler, config, rpc, firm_asks=manual.firm_asks)
              for h in ("h3", "h4")}
    try:
        yield World(wallet, trades, chain, filler, config, makers, takers, indexer_url, manual, rpc, next_interval())
    finally:
        await rpc.aclose()
        for r in runners:
            await r.cleanup()
        await chain.aclose()
        await node.stop()


def _intent_of(m: MakerAgent, s: int):
    from gateway.market.intent import Intent
    from gateway.validator.order import grid_id
    return Intent("sell", grid_id(GRID), s, s + 900, 1, 1, m.locator, s, m.address, 1)  # type: ignore[attr-defined]


def test_rfq_makers_post_intents_taker_fills_the_cheapest_and_the_chain_escrows(tmp_path: Path) -> None:
    async def go() -> None:
        async with world(tmp_path) as w:
            s = w.start
            h1, h2 = w.makers["h1"], w.makers["h2"]
            # surplus 1500 - reserve 200 = 1300 for h1; 3000 for h2 (no reserve)
            assert (h1.available_wh(s), h2.available_wh(s)) == (1300, 3000)
            assert h2.price("sell", s, None) == NOIA // 2 > h1.price("sell", s, None)   # the policy floor binds
            for m in (h1, h2):
                assert (await m.post_intent(w.rpc, s, m.locator))["accepted"]  # type: ignore[attr-defined]
            trades = await w.takers["h3"].cover(s)          # deficit 1500
            assert [(t.maker_household, t.wh, t.state) for t in trades] == [("h1", 1300, FINAL), ("h2", 200, FINAL)]
            assert trades[0].noia == 1300 * h1.price("sell", s, None)
            # the fills are escrowed on the real chain, recorded for settlement, counted by the wallet
            for t in trades:
                esc = await w.chain.escrow(t.fill_id)
                assert esc is not None and (esc.wh, esc.noia, esc.maker, esc.taker) == (t.wh, t.noia, t.maker, t.taker)
            assert [t.fill_id for t in w.trades.for_interval(GRID, s)] == sorted(t.fill_id for t in trades)
            assert await w.chain.balance(w.wallet.address("h3")) == 10**21 - sum(t.noia for t in trades)
            assert w.wallet.spent_today("h3") == sum(t.noia for t in trades)
            # the maker never commits more than its forecast: h1 has nothing left and its Peer refuses a quote
            assert h1.available_wh(s) == 0
            q = await w.takers["h4"]._ask(_intent_of(h1, s), s, 1, time.time())
            assert q is None and w.takers["h4"].refused == {"over_commit": 1}
            assert await w.takers["h3"].cover(s) == []       # h3's deficit is covered
            # h4 (deficit 400) finds only h2 left: h1's intent is still listed but its quote is refused
            t4 = await w.takers["h4"].cover(s)
            assert [(t.maker_household, t.wh, t.state) for t in t4] == [("h2", 400, FINAL)]
            # the wallet kept h2's sells within its forecast, whatever the Peer offered
            assert w.wallet.committed_wh("h2", "sell", s) <= h2.surplus_wh(s)

    asyncio.run(go())


def test_call_auction_matches_become_signed_orders_and_fills_like_rfq(tmp_path: Path) -> None:
    async def go() -> None:
        async with world(tmp_path) as w:
            s = w.start
            asks = [m.book_order(s, seq=i) for i, m in enumerate(w.makers.values())]
            bids = [BookOrder(f"bid:{h}", h, "buy", t.need_wh(s), NOIA, 10 + i)
                    for i, (h, t) in enumerate(w.takers.items())]
            book = [o for o in asks + bids if o is not None]
            clearing = CallAuction().clear(s, [o for o in book if o.side == "buy"],
                                           [o for o in book if o.side == "sell"])
            # demand 1500 + 400 = 1900 <= h1's 1300 + h2's 3000: h2's ask is marginal (partly filled): price = its ask
            assert clearing.volume_wh == 1900 and clearing.price_per_wh == NOIA // 2
            ex = Executor(w.filler, lambda h, t: w.makers[h].surplus_wh(t))
            trades = await ex.execute(clearing, book, now=int(time.time()))
            assert all(t.state == FINAL and t.mechanism == "auction" for t in trades)
            assert sum(t.wh for t in trades) == 1900
            assert all(t.noia == t.wh * NOIA // 2 for t in trades)          # pay as clear
            for t in trades:
                assert (await w.chain.escrow(t.fill_id)) is not None
            # executing the same clearing again makes the same orders: nothing new on the chain or in trades
            again = await ex.execute(clearing, book, now=int(time.time()))
            assert {t.fill_id for t in again} == {t.fill_id for t in trades} and len(w.trades.all()) == len(trades)

    asyncio.run(go())
