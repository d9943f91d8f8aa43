"""The market side of a simulated complex, wired as the gateway runs it (``metanoia demo``, tests).

One asyncio loop holds: the bundled validator(s), the wallet with every household's
key and policy, the Indexer and one Peer per PV household over loopback HTTP, the
maker and taker agents, the ``Filler`` with its chain client (its own outbox), and,
unless settlement runs in another process, the ``Settler`` with the complex
authority's chain client on the gateway database.

**The accelerated clock.** The rig, the devices, the wallet, the Peers, the Indexer,
the agents and the settler all read the simulated time. So must the chain: a fill is
valid only before its order expires (at the latest the interval's start) and a
settlement only after the interval's end, in *block* time. The validator stamps blocks
with its ``NodeConfig.clock``: in-process nodes get the simulated clock directly, and
validator processes run ``metanoia validator run --clock-file CLOCK_FILE``, reading
the time the driver writes into ``CLOCK_FILE`` (``ClockFile``: 8 bytes, mmap).

**History.** The forecaster needs weeks of past intervals; a demo day has none. The
``PhysicsHistory`` source gives the weeks before the day from the same physics model
as the rig (as if the meters had been installed earlier), then the gateway's own
interval energy (``IntervalEngine``) from the day's start on.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import json
import mmap
import socket
import os
import struct
import subprocess
import sys
import threading
import time as _time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway import db as gdb
from gateway.aggregator.intervals import IntervalEnergy, IntervalEngine
from gateway.chain_client import BundledBackend, ClientConfig, Outbox, OutboxChainClient, StaticKeyring
from gateway.chain_client.rpc import JsonRpcClient
from gateway.market.agents import MakerAgent, MarketConfig, TakerAgent
from gateway.market.forecast import DAY, Forecaster
from gateway.market.indexer import Indexer, IndexerConfig, IndexerService
from gateway.market.mechanisms import BookOrder, CallAuction
from gateway.market.mechanisms.execute import Executor, Filler
from gateway.market.oracle import NOIA_UNITS, Oracle
from gateway.market.peer import PeerConfig
from gateway.market.settlement import IntervalResult, SettlementConfig, Settler
from gateway.market.settlement_fills import ChainFillIndex, MappingDirectory, TradesFillSource
from gateway.market.trades import Trade, TradeLog
from gateway.market.wallet import Wallet, WalletKdf, WalletKeyring
from gateway.market.wallet_policy import Policy
from gateway.validator.crypto import address_of, private_key
from gateway.validator.genesis import Genesis, parse_genesis
from gateway.validator.tx import SETTLE, SettleBatch, decode_tx
from hil.physics import Household

ROOT = Path(__file__).resolve().parents[1]
L = 900
T = TypeVar("T")
CONTRACT = "0x" + "cc" * 20
WON_KWH = NOIA_UNITS // 1000          # NOIA units per Wh for 1 won/kWh at 1 won per NOIA


# ---- the accelerated clock, shared with the chain ----

class ClockFile:
    """Simulated unix time in an 8-byte file, mapped: the driver ``set``s it, any process reads ``now``."""

    def __init__(self, path: Path, start: float | None = None) -> None:
        self.path = Path(path)
        if start is not None:
            self.path.write_bytes(struct.pack("<d", float(start)))
        self._f = open(self.path, "r+b")
        self._mm = mmap.mmap(self._f.fileno(), 8)

    def now(self) -> float:
        return float(struct.unpack_from("<d", self._mm)[0])

    def set(self, t: float) -> None:
        struct.pack_into("<d", self._mm, 0, float(t))


class SharedClock:
    """The rig's clock (``now``/``advance``/``set``, like ``ManualClock``), mirrored into a ``ClockFile``."""

    def __init__(self, start: float, path: Path) -> None:
        self.t = float(start)
        self.file = ClockFile(path, start)

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.set(self.t + seconds)

    def set(self, t: float) -> None:
        self.t = max(self.t, float(t))
        self.file.set(self.t)


