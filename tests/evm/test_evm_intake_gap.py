"""A tx the EVM node refuses at intake, on a real anvil: its nonce is never used, so the outbox fills it and the
account's later intents, already signed with higher nonces, go through; each applied once, across a kill -9
at every step of that repair.

The refusal used is the realistic one: a settlement batch whose gas limit (``GAS`` per entry) is above the
block gas limit; anvil says "intrinsic gas too high" (``TxInvalid`` / ``gas_limit_exceeded``) and queues the
later nonces behind the gap. A revert in a block, by contrast, is mined and uses its nonce: no filler
(tests/evm/test_evm_backend.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from gateway.chain_client import FINAL, REJECTED, SIGNED, Intent, OutboxChainClient, SubmissionId
from gateway.chain_client.client import filler_intent
from gateway.chain_client.evm import EvmBackend
from gateway.chain_client.evm_codec import GAS
from gateway.validator.crypto import keccak256
from gateway.validator.tx import SettleBatch, Settlement
from tests.evm.evm_kit import KEYS, EvmChain, dispose, evm_chain, json_rpc_server, make_client
from tests.gateway.validator import kit

ROOT = Path(__file__).resolve().parents[2]
BLOCK_GAS_LIMIT = 30_000_000      # anvil's default
PAYEE = 8                         # receives every payment (no sender here pays itself)


def oversized_batch(sender: int) -> Intent:
    """A settlement with one entry too many for a block: refused at intake whoever sends it."""
    n = (BLOCK_GAS_LIMIT - GAS["settle"]) // GAS["settle_entry"] + 1
    entries = tuple(Settlement(i.to_bytes(32, "big"), 1, 0, 0) for i in range(1, n + 1))
    return Intent(f"settle:huge:{sender}", kit.addr(sender), SettleBatch(kit.GRID, 0, b"\x01" * 32, entries))


def script(sender: int) -> list[Intent]:
    return [oversized_batch(sender), Intent(f"pay:{sender}:a", kit.addr(sender), kit.transfer(PAYEE, 11)),
            Intent(f"pay:{sender}:b", kit.addr(sender), kit.transfer(PAYEE, 13))]


async def sign_ahead(c: OutboxChainClient, intents: list[Intent]) -> None:
    """Record and sign without sending (a gateway that signed while the node was away): the follower then
    sends all of them at once, the later nonces before the refusal of the first is known."""
    for i in intents:
        c.outbox.record(i)
        if c.outbox.next_nonce(i.sender) is None:
            c.outbox.ensure_account(i.sender, await c.backend.nonce(i.sender))
        key = KEYS.key_for(i.sender)
        c.outbox.sign(i.key, lambda n, i=i: c.backend.build(i, n, key))  # type: ignore[misc]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvmChain]:
    with evm_chain(tmp_path_factory.mktemp("evm")) as c:
        yield c


async def settled_nonce(b: EvmBackend, sender: int) -> int:
    """The account's nonce once nothing of it is pending or unfinal (a fresh outbox starts from it)."""
    for _ in range(200):
        n = await b.pending_nonce(kit.addr(sender))
        if await b.nonce(kit.addr(sender)) == n:
            return n
        await asyncio.sleep(0.1)
    raise AssertionError("the account's txs did not become final")


async def check_outcome(c: OutboxChainClient, b: EvmBackend, sender: int, n0: int, paid0: int) -> None:
    """The batch rejected with the node's reason, a filler final at its nonce, both payments final after it,
    and the chain: the account's nonce moved by exactly three, the payee paid once each."""
    huge, a, bb = (c.status(SubmissionId(i.key)) for i in script(sender))
    assert (huge.state, huge.reason, huge.nonce) == (REJECTED, "gas_limit_exceeded", n0)
    filler = c.status(SubmissionId(filler_intent(kit.addr(sender), n0).key))
    assert (filler.kind, filler.state) == ("nonce_fill", FINAL)
    assert [(a.state, a.nonce), (bb.state, bb.nonce)] == [(FINAL, n0 + 1), (FINAL, n0 + 2)]
    assert (await b.tx_status(huge.tx_hash)).status == "unknown"    # type: ignore[arg-type]
    assert await b.pending_nonce(kit.addr(sender)) == n0 + 3
    assert await b.balance(kit.addr(PAYEE)) == paid0 + 24


