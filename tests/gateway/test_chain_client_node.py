"""Chain client against the REAL bundled validator: exactly once through the outbox, over real loopback HTTP.

The node is the validator itself (gateway/validator/node.py, single authority, short blocks): in-process
(``Node`` on the test's loop, JSON-RPC over a real TCP socket) or, where it must die, a ``metanoia
validator run`` process killed with SIGKILL (tests/gateway/validator/netkit.py's ``Proc``). The client is
``OutboxChainClient`` + ``BundledBackend``; where the client must die it runs in a process of its own.
"Applied once" is read from the chain over JSON-RPC: the tx's hash in exactly one block
(``chain_getBlockByNumber`` from 1 to the head), balances moved once, the sender's nonce advanced once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.chain_client import (FINAL, REJECTED, SIGNED, SUBMITTED, BundledBackend, ClientConfig, Intent,
                                  IntentConflict, NodeBusy, NoKey, Outbox, OutboxChainClient, StaticKeyring, SubmissionId,
                                  TxInvalid, TxRejected)
from gateway.chain_client.client import filler_intent
from gateway.chain_client.rpc import JsonRpcClient
from gateway.validator.crypto import keccak256
from gateway.validator.genesis import Genesis, load_genesis, parse_genesis
from gateway.validator.node import Node
from gateway.validator.storage import SqliteStore
from gateway.validator.tx import Fill, SettleBatch, Settlement
from tests.gateway.validator import kit
from tests.gateway.validator.netkit import START, Proc, free_ports, genesis_doc, node_configs

BT = 0.2                        # block time (s)
ROOT = Path(__file__).resolve().parents[2]
KEYS = StaticKeyring([kit.key(i) for i in range(8)])
CONFIG = ClientConfig(poll_interval=0.05, resubmit_after=2.0, backoff_initial=0.05, backoff_max=0.5)
FAR = 2**40                     # an order expiry far in the future (the genesis is "now")


def make_client(db: str | Path, url: str, genesis: Genesis,
                fault: Callable[[str], None] | None = None) -> OutboxChainClient:
    backend = BundledBackend.from_genesis(url, genesis, timeout=3)
    return OutboxChainClient(backend, Outbox(db, backend.name), KEYS, config=CONFIG, fault=fault)


def pay(key: str, sender: int, to: int, amount: int) -> Intent:
    return Intent(key, kit.addr(sender), kit.transfer(to, amount))


async def dispose(c: OutboxChainClient) -> None:
    await c.aclose()
    c.outbox.close()


class Chain:
    """Reads the real chain over JSON-RPC (what a user of the node can see)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.rpc = JsonRpcClient(url, timeout=5)

    async def applied(self) -> Counter[bytes]:
        """How many blocks hold each tx hash, over the whole chain."""
        seen: Counter[bytes] = Counter()
        for n in range(1, await self.rpc.call("chain_blockNumber") + 1):
            blk = await self.rpc.call("chain_getBlockByNumber", n)
            seen.update(bytes.fromhex(h[2:]) for h in blk["transactions"])
        return seen

    async def balance(self, i: int) -> int:
        return int(await self.rpc.call("chain_getBalance", "0x" + kit.addr(i).hex()))

    async def nonce(self, i: int) -> int:
        return int(await self.rpc.call("chain_getNonce", "0x" + kit.addr(i).hex()))

    async def status(self, h: bytes) -> dict:  # type: ignore[type-arg]
        return await self.rpc.call("chain_getTransactionStatus", "0x" + h.hex())  # type: ignore[no-any-return]

    async def up(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                await self.rpc.call("chain_status")
                return
            except Exception:
                await asyncio.sleep(0.1)
        raise AssertionError(f"node at {self.url} did not come up")

    async def aclose(self) -> None:
        await self.rpc.aclose()


@asynccontextmanager
async def real_node(tmp: Path) -> AsyncIterator[tuple[Node, Genesis, Chain]]:
    """One in-process validator (single authority, BT-second blocks) serving JSON-RPC on loopback."""
    g = parse_genesis(genesis_doc(1, BT))
    node = Node(node_configs(tmp, g, 1)[0])
    await node.start()
    assert node.rpc_address is not None
    chain = Chain(f"http://{node.rpc_address[0]}:{node.rpc_address[1]}/")
    try:
        yield node, g, chain
    finally:
        await chain.aclose()
        await node.stop()


# ---- submit -> final ----------------------------------------------------------------------------

def test_submit_to_final_through_the_outbox_and_queries_read_the_real_chain(tmp_path):
    async def go() -> None:
        async with real_node(tmp_path) as (node, g, chain):
            async with make_client(tmp_path / "gw.db", chain.url, g) as c:
                sid = await c.submit(pay("pay:1", 2, 3, 1234))
                r = await c.wait_final(sid, 10)
                assert r.ok and r.status == FINAL and r.nonce == 0 and r.reason is None
                assert r.height is not None and 1 <= r.height <= await c.finalized_number() <= await c.block_number()
                rc = await chain.rpc.call("chain_getTransactionReceipt", "0x" + r.tx_hash.hex())
                assert rc["blockNumber"] == r.height and rc["status"] == "final"
                assert await c.balance(kit.addr(3)) == START + 1234 and await c.balance(kit.addr(2)) == START - 1234
                assert await c.nonce(kit.addr(2)) == 1
                assert (await c.backend.wait_final_on_node(r.tx_hash, 120)).status == "final"  # clamped to 60 s

                # a fill (escrow read back field by field), then its settlement by the complex authority
                o = kit.order(3, nonce=77, noia=5000, wh=800, expiry=FAR)
                fid = o.digest(g.params().domain)
                rf = await c.wait_final(await c.submit(Intent("fill:" + fid.hex(), kit.addr(4), kit.fill(o))), 10)
                assert rf.ok and rf.fill_id == fid
                esc = await c.escrow(fid)
                assert esc is not None
                assert (esc.maker, esc.taker, esc.noia, esc.wh, esc.interval_start, esc.grid) == (
                    kit.addr(3), kit.addr(4), 5000, 800, kit.GENESIS_TIME, kit.GRID)
                batch = SettleBatch(kit.GRID, kit.GENESIS_TIME, b"\x42" * 32, (Settlement(fid, 600, 3750, 1250),))
                rs = await c.wait_final(await c.submit(Intent("settle:1", kit.addr(kit.COMPLEX), batch)), 10)
                assert rs.ok
                assert await c.escrow(fid) is None      # settled: the node answers {"status": "settled", ...}
                assert await chain.balance(3) == START + 1234 + 3750
                assert await chain.balance(4) == START - 5000 + 1250
                applied = await chain.applied()
                assert [applied[x.tx_hash] for x in (r, rf, rs)] == [1, 1, 1]

    asyncio.run(go())


# ---- idempotency --------------------------------------------------------------------------------

def test_idempotent_submits_are_one_tx_applied_once(tmp_path):
    async def go() -> None:
        async with real_node(tmp_path) as (node, g, chain):
            async with make_client(tmp_path / "gw.db", chain.url, g) as c:
                intent = pay("pay:same", 2, 3, 10)
                ids = await asyncio.gather(*(c.submit(intent) for _ in range(5)))
                assert set(ids) == {"pay:same"}
                r = await c.wait_final(ids[0], 10)
                assert await c.submit(intent) == "pay:same"          # after final: same id, nothing new
                row = c.outbox.get("pay:same")
                assert len(c.outbox.all()) == 1 and row.tx_hash == r.tx_hash
                # the node's side of idempotency: the same bytes again, alone or in a batch, are its hash
                assert row.raw is not None
                assert await c.backend.send(row.raw) == r.tx_hash
                stale = kit.raw_tx(2, 0, kit.transfer(5, 1))         # another tx at the used nonce
                res = await c.backend.send_many([row.raw, stale])
                assert res[0] == r.tx_hash and isinstance(res[1], TxRejected) and res[1].reason == "bad_nonce"
                await asyncio.sleep(3 * BT)
                assert (await chain.applied())[r.tx_hash] == 1
                assert await chain.balance(3) == START + 10 and await chain.nonce(2) == 1
                with pytest.raises(IntentConflict):
                    await c.submit(pay("pay:same", 2, 3, 11))
                with pytest.raises(NoKey):                           # refused before anything is recorded
                    await c.submit(pay("pay:nokey", 30, 3, 1))
                assert c.outbox.find("pay:nokey") is None

    asyncio.run(go())


# ---- the client killed --------------------------------------------------------------------------

KILLED_CLIENT = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[5])
from gateway.validator.genesis import load_genesis
from tests.gateway.test_chain_client_node import make_client, pay