class LoopThread:
    """An asyncio loop in a daemon thread: the market runs there while the caller steps the devices."""

    def __init__(self, name: str = "market") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 120) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# ---- history for the forecaster ----

def physics_rows(h: Household, start: int, end: int, interval_s: int = L) -> list[IntervalEnergy]:
    """Interval rows (import/export/PV Wh) straight from a physics household, as the meters would show."""
    rows = []
    h.advance(start)
    prev = h.snapshot()
    for s in range(start, end, interval_s):
        h.advance(s + interval_s)
        cur = h.snapshot()
        d = {k: round(cur[k]) - round(prev[k]) for k in ("import_wh", "export_wh", "pv_wh")}
        rows.append(IntervalEnergy(s, interval_s, readings=0, estimated=False, **d))
        prev = cur
    return rows


class PhysicsHistory:
    """``HistorySource``: the physics model before ``since``, the gateway's interval energy from then on."""

    def __init__(self, db_path: Path, since: int, past: dict[str, list[IntervalEnergy]]) -> None:
        self.db_path = db_path
        self.since = since
        self.past = past
        self._starts = {h: [r.start for r in rows] for h, rows in past.items()}
        self._local = threading.local()

    def _engine(self) -> IntervalEngine:
        eng = getattr(self._local, "engine", None)
        if eng is None:
            eng = self._local.engine = IntervalEngine(gdb.connect(self.db_path, readonly=True))
        return eng

    def household_intervals(self, household: str, start: int | None = None,
                            end: int | None = None) -> list[IntervalEnergy]:
        lo, hi = start if start is not None else 0, end if end is not None else 2**62
        starts = self._starts.get(household, [])
        out = self.past.get(household, [])[bisect.bisect_left(starts, lo):bisect.bisect_left(starts, min(hi, self.since))]
        if hi > self.since:
            out = out + self._engine().household_intervals(household, max(lo, self.since), hi)
        return out


# ---- the chain ----

