"""Settlement end to end against the REAL validator (gateway/validator/node.py, in-process, JSON-RPC on loopback).

Fills are real: a maker signs an EIP-712 order, the taker fills it through the chain client (the NOIA is
escrowed on the chain). Interval energy and evidence roots come from real signed readings
(bench/signed_readings.SigningDevice) in ``readings``, folded by the Deriver. Settlement builds the batch,
submits it through the outbox as the complex authority and follows it to finality; every figure is then
read back from the chain over JSON-RPC. The kill -9 test runs the settlement in subprocesses
(``python -m tests.market.test_settlement_e2e worker ...`` and ``metanoia settle run``) that die at chosen
points or at random moments, while the node runs on.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bench.signed_readings import SigningDevice
from gateway.aggregator.derive import Deriver
from gateway.aggregator.intervals import IntervalEngine
from gateway.chain_client import BundledBackend, ClientConfig, Intent, Outbox, OutboxChainClient, StaticKeyring
from gateway.chain_client.rpc import JsonRpcClient
from gateway.db import open_gateway_db
from gateway.devices import DeviceRegistry
from gateway.evidence.roots import EvidenceStore
from gateway.market.settlement import SettlementConfig, Settler, metered_of_batch
from gateway.market.settlement_fills import ChainFillIndex, MappingDirectory, StaticFillSource, TradesFillSource
from gateway.market.trades import FINAL, Trade, TradeLog
from gateway.validator.genesis import Genesis, parse_genesis
from gateway.validator.node import Node
from gateway.validator.order import grid_id
from gateway.validator.tx import SettleBatch, Settlement
from tests.gateway.validator import kit
from tests.gateway.validator.netkit import START, genesis_doc, node_configs

ROOT = Path(__file__).resolve().parents[2]
GRID = "test-complex"
GID = grid_id(GRID)
BT = 0.2
FAR = 2**40
L = 900
CONFIG = ClientConfig(poll_interval=0.05, resubmit_after=2.0, backoff_initial=0.05, backoff_max=0.5)
HOUSES = {i: f"h{i}" for i in kit.USERS}          # kit key index -> household
DIRECTORY = MappingDirectory({kit.addr(i): h for i, h in HOUSES.items()})
BASE = (int(time.time()) // L) * L - 12 * L        # intervals well in the past: the chain lets them settle


# ---- the world: a real node, a gateway database with devices, readings, fills ----

@asynccontextmanager
async def real_node(tmp: Path) -> AsyncIterator[tuple[Genesis, str]]:
    g = parse_genesis(genesis_doc(1, BT))
    node = Node(node_configs(tmp, g, 1)[0])
    await node.start()
    assert node.rpc_address is not None
    try:
        yield g, f"http://{node.rpc_address[0]}:{node.rpc_address[1]}/"
    finally:
        await node.stop()


def client(db: Path, url: str, g: Genesis) -> OutboxChainClient:
    backend = BundledBackend.from_genesis(url, g, timeout=3)
    return OutboxChainClient(backend, Outbox(db, backend.name), StaticKeyring([kit.key(i) for i in range(8)]),
                             config=CONFIG)


def setup_db(db: Path, energy: dict[int, dict[str, tuple[int, int]]]) -> None:
    """Devices for every household, signed readings giving each interval exactly ``energy[start][h] = (export,
    import)`` Wh, then the Deriver: intervals and evidence roots."""
    conn = open_gateway_db(db)
    reg = DeviceRegistry(conn)
    devs = {}
    for i, h in HOUSES.items():
        d = SigningDevice.generate(bytes([0, 0, 0, 0, 0, 0, 0, 0, i]))
        reg.add({"device_id": d.device_id.hex(), "public_key": d.public_key.hex(), "grid": GRID, "profile": "sdm630"},
                claim_code=f"claim-code-{i}")
        reg.pair(d.device_id, h, f"claim-code-{i}")
        devs[h] = d
    starts = sorted(energy)
    last = starts[-1] + L  # one quiet interval after the last, so the last is closed for evidence
    rows = []
    for h, d in devs.items():
        imp = exp = 0
        seq = 0
        for s in range(starts[0], last + L, L):
            e, i_ = energy.get(s, {}).get(h, (0, 0))
            for k, dt in enumerate((100, 400, 800)):  # the interval's energy lands in (s+100, s+400]
                if k == 1:
                    exp, imp = exp + e, imp + i_
                seq += 1
                rows.append((d.device_id, seq, s + dt, imp, exp, 0, 0, 0, d.reading(seq, s + dt, imp, exp, 0, 0, 0), 1))
    conn.executemany("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    Deriver(conn, GRID, grace_s=60).pass_once()
    conn.close()


async def make_fills(c: OutboxChainClient, g: Genesis, specs: list[tuple[int, int, int, int, int, int]],
                     trades: TradeLog | None = None) -> list[bytes]:
    """specs: (interval start, maker, taker, order nonce, Wh, NOIA); the taker fills each through the client."""
    dom = g.params().domain
    sids, fids = [], []
    for start, mk, tk, nonce, wh, noia in specs:
        o = kit.order(mk, nonce, noia=noia, wh=wh, expiry=FAR, interval_start=start, grid=GID)
        fid = o.digest(dom)
        if trades is not None:
            trades.record(Trade(fid, GRID, start, HOUSES[mk], kit.addr(mk), HOUSES[tk], kit.addr(tk), wh, noia, "rfq",
                                "agent", "agent", kit.signed(o), f"fill:0x{fid.hex()}", FINAL))
        sids.append(await c.submit(Intent(f"fill:0x{fid.hex()}", kit.addr(tk), kit.fill(o))))
        fids.append(fid)
    for sid in sids:
        assert (await c.wait_final(sid, 20)).ok
    return fids


async def applied(rpc: JsonRpcClient) -> Counter[bytes]:
    """How many blocks hold each tx hash (the exactly-once check, read from the chain)."""
    seen: Counter[bytes] = Counter()
    for n in range(1, await rpc.call("chain_finalizedNumber") + 1):
        blk = await rpc.call("chain_getBlockByNumber", n)
        seen.update(bytes.fromhex(h[2:]) for h in blk["transactions"])
    return seen


async def escrow(rpc: JsonRpcClient, fid: bytes) -> dict:  # type: ignore[type-arg]
    return await rpc.call("chain_getEscrow", "0x" + fid.hex())  # type: ignore[no-any-return]


async def balances(rpc: JsonRpcClient) -> dict[int, int]:
    return {i: int(await rpc.call("chain_getBalance", "0x" + kit.addr(i).hex())) for i in kit.USERS}


def settler(conn, c: OutboxChainClient, g: Genesis, sources) -> Settler:  # type: ignore[no-untyped-def]
    return Settler(conn, c, kit.addr(kit.COMPLEX), sources, SettlementConfig(GRID, grace_s=60, wait_final_s=20),
                   directory=DIRECTORY)


# ---- hand-computed settlements on the real chain ----

S = [BASE + k * L for k in range(6)]
ENERGY = {
    S[0]: {"h2": (1000, 0), "h3": (0, 1000)},                                   # full delivery
    S[1]: {"h2": (300, 0), "h3": (0, 1000)},                                    # maker short
    S[2]: {"h2": (1000, 0), "h3": (0, 500)},                                    # taker short
    S[3]: {"h2": (1000, 0), "h5": (400, 0), "h3": (0, 600), "h4": (0, 1000)},   # several fills per household
    S[4]: {"h2": (0, 0), "h3": (0, 1000)},                                      # nothing exported
    S[5]: {"h2": (500, 0), "h3": (0, 500)},                                     # no fills at all
}
FILLS = [(S[0], 2, 3, 1, 800, 8000), (S[1], 2, 3, 2, 800, 8000), (S[2], 2, 3, 3, 800, 8000),
         (S[3], 2, 3, 4, 600, 6000), (S[3], 2, 4, 5, 900, 9001), (S[3], 5, 4, 6, 400, 4000),
         (S[4], 2, 3, 7, 800, 8000)]
EXPECTED = [(800, 8000, 0), (300, 3000, 5000), (500, 5000, 3000),
            (400, 4000, 2000), (600, 6000, 3001), (400, 4000, 0),
            (0, 0, 8000)]


def test_hand_computed_settlements_on_the_real_chain_conserve_money_and_energy_and_settle_once(tmp_path):
    async def go() -> None:
        db = tmp_path / "gw.db"
        setup_db(db, ENERGY)
        async with real_node(tmp_path) as (g, url):
            rpc = JsonRpcClient(url, timeout=5)
            takers = client(tmp_path / "takers.db", url, g)
            conn = open_gateway_db(db)
            trades = TradeLog(conn)
            async with takers:
                # the first four fills are in the trades table; the rest only on the chain (found by the index)
                fids = await make_fills(takers, g, FILLS[:4], trades) + await make_fills(takers, g, FILLS[4:])
            before = await balances(rpc)
            index = ChainFillIndex(conn, "metanoia:31337", g.params().domain, directory=DIRECTORY)
            async with client(db, url, g) as c:
                st = settler(conn, c, g, [TradesFillSource(conn, GRID), index])
                results = {r.start: r for r in await st.run_once()}
                assert sorted(results) == S
                assert all(r.state == "settled" for r in results.values())
                assert results[S[5]].fills == 0 and results[S[5]].batches == ()  # nothing to submit
                # each fill on the chain: settled with the hand-computed figures
                for fid, exp in zip(fids, EXPECTED):
                    e = await escrow(rpc, fid)
                    assert e["status"] == "settled"
                    assert (e["deliveredWh"], int(e["payment"]), int(e["refund"])) == exp
                # one batch per interval with fills, each in exactly one block, key settle:{grid}:{start}
                seen = await applied(rpc)
                for s in S[:5]:
                    (b,) = results[s].batches
                    assert b.key == f"settle:{GRID}:{s}" and b.state == "final" and seen[b.tx_hash] == 1
                    r = results[s]
                    assert r.payment + r.refund == r.escrow  # conservation per batch
                    assert r.root == EvidenceStore(conn).versions(GRID, s)[0].root and r.root_version == 1
                # money moved exactly as the settlements say
                after = await balances(rpc)
                want = dict(before)
                for (s, mk, tk, *_), (_, pay, ref) in zip(FILLS, EXPECTED):
                    want[mk] += pay
                    want[tk] += ref
                assert after == want
                assert sum(after.values()) + 0 == sum(before.values()) + sum(n for *_, n in FILLS)
                # Wh paid for never exceeds Wh metered (from the interval engine), per household and side
                eng = IntervalEngine(conn, interval_s=L)
                for s in S[:5]:
                    for h in HOUSES.values():
                        rows = eng.household_intervals(h, s, s + 1)
                        ex, im = (rows[0].export_wh, rows[0].import_wh) if rows else (0, 0)
                        sold = sum(d for (fs, mk, tk, *_), (d, _, _) in zip(FILLS, EXPECTED) if fs == s and HOUSES[mk] == h)
                        bought = sum(d for (fs, mk, tk, *_), (d, _, _) in zip(FILLS, EXPECTED) if fs == s and HOUSES[tk] == h)
                        assert sold <= ex and bought <= im
                        assert metered_of_batch(conn, GRID, s, 0).get(h, (ex, im)) == (ex, im)
                assert {t.state for t in trades.all(GRID)} == {"settled"}
                # idempotent: settling again submits nothing
                rows_before = len(c.outbox.all())
                for s in S:
                    again = await st.settle_interval(s)
                    assert again.state == "settled" and again.batches == results[s].batches
                assert len(c.outbox.all()) == rows_before
                # the chain refuses a second settlement of the same fill, whoever builds it
                batch = SettleBatch(GID, S[0], results[S[0]].root, (Settlement(fids[0], 800, 0, 8000),))
                r2 = await c.wait_final(await c.submit(Intent("settle-again", kit.addr(kit.COMPLEX), batch)), 20)
                assert r2.status == "rejected" and r2.reason == "fill_already_settled"
                assert await balances(rpc) == after
                # a late reading after settlement: recorded, never settled again
                late = SigningDevice.generate(b"\x00" * 8 + b"\x63")
                DeviceRegistry(conn).add({"device_id": late.device_id.hex(), "public_key": late.public_key.hex(),
                                          "grid": GRID, "profile": "sdm630"}, claim_code="late-claim-code")
                conn.execute("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (late.device_id, 1, S[0] + 5, 0, 0, 0, 0, 0, late.reading(1, S[0] + 5), 2))
                EvidenceStore(conn).update_stored([(late.device_id, 1)])
                await st.run_once()
                assert st.summary()["late_readings"] == 1 and st.result(S[0]).batches == results[S[0]].batches
                # a fill that lands after its interval was settled: a further batch (part 1) from the metered
                # energy the first left (h2 exported 1000, h3 imported 1000, 800 used: 200 left), citing the
                # root the chain already holds for the interval (v1, not the late reading's v2)
                async with client(tmp_path / "takers.db", url, g) as takers2:
                    (late_fid,) = await make_fills(takers2, g, [(S[0], 2, 3, 30, 300, 3000)])
                await index.sync(c.backend.rpc.call)
                r0 = await st.settle_interval(S[0])
                assert [b.key for b in r0.batches] == [f"settle:{GRID}:{S[0]}", f"settle:{GRID}:{S[0]}:1"]
                assert r0.state == "settled" and r0.fills == 2 and r0.root_version == 1
                e = await escrow(rpc, late_fid)
                assert (e["status"], e["deliveredWh"], int(e["payment"]), int(e["refund"])) == ("settled", 200, 2000,
                                                                                                1000)
            await rpc.aclose()
            takers.outbox.close()
            conn.close()
    asyncio.run(go())


# ---- exactly once across kill -9 of the settlement process ----

CRASH_S = [BASE + k * L for k in range(7, 11)]
CRASH_ENERGY = {
    CRASH_S[0]: {"h2": (700, 0), "h6": (300, 0), "h3": (0, 900), "h4": (0, 200)},
    CRASH_S[1]: {"h2": (100, 0), "h3": (0, 1000), "h7": (0, 50)},
    CRASH_S[2]: {"h5": (1000, 0), "h6": (0, 350), "h7": (0, 1000)},
    CRASH_S[3]: {"h4": (250, 0), "h2": (0, 250), "h3": (0, 250)},
}
CRASH_FILLS = [(CRASH_S[0], 2, 3, 11, 500, 5000), (CRASH_S[0], 6, 3, 12, 400, 4100), (CRASH_S[0], 2, 4, 13, 300, 2999),
               (CRASH_S[1], 2, 3, 14, 200, 2000), (CRASH_S[1], 2, 7, 15, 200, 2000),
               (CRASH_S[2], 5, 6, 16, 600, 6000), (CRASH_S[2], 5, 7, 17, 500, 5000),
               (CRASH_S[3], 4, 2, 18, 200, 1000), (CRASH_S[3], 4, 3, 19, 200, 1000)]


async def worker(db: str, url: str, point: str, nth: int) -> None:
    """A settlement process that kills itself (SIGKILL) at the ``nth`` time it reaches ``point``."""
    hits = Counter[str]()

    def fault(p: str) -> None:
        hits[p] += 1
        if p == point and hits[p] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    backend = BundledBackend(url, chain_id=kit.CHAIN_ID, verifying_contract=kit.CONTRACT, timeout=3)
    conn = open_gateway_db(db)
    index = ChainFillIndex(conn, backend.name, backend.domain, directory=DIRECTORY)
    async with OutboxChainClient(backend, Outbox(db, backend.name), StaticKeyring([kit.key(kit.COMPLEX)]),
                                 config=CONFIG) as c:
        st = Settler(conn, c, kit.addr(kit.COMPLEX), [index], SettlementConfig(GRID, grace_s=60, wait_final_s=20),
                     directory=DIRECTORY, fault=fault)
        while True:
            await st.run_once()
            if not st.pending():
                break


def test_kill_9_of_the_settlement_process_at_any_moment_leaves_every_interval_settled_exactly_once(tmp_path):
    async def go() -> None:
        db = tmp_path / "gw.db"
        setup_db(db, CRASH_ENERGY)
        key = tmp_path / "complex.key"
        from gateway.cli.validator import write_key
        write_key(key, kit.key(kit.COMPLEX).secret)
        households = tmp_path / "households.json"
        households.write_text(json.dumps({h: "0x" + kit.addr(i).hex() for i, h in HOUSES.items()}))
        async with real_node(tmp_path) as (g, url):
            rpc = JsonRpcClient(url, timeout=5)
            async with client(tmp_path / "takers.db", url, g) as takers:
                fids = await make_fills(takers, g, CRASH_FILLS)
            before = await balances(rpc)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}

            async def run(*argv: str, kill_after: float | None = None) -> int:
                p = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.PIPE)
                if kill_after is not None:
                    try:
                        await asyncio.wait_for(p.wait(), kill_after)
                    except asyncio.TimeoutError:
                        p.kill()  # kill -9 at a random moment
                rc = await p.wait()
                return rc

            me = [sys.executable, "-m", "tests.market.test_settlement_e2e", "worker", str(db), url]
            # deaths at chosen points: after planning (before submit), after submit (before final), after final
            # (before recording); each restart carries on from what the last one left
            for point, nth in (("planned", 2), ("submitted", 1), ("final_seen", 1), ("planned", 1)):
                assert await run(*me, point, str(nth)) == -signal.SIGKILL
            # deaths at random moments of `metanoia settle run`
            rnd = random.Random(os.environ.get("SETTLE_SEED", "7"))
            cli = [sys.executable, "-m", "gateway.cli", "settle", "run", "--db", str(db), "--grid", GRID, "--rpc", url,
                   "--authority-key", str(key), "--households", str(households), "--grace", "60", "--every", "0.1"]
            for _ in range(2):
                await run(*cli, kill_after=rnd.uniform(0.8, 2.0))
            assert await run(*me, "none", "0") == 0  # the last restart finishes
            # every interval settled exactly once on the chain: one settle tx per interval, each fill in one entry
            from hil.market_rig import settlements_on_chain
            per_interval, per_fill = await settlements_on_chain(rpc)
            assert per_interval == Counter({s: 1 for s in CRASH_S})
            assert per_fill == Counter({f: 1 for f in fids})
            # and the figures are the rule's, recorded once, money conserved
            from gateway.market.settlement_rule import FillTerms, settle
            conn = open_gateway_db(db)
            want = dict(before)
            for s in CRASH_S:
                terms = [(FillTerms(f, HOUSES[mk], HOUSES[tk], wh, noia), mk, tk) for f, (fs, mk, tk, _, wh, noia)
                         in zip(fids, CRASH_FILLS) if fs == s]
                meters = CRASH_ENERGY[s]
                allocs = {a.fill_id: a for a in settle([t for t, _, _ in terms], {h: v[0] for h, v in meters.items()},
                                                       {h: v[1] for h, v in meters.items()})}
                for t, mk, tk in terms:
                    a = allocs[t.fill_id]
                    e = await escrow(rpc, t.fill_id)
                    assert (e["status"], e["deliveredWh"], int(e["payment"]), int(e["refund"])) == (
                        "settled", a.delivered_wh, a.payment, a.refund)
                    want[mk] += a.payment
                    want[tk] += a.refund
                (state, n, esc, pay, ref), = conn.execute(
                    "SELECT state, fills, escrow, payment, refund FROM settlement_intervals WHERE grid = ? AND start = ?",
                    (GRID, s)).fetchall()
                assert state == "settled" and n == len(terms) and int(pay) + int(ref) == int(esc)
                assert conn.execute("SELECT COUNT(*) FROM settlement_batches WHERE grid = ? AND start = ?",
                                    (GRID, s)).fetchone()[0] == 1
            assert await balances(rpc) == want
            # the CLI: `settle interval START` again is idempotent (exit 0, nothing new); `settle status` lists all
            p = await asyncio.create_subprocess_exec(
                *cli[:4], "interval", str(CRASH_S[0]), *cli[5:-2], "--json", cwd=ROOT, env=env,
                stdout=asyncio.subprocess.PIPE)
            out, _ = await p.communicate()
            doc = json.loads(out.decode().strip().splitlines()[-1])
            assert p.returncode == 0 and doc["state"] == "settled" and len(doc["batches"]) == 1
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "settle", "status", "--db", str(db), "--grid", GRID, "--json",
                cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE)
            out, _ = await p.communicate()
            doc = json.loads(out.decode().strip().splitlines()[-1])
            assert doc["counts"] == {"settled": len(CRASH_S)}
            assert conn.execute("SELECT COUNT(*) FROM chain_outbox WHERE key LIKE 'settle:%'").fetchone()[0] == len(CRASH_S)
            conn.close()
            await rpc.aclose()
    asyncio.run(go())


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