def test_an_intake_refusal_is_filled_and_the_signed_ahead_intents_go_through(chain: EvmChain, tmp_path: Path) -> None:
    async def go() -> None:
        b = chain.backend()
        n0, paid0 = await settled_nonce(b, 6), await b.balance(kit.addr(PAYEE))
        raw = b.build(oversized_batch(6), n0, kit.key(6)).raw     # the gap, shown on the node without the outbox
        with pytest.raises(Exception) as e:
            await b.send(raw)
        assert getattr(e.value, "reason", None) == "gas_limit_exceeded"
        later = b.build(script(6)[1], n0 + 1, kit.key(6))
        await b.send(later.raw)
        await asyncio.sleep(1.0)                                  # five blocks: it waits for nonce n0
        assert (await b.tx_status(later.tx_hash)).status == "pending"
        c = make_client(tmp_path / "gw.db", chain.url, chain.deployment)
        await sign_ahead(c, script(6))
        await c.run_until_settled(30)
        await check_outcome(c, b, 6, n0, paid0)
        assert c.counters.get("refused_gas_limit_exceeded") == 1 and "refused_but_applied" not in c.counters
        await dispose(c)
        await b.aclose()

    asyncio.run(go())


@asynccontextmanager
async def geth_ordered(anvil_url: str) -> AsyncIterator[str]:
    """anvil behind a proxy that refuses a send as geth does: geth checks a tx's gas limit against the block's
    before its nonce, so the resend of a mined tx whose gas limit the block no longer holds is refused
    "exceeds block gas limit" (anvil answers "nonce too low"). Every other call goes to anvil unchanged."""
    async def handle(req: web.Request) -> web.Response:
        body = await req.json()
        async with ClientSession() as s:
            async def ask(method: str, params: list[Any]) -> Any:
                async with s.post(anvil_url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                   "params": params}) as r:
                    return (await r.json()).get("result")
            if body.get("method") == "eth_sendRawTransaction":
                h = "0x" + keccak256(bytes.fromhex(body["params"][0][2:])).hex()
                block = await ask("eth_getBlockByNumber", ["latest", False])
                mined = await ask("eth_getTransactionByHash", [h])
                if (mined is not None and mined.get("blockNumber") is not None
                        and int(mined["gas"], 16) > int(block["gasLimit"], 16)):
                    return web.json_response({"jsonrpc": "2.0", "id": body["id"],
                                              "error": {"code": -32000, "message": "exceeds block gas limit"}})
            async with s.post(anvil_url, json=body) as r:
                return web.Response(text=await r.text(), content_type="application/json")

    async with json_rpc_server(handle) as url:
        yield url