class Chain:
    """The bundled PoA chain for the run: ``n`` authorities in this process (over loopback) or as processes."""

    def __init__(self, work: Path, n: int, balances: dict[bytes, int], start: int, now: Callable[[], float], *,
                 processes: bool = False, clock_file: Path | None = None, block_time: float = 0.25) -> None:
        if processes and clock_file is None:
            raise ValueError("validator processes read the simulated time from a clock file")
        self.work, self.n, self.processes, self.clock_file = work, n, processes, clock_file
        self.keys = [private_key(os.urandom(32)) for _ in range(n)]
        self.complex_key = private_key(os.urandom(32))
        doc = {"chain_id": 31337, "name": "metanoia-demo", "verifying_contract": CONTRACT,
               "block_time_ms": int(block_time * 1000), "interval_seconds": L, "timestamp": int(start),
               "authorities": ["0x" + address_of(k).hex() for k in self.keys],
               "complex_authority": "0x" + address_of(self.complex_key).hex(),
               "balances": {"0x" + a.hex(): str(v) for a, v in balances.items()}}
        self.genesis: Genesis = parse_genesis(doc)
        self.now = now
        self.nodes: list[Any] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    @property
    def complex_address(self) -> bytes:
        return address_of(self.complex_key)

    @property
    def url(self) -> str:
        return self.urls[0]

    async def start(self) -> Chain:
        from gateway.cli.validator import write_key
        from gateway.validator.node import Node, NodeConfig
        ports = free_ports(2 * self.n)
        p2p = [("127.0.0.1", ports[i]) for i in range(self.n)]
        self.urls = [f"http://127.0.0.1:{ports[self.n + i]}/" for i in range(self.n)]
        if not self.processes:
            for i, key in enumerate(self.keys):
                cfg = NodeConfig(genesis=self.genesis, key=key, data_dir=self.work / f"node{i}", p2p=p2p[i],
                                 peers=tuple(p for j, p in enumerate(p2p) if j != i),
                                 rpc=("127.0.0.1", ports[self.n + i]), clock=self.now)
                node = Node(cfg)
                await node.start()
                self.nodes.append(node)
        else:
            gpath = self.work / "genesis.json"
            gpath.write_text(json.dumps(self.genesis.to_json()))
            for i, key in enumerate(self.keys):
                kpath = self.work / f"authority-{i}.key"
                write_key(kpath, key.secret)
                log = open(self.work / f"node{i}.log", "ab")
                args = [sys.executable, "-m", "gateway.cli", "validator", "run", "--clock-file", str(self.clock_file),
                        "--genesis", str(gpath), "--key", str(kpath), "--data", str(self.work / f"node{i}"),
                        "--p2p", f"127.0.0.1:{p2p[i][1]}", "--rpc", f"127.0.0.1:{ports[self.n + i]}",
                        "--peers", ",".join(f"127.0.0.1:{p}" for j, (_, p) in enumerate(p2p) if j != i),
                        "--workers", "0"]
                self.procs.append(subprocess.Popen(args, stdout=log, stderr=log, cwd=ROOT,
                                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        deadline = _time.monotonic() + 60
        for url in self.urls:
            rpc = JsonRpcClient(url, timeout=2)
            try:
                while True:
                    try:
                        if await rpc.call("chain_finalizedNumber") >= 1:
                            break
                    except Exception:
                        if _time.monotonic() > deadline:
                            raise
                    if any(p.poll() is not None for p in self.procs):
                        raise RuntimeError(f"a validator process exited; see {self.work}/node*.log")
                    await asyncio.sleep(0.1)
            finally:
                await rpc.aclose()
        return self

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


# ---- the market ----

@dataclass(frozen=True)
class House:
    """A household of the complex as the market knows it: registry name, the physics behind its meters, policy."""

    household: str
    kwp: float
    base_load_w: float
    seed: int
    policy: Policy


def default_policy(kwp: float, *, buy_cap_won_kwh: int = 300, reserve_wh: int = 50,
                   sell_floor_won_kwh: int = 0) -> Policy:
    """Sell (if PV) at the Oracle's price (or the floor), keep ``reserve_wh``, buy below ``buy_cap_won_kwh``."""
    return Policy(sell_floor_per_wh=max(1, sell_floor_won_kwh * WON_KWH) if kwp > 0 else None, buy_cap_per_wh=buy_cap_won_kwh * WON_KWH,
                  reserve_wh=reserve_wh if kwp > 0 else 0, interval_wh=5000, daily_noia=20_000 * NOIA_UNITS)


@dataclass
class IntervalTrades:
    start: int
    intents: int = 0
    offered_wh: int = 0
    prices: tuple[int, ...] = ()          # the makers' prices (NOIA units per Wh)
    trades: list[Trade] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)


class Market:
    """The gateway's market for a simulated complex (see the module docstring)."""

    def __init__(self, work: Path, grid: str, houses: list[House], now: Callable[[], float], *, gateway_db: Path,
                 day_start: int, validators: int = 1, processes: bool = False, clock_file: Path | None = None,
                 mechanism: str = "rfq", block_time: float = 0.25, settle: bool = True,
                 fund_noia: int = 100_000, kdf: WalletKdf | None = None, history_days: int = 28) -> None:
        self.work, self.grid, self.houses, self.now = work, grid, houses, now
        self.db_path, self.day_start, self.mechanism, self.settle = gateway_db, day_start, mechanism, settle
        self.fund = fund_noia * NOIA_UNITS
        work.mkdir(parents=True, exist_ok=True)
        self.wallet = Wallet(work / "wallet", b"demo-master-secret-" + os.urandom(16), kdf=kdf, clock=now)
        for h in houses:
            self.wallet.create(h.household)
            self.wallet.set_policy(h.household, h.policy)
        self.address = {h.household: self.wallet.address(h.household) for h in houses}
        self.chain = Chain(work / "chain", validators, {a: self.fund for a in self.address.values()}, day_start, now,
                           processes=processes, clock_file=clock_file, block_time=block_time)
        self.oracle = Oracle()
        past = {h.household: physics_rows(Household(h.household, kwp=h.kwp, base_load_w=h.base_load_w, seed=h.seed),
                                          day_start - history_days * DAY, day_start) for h in houses}
        self.history = PhysicsHistory(gateway_db, day_start, past)
        self.forecaster = Forecaster(self.history)
        self.intervals: dict[int, IntervalTrades] = {}
        self.settled: list[IntervalResult] = []
        self._runners: list[Any] = []
        self._tasks: list[asyncio.Task[Any]] = []

    # -- start and stop --
    async def start(self) -> Market:
        (self.work / "chain").mkdir(exist_ok=True)
        await self.chain.start()
        g = self.chain.genesis
        self.domain = g.params().domain
        self.config = MarketConfig(grid=self.grid, domain=self.domain, mechanism=self.mechanism)
        self.conn = gdb.connect(self.db_path)
        self.trades = TradeLog(self.conn, clock=self.now)
        cc = ClientConfig(poll_interval=0.05, resubmit_after=2.0, backoff_initial=0.05, backoff_max=0.5)
        backend = BundledBackend.from_genesis(self.chain.url, g, timeout=5)
        self.client = OutboxChainClient(backend, Outbox(self.work / "market-outbox.db", backend.name),
                                        WalletKeyring(self.wallet), config=cc)
        self.client.start()
        self.filler = Filler(self.wallet, self.trades, self.client, self.grid, self.domain, fill_timeout_s=30)
        indexer = IndexerService(Indexer(self.work / "indexer.db", self.domain, IndexerConfig(), clock=self.now))
        run, addr = await indexer.start("127.0.0.1", 0)
        self._runners.append(run)
        self.indexer_url = f"http://{addr[0]}:{addr[1]}/"
        self.indexer = JsonRpcClient(self.indexer_url)
        self.makers: dict[str, MakerAgent] = {}
        self.locators: dict[str, str] = {}
        for h in self.houses:
            if h.kwp <= 0:
                continue
            m = MakerAgent(h.household, self.wallet, self.forecaster, self.oracle, self.trades, self.config,
                           complex_forecast=self.complex_forecast, clock=self.now)
            peer = m.make_peer(str(self.work / f"nonces-{h.household}.db"),
                               PeerConfig(grid=self.grid, domain=self.domain, ttl_s=L, ip_rate=0, taker_rate=0))
            prun, paddr = await peer.start("127.0.0.1", 0)
            self._runners.append(prun)
            self.locators[h.household] = f"http://{paddr[0]}:{paddr[1]}/"
            self.filler.on_final.append(m.released)
            self.makers[h.household] = m
        self.takers = {h.household: TakerAgent(h.household, self.wallet, self.forecaster, self.trades, self.filler,
                                               self.config, self.indexer, clock=self.now) for h in self.houses}
        self.directory = MappingDirectory({a: h for h, a in self.address.items()})
        if self.settle:
            sbackend = BundledBackend.from_genesis(self.chain.urls[-1], g, timeout=5)
            self.settle_conn = gdb.connect(self.db_path)
            self.settle_client = OutboxChainClient(sbackend, Outbox(self.db_path, sbackend.name),
                                                   StaticKeyring([self.chain.complex_key]), config=cc)
            self.settle_client.start()
            self.settler = Settler(self.settle_conn, self.settle_client, self.chain.complex_address,
                                   [TradesFillSource(self.settle_conn, self.grid),
                                    ChainFillIndex(self.settle_conn, sbackend.name, self.domain,
                                                   directory=self.directory)],
                                   SettlementConfig(self.grid, interval_s=L, grace_s=120, wait_final_s=30),
                                   directory=self.directory, clock=self.now)
        return self

    def settle_files(self, folder: Path) -> dict[str, Path]:
        """What ``metanoia settle run`` needs: the complex authority's key, the genesis, the households."""
        from gateway.cli.validator import write_key
        folder.mkdir(parents=True, exist_ok=True)
        out = {"key": folder / "complex.key", "genesis": folder / "genesis.json", "households": folder / "households.json"}
        write_key(out["key"], self.chain.complex_key.secret)
        out["genesis"].write_text(json.dumps(self.chain.genesis.to_json()))
        out["households"].write_text(json.dumps({h: "0x" + a.hex() for h, a in self.address.items()}))
        return out

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.indexer.aclose()
        for r in self._runners:
            await r.cleanup()
        await self.client.aclose()
        if self.settle:
            await self.settle_client.aclose()
        await self.chain.stop()

    # -- forecasts and prices --
    def complex_forecast(self, s: int) -> tuple[int, int]:
        """The complex's forecast supply and demand (Wh) for interval ``s`` (the Oracle's third input)."""
        asof = min(s, int(self.now()))
        fs = [self.forecaster.forecast(h.household, s, asof) for h in self.houses]
        return sum(f.surplus_wh for f in fs), sum(f.deficit_wh for f in fs)

    # -- one interval's trading --
    async def trade(self, s: int) -> IntervalTrades:
        """Trade interval ``s`` (before it starts): RFQ (intents, quotes, fills) or the call auction."""
        it = self.intervals.setdefault(s, IntervalTrades(s))
        offers = {h: m.available_wh(s) for h, m in self.makers.items()}
        it.prices = tuple(self.makers[h].price("sell", s, None) for h, wh in offers.items() if wh > 0)
        it.offered_wh = sum(offers.values())
        before = {h: dict(t.refused) for h, t in self.takers.items()}
        if self.mechanism == "auction":
            it.trades = await self._auction(s)
        else:
            for h, m in self.makers.items():
                if offers[h] > 0 and await m.post_intent(self.indexer, s, self.locators[h]):
                    it.intents += 1
            got = await asyncio.gather(*(t.cover(s) for t in self.takers.values()))
            it.trades = [t for ts in got for t in ts]
        for h, t in self.takers.items():
            for k, v in t.refused.items():
                if v - before[h].get(k, 0):
                    it.refused[k] = it.refused.get(k, 0) + v - before[h].get(k, 0)
        return it

    async def _auction(self, s: int) -> list[Trade]:
        asks = [o for i, m in enumerate(self.makers.values()) if (o := m.book_order(s, seq=i)) is not None]
        bids = []
        for i, (h, t) in enumerate(self.takers.items()):
            pol = self.wallet.policy(h)
            if pol is None or pol.buy_cap_per_wh is None:
                continue
            need = min(t.need_wh(s), pol.interval_wh - self.trades.wh(h, "buy", s))
            if need > 0:
                bids.append(BookOrder(f"bid:{h}:{s}", h, "buy", need, pol.buy_cap_per_wh, 1000 + i))
        clearing = CallAuction().clear(s, bids, asks)
        if not clearing.matches:
            return []
        ex = Executor(self.filler, lambda h, t: self.makers[h].surplus_wh(t))
        return await ex.execute(clearing, asks + bids, now=int(self.now()))

    # -- settlement (in this process) --
    def start_settling(self, every_s: float = 0.2) -> None:
        async def loop() -> None:
            while True:
                try:
                    self.settled += [r for r in await self.settler.run_once() if r.state == "settled"]
                except Exception:  # noqa: BLE001 - the loop outlives a failing pass, as Settler.run does
                    import logging
                    logging.getLogger(__name__).exception("settle pass failed")
                await asyncio.sleep(every_s)
        self._tasks.append(asyncio.get_running_loop().create_task(loop()))

    async def settle_until_done(self, timeout: float = 60) -> bool:
        """Wait until every interval with a fill is settled (the settler keeps running meanwhile)."""
        end = _time.monotonic() + timeout
        while _time.monotonic() < end:
            if not self.unsettled_intervals():
                return True
            await asyncio.sleep(0.2)
        return False

    def unsettled_intervals(self) -> list[int]:
        return unsettled_intervals(self.conn, self.grid)

    # -- the audit: every figure read back from the chain --
    async def audit(self) -> dict[str, Any]:
        out = await audit(self.chain.url, self.conn, self.grid, self.address, self.fund)
        if self.settle:
            out["settlement"] = self.settler.summary()
        return out


def unsettled_intervals(conn: Any, grid: str) -> list[int]:
    """Intervals with a fill (not rejected) that settlement has not recorded ``settled``."""
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'settlement_intervals'").fetchone() is not None
    return sorted({int(s) for (s,) in conn.execute(
        "SELECT DISTINCT t.interval_start FROM trades t WHERE t.grid = ? AND t.state != 'rejected'" + (
            " AND NOT EXISTS (SELECT 1 FROM settlement_intervals s WHERE s.grid = t.grid AND "
            "s.start = t.interval_start AND s.state = 'settled')" if has else ""), (grid,))})



async def settlements_on_chain(rpc: Any) -> tuple[Counter[int], Counter[bytes]]:
    """From the chain's final blocks: settle txs per interval start, settle entries per fill id."""
    per_interval: Counter[int] = Counter()
    per_fill: Counter[bytes] = Counter()
    for n in range(1, await rpc.call("chain_finalizedNumber") + 1):
        blk = await rpc.call("chain_getBlockByNumber", n, True)
        for h in blk["transactions"]:
            raw = bytes.fromhex(h[2:])
            if raw[0] == SETTLE:
                batch = decode_tx(raw).payload
                assert isinstance(batch, SettleBatch)
                per_interval[batch.interval_start] += 1
                per_fill.update(e.fill_id for e in batch.entries)
    return per_interval, per_fill

async def audit(url: str, conn: Any, grid: str, address: dict[str, bytes], fund: int) -> dict[str, Any]:
    """Money and energy from the chain and the meters.

    Money: per settled fill payment + refund == escrow; per household the chain balance ==
    genesis - escrowed + refunds + received. Energy: per household and interval, Wh paid for as
    seller <= metered export and as buyer <= metered import. Exactly once: every fill of ``trades``
    (not rejected) is in exactly one settle entry in the chain's blocks.
    """
    rpc = JsonRpcClient(url, timeout=10)
    try:
        trades = [t for t in TradeLog(conn).all(grid) if t.state != "rejected"]
        per_interval, per_fill = await settlements_on_chain(rpc)
        hh: dict[str, dict[str, Any]] = {h: {"bought_wh": 0, "sold_wh": 0, "ordered_buy_wh": 0, "ordered_sell_wh": 0, "escrowed": 0,
                  "refunds": 0, "paid": 0, "received": 0} for h in address}
        by_meter: dict[tuple[str, int, str], int] = {}
        escrowed = paid = refunds = delivered = 0
        unsettled = []
        for t in trades:
            e = await rpc.call("chain_getEscrow", "0x" + t.fill_id.hex())
            if e is None or e.get("status") != "settled":
                unsettled.append(t.fill_id.hex())
                continue
            d, pay, ref = int(e["deliveredWh"]), int(e["payment"]), int(e["refund"])
            escrowed += t.noia
            paid += pay
            refunds += ref
            delivered += d
            b, m = hh.get(t.taker_household), hh.get(t.maker_household)
            if b is not None:
                b["bought_wh"] += d
                b["ordered_buy_wh"] += t.wh
                b["escrowed"] += t.noia
                b["refunds"] += ref
                b["paid"] += pay
            if m is not None:
                m["sold_wh"] += d
                m["ordered_sell_wh"] += t.wh
                m["received"] += pay
            by_meter[(t.maker_household, t.interval_start, "export")] = by_meter.get(
                (t.maker_household, t.interval_start, "export"), 0) + d
            by_meter[(t.taker_household, t.interval_start, "import")] = by_meter.get(
                (t.taker_household, t.interval_start, "import"), 0) + d
        eng = IntervalEngine(conn, interval_s=L)
        energy_ok = True
        for (h, s, side), wh in by_meter.items():
            rows = eng.household_intervals(h, s, s + 1)
            metered = getattr(rows[0], f"{side}_wh") if rows else 0
            energy_ok = energy_ok and wh <= metered
        balances_ok = True
        for h, a in address.items():
            bal = int(await rpc.call("chain_getBalance", "0x" + a.hex()))
            v = hh[h]
            v["balance"] = bal
            v["balance_ok"] = bal == fund - v["escrowed"] + v["refunds"] + v["received"]
            balances_ok = balances_ok and v["balance_ok"]
        settled_ids = {t.fill_id for t in trades if t.fill_id.hex() not in unsettled}
        exactly_once = set(per_fill) == settled_ids and all(c == 1 for c in per_fill.values())
        money_ok = paid + refunds == escrowed
        return {"fills": len(trades), "unsettled_fills": len(unsettled), "escrowed": escrowed, "paid": paid,
                "refunds": refunds, "delivered_wh": delivered, "ordered_wh": sum(t.wh for t in trades),
                "money_ok": money_ok, "energy_ok": energy_ok, "balances_ok": balances_ok,
                "exactly_once": exactly_once, "settle_txs": sum(per_interval.values()),
                "settle_txs_per_interval_max": max(per_interval.values(), default=0),
                "intervals_with_fills": len({t.interval_start for t in trades}),
                "conservation_ok": money_ok and energy_ok and balances_ok and exactly_once and not unsettled,
                "households": hh}
    finally:
        await rpc.aclose()


class DayDriver:
    """A ``Market`` in a ``LoopThread`` beside a synchronous device loop on the simulated clock.

    Call ``before_advance(now, dt)`` before every step of the clock: it starts trading each
    interval once the clock is within one interval of its start, and waits for every
    interval that the step would start (a fill is valid only before its interval starts).
    Intervals from ``first`` to ``last`` (starts) are traded.
    """

    def __init__(self, market: Market, first: int, last: int) -> None:
        self.market = market
        self.lt = LoopThread()
        self.next_s = -(-first // L) * L
        self.last = last
        self.pending: dict[int, concurrent.futures.Future[IntervalTrades]] = {}
        self.done: list[IntervalTrades] = []

    def start(self) -> None:
        self.lt.run(self.market.start())
        if self.market.settle:
            async def go() -> None:
                self.market.start_settling()
            self.lt.run(go())

    async def _trade(self, s: int) -> IntervalTrades:
        try:
            return await self.market.trade(s)
        except Exception as exc:  # noqa: BLE001 - one interval's failure is reported, the day goes on
            import logging
            logging.getLogger(__name__).exception("trading interval %d failed", s)
            it = self.market.intervals.setdefault(s, IntervalTrades(s))
            it.refused[f"error:{exc.__class__.__name__}"] = 1
            return it

    def before_advance(self, now: float, dt: float) -> None:
        while self.next_s <= now:
            self.next_s += L
        while self.next_s <= min(now + L, self.last):
            self.pending[self.next_s] = self.lt.submit(self._trade(self.next_s))
            self.next_s += L
        for s in sorted(self.pending):
            if s <= now + dt:
                self.done.append(self.pending.pop(s).result(timeout=300))

    def finish(self, settle_timeout: float = 120) -> dict[str, Any]:
        """Wait for the last trades and (in-process settlement) every interval with fills settled; the audit."""
        for s in sorted(self.pending):
            self.done.append(self.pending.pop(s).result(timeout=300))
        if self.market.settle:
            self.lt.run(self.market.settle_until_done(settle_timeout), timeout=settle_timeout + 30)
        return self.lt.run(self.market.audit())

    def close(self) -> None:
        try:
            self.lt.run(self.market.stop(), timeout=60)
        finally:
            self.lt.close()
