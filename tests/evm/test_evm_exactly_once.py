"""Exactly once across a kill -9 of the gateway, on the EVM backend and a real anvil.

A child process submits a scripted set of intents (transfers, two fills, a cancel, then the
settlement of both fills with partial delivery) through ``OutboxChainClient`` + ``EvmBackend``.
Its fault hook stops it at a chosen step (signed and stored but never sent; the node has the tx but
the outbox does not know; submitted; final seen but not recorded) and the test SIGKILLs it there.
A second process (the restarted gateway) submits every intent again and runs until the outbox is
settled. Then the chain itself is read: balances, escrows and order states equal a model of each
intent applied once, and every sender's account nonce moved by exactly its number of intents.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.chain_client import SIGNED, SUBMITTED, Intent
from gateway.chain_client.evm import EvmBackend
from gateway.evm.deploy import read_record
from gateway.validator.crypto import to_checksum
from gateway.validator.order import sign_order
from gateway.validator.tx import Cancel, Fill, SettleBatch, Settlement
from tests.evm.evm_kit import EvmChain, evm_chain
from tests.gateway.validator import kit

ROOT = Path(__file__).resolve().parents[2]
CASES = [("signed", 2), ("sent", 1), ("sent", 6), ("submitted", 4), ("final_seen", 3)]


def script(backend: EvmBackend, case: int, start: int, expiry: int) -> tuple[list[Intent], Intent]:
    """The intents of one case (unique keys and order nonces per case), and the settlement that follows."""
    n = 1000 * (case + 1)

    def fill(maker: int, taker: int, nonce: int, noia: int, wh: int) -> Intent:
        o = kit.order(maker, n + nonce, noia=noia, wh=wh, expiry=expiry, interval_start=start)
        return Intent(f"c{case}:fill:{maker}:{nonce}", kit.addr(taker), Fill(sign_order(o, backend.domain,
                                                                                          kit.key(maker))))

    intents = [Intent(f"c{case}:pay:0", kit.addr(2), kit.transfer(3, 100 + case)),
               fill(3, 4, 1, 5000, 800),
               Intent(f"c{case}:cancel", kit.addr(3), Cancel(n + 2)),
               fill(5, 2, 3, 2000, 300),
               Intent(f"c{case}:pay:1", kit.addr(4), kit.transfer(5, 50))]
    f1, f2 = (backend.fill_id(intents[i].action) for i in (1, 3))
    assert f1 is not None and f2 is not None
    entries = sorted([Settlement(f1, 600, 3750, 1250), Settlement(f2, 300, 2000, 0)], key=lambda e: e.fill_id)
    settle = Intent(f"c{case}:settle", kit.addr(kit.COMPLEX),
                    SettleBatch(kit.GRID, start, bytes([case + 1]) * 32, tuple(entries)))
    return intents, settle


CHILD = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from gateway.evm.deploy import read_record
from tests.evm.evm_kit import make_client
from tests.evm.test_evm_exactly_once import script

root, db, url, record, case, start, expiry, point, nth = sys.argv[1:10]
seen = {"n": 0}

def fault(where):
    if where == point:
        seen["n"] += 1
        if seen["n"] == int(nth):
            print("AT", where, flush=True)
            time.sleep(120)          # SIGKILL arrives here

async def main():
    dep = read_record(record)
    c = make_client(db, url, dep, fault=fault if point != "-" else None)
    async with c:
        intents, settle = script(c.backend, int(case), int(start), int(expiry))
        ids = [await c.submit(i) for i in intents]
        for i in ids:
            await c.wait_final(i, 60)
        await c.wait_final(await c.submit(settle), 60)
    print("DONE", flush=True)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvmChain]:
    with evm_chain(tmp_path_factory.mktemp("evm")) as c:
        yield c


async def run_child(chain: EvmChain, db: Path, case: int, start: int, expiry: int, point: str, nth: int) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(ROOT), str(db), chain.url, str(chain.record), str(case), str(start),
        str(expiry), point, str(nth), stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode().strip()
    if line.startswith("AT"):
        os.kill(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    else:
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    return line


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{p}#{n}" for p, n in CASES])
def test_kill_9_of_the_gateway_then_restart_applies_every_intent_exactly_once(chain: EvmChain, tmp_path: Path,
                                                                                 case: int) -> None:
    point, nth = CASES[case]

    async def go() -> None:
        b = EvmBackend(chain.url, read_record(chain.record))
        people = [kit.addr(i) for i in (2, 3, 4, 5, kit.COMPLEX)]
        bal0 = {a: await b.balance(a) for a in people + [b.deployment.exchange]}
        nonce0 = {a: await b.pending_nonce(a) for a in people}
        now = chain.now()
        start, expiry = (now // kit.INTERVAL - 2 - case) * kit.INTERVAL, now + 3600   # an interval per case
        db = tmp_path / "gw.db"
        assert await run_child(chain, db, case, start, expiry, point, nth) == f"AT {point}"
        raw = sqlite3.connect(db)
        rows = raw.execute("SELECT key, state, tx_hash FROM chain_outbox ORDER BY seq").fetchall()
        raw.close()
        want = SIGNED if point in ("signed", "sent") else SUBMITTED
        caught = [(k, h) for k, st, h in rows if st == want]
        assert caught, rows                                   # the kill caught a row at that step
        if point == "sent":                                   # ... and the node has its tx already
            assert (await b.tx_status(bytes(caught[-1][1]))).status != "unknown"
        assert await run_child(chain, db, case, start, expiry, "-", 0) == "DONE"   # the restarted gateway

        intents, settle = script(b, case, start, expiry)
        c = case
        model = {kit.addr(2): -(100 + c) - 2000 + 0, kit.addr(3): (100 + c) + 3750, kit.addr(4): -5000 + 1250 - 50,
                 kit.addr(5): 50 + 2000, kit.addr(kit.COMPLEX): 0, b.deployment.exchange: 0}
        for a, delta in model.items():
            assert await b.balance(a) == bal0[a] + delta, to_checksum(a)
        sent_by = {a: sum(1 for i in intents + [settle] if i.sender == a) for a in people}
        for a in people:   # one tx per intent: a second application would need a second nonce
            assert await b.pending_nonce(a) == nonce0[a] + sent_by[a], to_checksum(a)
        for i in (1, 3):
            fid = b.fill_id(intents[i].action)
            assert fid is not None and await b.escrow(fid) is None
            rec = await b.fill_record(fid)
            assert rec is not None and rec.status == "settled"
        n = 1000 * (case + 1)
        assert [await b.order_status(kit.addr(m), n + k) for m, k in ((3, 1), (3, 2), (5, 3))] == [
            "filled", "cancelled", "filled"]
        assert await b.interval_root(kit.GRID, start) == bytes([case + 1]) * 32
        await b.aclose()

    asyncio.run(go())