def test_a_refused_resend_of_a_tx_already_mined_is_followed_not_rejected(chain: EvmChain, tmp_path: Path) -> None:
    """The gateway crashed after the node took a transfer and before the outbox knew; meanwhile the block gas
    limit fell under the transfer's gas limit. The restart resends the bytes and the node refuses them as too
    big for a block, but the tx is mined: the outbox follows it to final and fills nothing (a filler at a used
    nonce would report a wrong "rejected" until the chain proved otherwise). A second one, mined and reverted,
    is recorded with the revert's reason, not the resend's refusal."""
    async def go() -> None:
        b = chain.backend()
        n0, paid0 = await settled_nonce(b, 7), await b.balance(kit.addr(PAYEE))

        def crash(where: str) -> None:
            if where == "sent":
                raise RuntimeError("crash after the node took the tx")

        c = make_client(tmp_path / "gw.db", chain.url, chain.deployment, fault=crash)
        it = Intent("pay:7", kit.addr(7), kit.transfer(PAYEE, 17))
        too_much = Intent("pay:7:too-much", kit.addr(7), kit.transfer(PAYEE, 10**30))   # mined, reverts
        for i in (it, too_much):
            with pytest.raises(RuntimeError):
                await c.submit(i)
            assert c.status(SubmissionId(i.key)).state == SIGNED
        await dispose(c)
        await settled_nonce(b, 7)                              # mined and final
        chain.node.rpc("evm_setBlockGasLimit", [hex(GAS["transfer"] - 1)])
        try:
            while int(chain.node.rpc("eth_getBlockByNumber", ["latest", False])["gasLimit"], 16) >= GAS["transfer"]:
                await asyncio.sleep(0.1)                       # the next block has the lower limit
            async with geth_ordered(chain.url) as url:
                c = make_client(tmp_path / "gw.db", url, chain.deployment)
                await c.run_until_settled(30)
                st, sr = c.status(SubmissionId(it.key)), c.status(SubmissionId(too_much.key))
                assert (st.state, st.nonce) == (FINAL, n0)
                assert (sr.state, sr.reason, sr.nonce) == (REJECTED, "insufficient_balance", n0 + 1)  # the revert's
                assert c.counters.get("refused_gas_limit_exceeded") == 2
                assert c.counters.get("refused_but_applied") == 1
                assert [r.key for r in c.outbox.all()] == [it.key, too_much.key]          # no filler
                await dispose(c)
        finally:
            chain.node.rpc("evm_setBlockGasLimit", [hex(BLOCK_GAS_LIMIT)])
        assert await b.balance(kit.addr(PAYEE)) == paid0 + 17 and await b.pending_nonce(kit.addr(7)) == n0 + 2
        await b.aclose()

    asyncio.run(go())


CHILD = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from gateway.evm.deploy import read_record
from tests.evm.evm_kit import make_client
from tests.evm.test_evm_intake_gap import script, sign_ahead

root, db, url, record, sender, point, nth = sys.argv[1:8]
seen = {"n": 0}

def fault(where):
    if where == point:
        seen["n"] += 1
        if seen["n"] == int(nth):
            print("AT", where, flush=True)
            time.sleep(120)      # SIGKILL arrives here

async def main():
    c = make_client(db, url, read_record(record), fault=fault if point != "-" else None)
    if point != "-":
        await sign_ahead(c, script(int(sender)))
    await c.run_until_settled(60)
    print("DONE", flush=True)

asyncio.run(main())
"""

# (kill point, its nth occurrence, sender): the refusal seen but not recorded; the rejection and its filler
# recorded (the filler not signed); the filler signed and stored but never sent; the filler sent (after the
# two payments), not yet recorded as submitted.
KILLS = [("refused", 1, 3), ("rejected", 1, 4), ("signed", 1, 5), ("sent", 3, 2)]


async def run_child(chain: EvmChain, db: Path, sender: int, point: str, nth: int = 1) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(ROOT), str(db), chain.url, str(chain.record), str(sender), point,
        str(nth), stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode().strip()
    if line.startswith("AT"):
        os.kill(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    else:
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    return line


@pytest.mark.parametrize("point, nth, sender", KILLS, ids=[p for p, _, _ in KILLS])
def test_kill_9_during_the_gap_repair_then_restart_applies_every_intent_once(chain: EvmChain, tmp_path: Path,
                                                                            point: str, nth: int, sender: int) -> None:
    async def go() -> None:
        b = chain.backend()
        n0, paid0 = await settled_nonce(b, sender), await b.balance(kit.addr(PAYEE))
        db = tmp_path / "gw.db"
        assert await run_child(chain, db, sender, point, nth) == f"AT {point}"
        raw = sqlite3.connect(db)
        states = dict(raw.execute("SELECT key, state FROM chain_outbox"))
        raw.close()
        huge, fill_key = oversized_batch(sender).key, filler_intent(kit.addr(sender), n0).key
        if point == "refused":            # the verdict died with the process: the restart meets it again
            assert states[huge] == SIGNED and fill_key not in states
        else:                              # the rejection and the filler were one transaction
            assert states[huge] == REJECTED and states[fill_key] == ("pending" if point == "rejected" else SIGNED)
        assert await run_child(chain, db, sender, "-") == "DONE"
        c = make_client(db, chain.url, chain.deployment)
        await check_outcome(c, b, sender, n0, paid0)
        await dispose(c)
        await b.aclose()

    asyncio.run(go())