db, url, genesis, point = sys.argv[1], sys.argv[2], load_genesis(sys.argv[3]), sys.argv[4]
seen = {"n": 0}

def fault(where):
    if where == point:
        seen["n"] += 1
        if seen["n"] == 2:          # the second intent, at this step
            print("AT", where, flush=True)
            time.sleep(60)          # SIGKILL arrives here

async def main():
    c = make_client(db, url, genesis, fault=fault)
    for i in range(3):
        await c.submit(pay(f"pay:{i}", 2, 5, 100 + i))
    print("DONE", flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("point, state", [("signed", SIGNED),       # signed and stored, never sent
                                          ("sent", SIGNED),         # the node has it, the outbox does not know
                                          ("submitted", SUBMITTED)])  # submitted, not yet seen final
def test_sigkill_of_the_client_then_restart_applies_exactly_once_on_the_real_chain(tmp_path, point, state):
    async def go() -> None:
        db = tmp_path / "gw.db"
        async with real_node(tmp_path) as (node, g, chain):
            gpath = tmp_path / "genesis.json"
            gpath.write_text(json.dumps(g.to_json()))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", KILLED_CLIENT, str(db), chain.url, str(gpath), point, str(ROOT),
                stdout=asyncio.subprocess.PIPE, cwd=ROOT)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.decode().split() == ["AT", point]
            os.kill(proc.pid, signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            raw = sqlite3.connect(db)
            states = dict(raw.execute("SELECT key, state FROM chain_outbox"))
            raw.close()
            assert states == {"pay:0": SUBMITTED, "pay:1": state}
            await asyncio.sleep(3 * BT)      # the node may make pay:1 final meanwhile: the restart must not double it
            c = make_client(db, chain.url, g)
            for i in range(3):               # the restarted gateway submits its intents again
                await c.submit(pay(f"pay:{i}", 2, 5, 100 + i))
            await c.run_until_settled(15)
            rows = c.outbox.all()
            assert [r.state for r in rows] == [FINAL] * 3 and [r.nonce for r in rows] == [0, 1, 2]
            applied = await chain.applied()
            assert [applied[r.tx_hash] for r in rows] == [1, 1, 1] and sum(applied.values()) == 3
            assert await chain.balance(5) == START + 303 and await chain.nonce(2) == 3
            await dispose(c)

    asyncio.run(go())


# ---- the validator killed -----------------------------------------------------------------------

def test_validator_sigkilled_mid_flight_then_restarted_outbox_resubmits_nothing_doubles(tmp_path):
    """``metanoia validator run`` killed with SIGKILL while txs sit in its mempool, more submitted while it is
    down, then restarted on the same data: what was mid-flight and what was queued while it was down all
    apply exactly once."""
    async def go() -> None:
        bt = 1.0
        gpath = tmp_path / "genesis.json"
        gpath.write_text(json.dumps(genesis_doc(1, bt)))
        g = load_genesis(gpath)
        p2p, rpc_port = free_ports(2)
        proc = Proc(tmp_path, 0, gpath, ("127.0.0.1", p2p), [], rpc_port, bt)
        proc.start()
        chain = Chain(proc.url)
        try:
            await chain.up()
            async with make_client(tmp_path / "gw.db", proc.url, g) as c:
                first = [await c.submit(pay(f"pay:a{i}", 2 + i % 2, 6, 10 + i)) for i in range(8)]
                proc.kill()                                   # SIGKILL: the mempool is gone
                assert {c.status(s).state for s in first} <= {SUBMITTED, FINAL}
                store = SqliteStore(tmp_path / "node0" / "chain.db", g)
                survived = store.head.height                  # what the killed node had committed
                store.close()
                later = [await c.submit(pay(f"pay:b{i}", 2 + i % 2, 6, 100 + i)) for i in range(4)]
                assert {c.status(s).state for s in later} == {SIGNED}   # nonces reserved, nothing reached a node
                await asyncio.sleep(0.5)
                assert c.counters.get("backoff", 0) >= 1
                proc.start()
                await chain.up()
                rs = [await c.wait_final(s, 20) for s in first + later]
                assert all(r.ok for r in rs), rs
                for s in (2, 3):
                    assert sorted(r.nonce for r in rs if r.sender == kit.addr(s)) == list(range(6))
                    assert await chain.nonce(s) == 6
                applied = await chain.applied()
                assert [applied[r.tx_hash] for r in rs] == [1] * 12 and sum(applied.values()) == 12
                assert await chain.balance(6) == START + sum(10 + i for i in range(8)) + sum(100 + i for i in range(4))
                lost = [r for r in rs[:8] if r.height is not None and r.height > survived]
                assert lost, "every tx was final before the kill: nothing was mid-flight"
                # Who carried them across the kill: the node's durable intake log (it reloads what
                # it had accepted) and/or the outbox resending what the node calls unknown. Either
                # way each applied exactly once (checked above).
        finally:
            proc.stop()
            await chain.aclose()

    asyncio.run(go())


# ---- rejections ---------------------------------------------------------------------------------

def test_overspend_rejected_with_its_reason_and_the_nonce_filled(tmp_path):
    async def go() -> None:
        async with real_node(tmp_path) as (node, g, chain):
            async with make_client(tmp_path / "gw.db", chain.url, g) as c:
                bad = await c.submit(pay("pay:too-much", 4, 3, START + 1))
                good = await c.submit(pay("pay:fine", 4, 3, 50))          # nonce 1: waits behind the gap
                rb = await c.wait_final(bad, 10)
                assert (rb.status, rb.reason, rb.nonce, rb.height) == (REJECTED, "insufficient_balance", 0, None)
                assert (await chain.status(rb.tx_hash)) == {"status": "rejected", "height": None,
                                                            "reason": "insufficient_balance"}
                rg = await c.wait_final(good, 10)
                assert rg.ok and rg.nonce == 1
                filler = c.status(SubmissionId(filler_intent(kit.addr(4), 0).key))
                assert (filler.kind, filler.state, filler.nonce) == ("nonce_fill", FINAL, 0)
                # a refusal at intake (-32000, data.reason): the maker's signature is not the maker's
                forged = Fill(kit.signed(kit.order(2, nonce=5, expiry=FAR), signer=6))
                rf = await c.wait_final(await c.submit(Intent("fill:forged", kit.addr(4), forged)), 10)
                assert (rf.status, rf.reason, rf.nonce) == (REJECTED, "order_bad_signature", 2)
                r3 = await c.wait_final(await c.submit(pay("pay:after", 4, 3, 1)), 10)
                assert r3.ok and r3.nonce == 3
                applied = await chain.applied()
                assert applied[rb.tx_hash] == 0 and applied[rf.tx_hash] == 0 and applied[rg.tx_hash] == 1
                assert await chain.nonce(4) == 4 and await chain.balance(4) == START - 51
                assert await chain.balance(3) == START + 51

    asyncio.run(go())


def test_node_error_objects_map_to_the_clients_exceptions(tmp_path):
    """The node's codes and reasons, as the client sees them (the double must speak the same)."""
    async def go() -> None:
        async with real_node(tmp_path) as (node, g, chain):
            b = BundledBackend.from_genesis(chain.url, g)
            wrong_chain = kit.raw_tx(2, 0, kit.transfer(3, 5), chain_id=7)
            with pytest.raises(TxInvalid) as e1:
                await b.send(wrong_chain)
            assert (e1.value.code, e1.value.reason) == (-32000, "wrong_chain_id")
            h = await b.send(kit.raw_tx(2, 0, kit.transfer(3, 5)))
            with pytest.raises(NodeBusy) as e2:                      # another pending tx holds nonce 0
                await b.send(kit.raw_tx(2, 0, kit.transfer(3, 6)))
            assert e2.value.reason == "nonce_in_use"
            res = await b.send_many([kit.raw_tx(2, 0, kit.transfer(3, 5)), b"\x01" * 10, wrong_chain])
            assert res[0] == h and isinstance(res[1], TxInvalid) and res[1].reason == "truncated"
            assert isinstance(res[2], TxInvalid) and res[2].reason == "wrong_chain_id"
            st = await b.wait_final_on_node(h, 5)
            assert st.status == "final" and st.height is not None
            assert (await b.tx_status(b"\x11" * 32)).status == "unknown"
            assert await b.escrow(b"\x00" * 32) is None
            assert keccak256(kit.raw_tx(2, 0, kit.transfer(3, 5))) == h
            await b.aclose()

    asyncio.run(go())
