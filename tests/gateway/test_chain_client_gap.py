"""A refused tx's nonce on the REAL bundled validator: what the node refuses at intake, that a refusal (at
intake or at block building) leaves the nonce unused, and that the outbox fills it so the account's later
intents, already signed with higher nonces, go through, each applied once.

What the validator refuses at intake (gateway/validator/node.py ``_finish_intake``, mempool.py ``add``):
only decode-level reasons (bad or forged signatures, wrong chain id, malformed bytes), ``bad_nonce``
(below the committed nonce) and "not now" (``nonce_in_use``, ``mempool_full``, ``sender_limit``). State
rules (overspend, an expired order) are checked when a block is built: the tx is dropped with its reason
(status ``rejected``), its nonce unused too. A later nonce is accepted at intake and waits in the mempool
for the gap.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from gateway.chain_client import (FINAL, PENDING, REJECTED, SIGNED, BundledBackend, Intent, Outbox,
                                  OutboxChainClient, SubmissionId)
from gateway.chain_client.client import filler_intent
from gateway.validator.tx import Fill
from tests.gateway.test_chain_client_node import CONFIG, FAR, KEYS, ROOT, dispose, make_client, pay, real_node
from tests.gateway.validator import kit
from tests.gateway.validator.netkit import START


async def sign_ahead(c: OutboxChainClient, intents: list[Intent]) -> None:
    """Record and sign ``intents`` without sending them (a gateway that signed while its node was away):
    the follower then sends them all at once, later nonces before the earlier one's verdict is known."""
    for i in intents:
        c.outbox.record(i)
        if c.outbox.next_nonce(i.sender) is None:
            c.outbox.ensure_account(i.sender, await c.backend.nonce(i.sender))
        key = KEYS.key_for(i.sender)
        c.outbox.sign(i.key, lambda n, i=i: c.backend.build(i, n, key))  # type: ignore[misc]


def test_an_intake_refusal_leaves_the_nonce_unused_and_a_later_nonce_waits(tmp_path: Path) -> None:
    """Established on the node itself, without the outbox: the gap exists on this chain."""
    async def go() -> None:
        async with real_node(tmp_path) as (node, g, chain):
            b = make_client(tmp_path / "gw.db", chain.url, g).backend
            forged = Fill(kit.signed(kit.order(2, nonce=5, expiry=FAR), signer=6))
            for bad, reason in ((kit.raw_tx(4, 0, forged), "order_bad_signature"),
                                (kit.raw_tx(4, 0, kit.transfer(3, 5), chain_id=g.chain_id + 1), "wrong_chain_id")):
                try:
                    await b.send(bad)
                    raise AssertionError("accepted")
                except Exception as exc:
                    assert getattr(exc, "reason", None) == reason, exc
            later = await b.send(kit.raw_tx(4, 1, kit.transfer(3, 7)))
            await asyncio.sleep(4 * 0.2)              # several blocks
            assert (await chain.status(later))["status"] == "pending"
            assert await chain.nonce(4) == 0 and await chain.balance(3) == START
            # a state rule is not checked at intake: an expired order's fill is taken, then dropped by the block
            # build with its reason, and the nonce is unused again
            expired = await b.send(kit.raw_tx(5, 0, Fill(kit.signed(kit.order(2, nonce=6, expiry=1)))))
            for _ in range(50):
                if (await chain.status(expired))["status"] != "pending":
                    break
                await asyncio.sleep(0.1)
            assert await chain.status(expired) == {"status": "rejected", "height": None, "reason": "order_expired"}
            assert await chain.nonce(5) == 0
            await b.aclose()

    asyncio.run(go())


def test_refused_and_dropped_txs_get_fillers_and_the_signed_ahead_intents_apply_once(tmp_path: Path) -> None:
    """Account 4 has four intents signed ahead (nonces 0..3): a forged fill (refused at intake), a payment,
    an expired order's fill (dropped at block building), a payment. Both refusals are rejected with their
    reason, a filler takes each freed nonce, and both payments are final at nonces 1 and 3."""
    async def go() -> None:
        async with real_node(tmp_path) as (node, g, chain):
            c = make_client(tmp_path / "gw.db", chain.url, g)
            forged = Intent("fill:forged", kit.addr(4), Fill(kit.signed(kit.order(2, nonce=5, expiry=FAR),
                                                                           signer=6)))
            expired = Intent("fill:expired", kit.addr(4), Fill(kit.signed(kit.order(2, nonce=6, expiry=1))))
            intents = [forged, pay("pay:a", 4, 3, 11), expired, pay("pay:b", 4, 3, 13)]
            await sign_ahead(c, intents)
            await c.run_until_settled(20)
            st = {i.key: c.status(SubmissionId(i.key)) for i in intents}
            assert [(s.state, s.nonce) for s in st.values()] == [(REJECTED, 0), (FINAL, 1), (REJECTED, 2), (FINAL, 3)]
            assert (st["fill:forged"].reason, st["fill:expired"].reason) == ("order_bad_signature", "order_expired")
            fillers = [c.status(SubmissionId(filler_intent(kit.addr(4), n).key)) for n in (0, 2)]
            assert [(f.kind, f.state, f.nonce) for f in fillers] == [("nonce_fill", FINAL, 0), ("nonce_fill", FINAL, 2)]
            applied = await chain.applied()
            hashes = {r.key: r.tx_hash for r in c.outbox.all()}
            assert [applied[hashes[k]] for k in ("fill:forged", "pay:a", "fill:expired", "pay:b")] == [0, 1, 0, 1]
            assert sum(applied.values()) == 4                  # two payments, two fillers
            assert await chain.nonce(4) == 4 and await chain.balance(3) == START + 24
            assert c.counters.get("refused_order_bad_signature") == 1 and "gap_unfilled" not in c.counters
            await dispose(c)

    asyncio.run(go())


def test_a_refused_filler_leaves_the_gap_counted_never_a_loop(tmp_path: Path) -> None:
    """A backend configured with another chain id: every tx, fillers too, is refused ``wrong_chain_id``.
    Each intent ends ``rejected`` with that reason (no endless resending), each filler too, the gap is
    counted; nothing applies."""
    async def go() -> None:
        async with real_node(tmp_path) as (node, g, chain):
            b = BundledBackend(chain.url, chain_id=g.chain_id + 1, verifying_contract=g.verifying_contract)
            c = OutboxChainClient(b, Outbox(tmp_path / "gw.db", b.name), KEYS, config=CONFIG)  # signs for another chain
            await sign_ahead(c, [pay("pay:x", 5, 3, 1), pay("pay:y", 5, 3, 2)])
            await c.run_until_settled(20)
            rows = {r.key: r for r in c.outbox.all()}
            assert {k: (r.state, r.reason) for k, r in rows.items()} == {
                k: (REJECTED, "wrong_chain_id") for k in ("pay:x", "pay:y", filler_intent(kit.addr(5), 0).key,
                                                          filler_intent(kit.addr(5), 1).key)}
            assert c.counters["gap_unfilled"] == 2 and await chain.nonce(5) == 0
            await dispose(c)

    asyncio.run(go())



CHILD = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from gateway.validator.genesis import load_genesis
from tests.gateway.test_chain_client_gap import gap_script, sign_ahead
from tests.gateway.test_chain_client_node import make_client

root, db, url, gpath, point = sys.argv[1:6]

def fault(where):
    if where == point:
        print("AT", where, flush=True)
        time.sleep(120)          # SIGKILL arrives here

async def main():
    c = make_client(db, url, load_genesis(gpath), fault=fault if point != "-" else None)
    if point != "-":
        await sign_ahead(c, gap_script())
    await c.run_until_settled(30)
    print("DONE", flush=True)

asyncio.run(main())
"""


def gap_script() -> list[Intent]:
    """Account 4: a forged fill the node refuses at intake (nonce 0), then two payments signed ahead."""
    forged = Fill(kit.signed(kit.order(2, nonce=5, expiry=FAR), signer=6))
    return [Intent("fill:forged", kit.addr(4), forged), pay("pay:a", 4, 3, 11), pay("pay:b", 4, 3, 13)]


@pytest.mark.parametrize("point", ["refused", "rejected"])
def test_kill_9_between_the_refusal_and_its_filler_then_restart_applies_every_intent_once(tmp_path: Path,
                                                                                       point: str) -> None:
    """The client process SIGKILLed when the refusal is seen but not recorded, and when the rejection and
    its filler are recorded (one transaction) but the filler is not signed; the restarted client ends with
    the forged fill rejected, the filler final at nonce 0, the payments final at 1 and 2, each once."""
    async def go() -> None:
        db = tmp_path / "gw.db"
        async with real_node(tmp_path) as (node, g, chain):
            gpath = tmp_path / "genesis.json"
            gpath.write_text(json.dumps(g.to_json()))

            async def child(p: str) -> str:
                proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(ROOT), str(db),
                                                            chain.url, str(gpath), p,
                                                            stdout=asyncio.subprocess.PIPE, cwd=ROOT)
                assert proc.stdout is not None
                line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
                if line.startswith("AT"):
                    os.kill(proc.pid, signal.SIGKILL)
                    assert await proc.wait() == -signal.SIGKILL
                else:
                    assert await asyncio.wait_for(proc.wait(), 30) == 0
                return line

            assert await child(point) == f"AT {point}"
            raw = sqlite3.connect(db)
            states = dict(raw.execute("SELECT key, state FROM chain_outbox"))
            raw.close()
            fill_key = filler_intent(kit.addr(4), 0).key
            if point == "refused":
                assert states["fill:forged"] == SIGNED and fill_key not in states
            else:
                assert states["fill:forged"] == REJECTED and states[fill_key] == PENDING
            assert await child("-") == "DONE"
            c = make_client(db, chain.url, g)
            rows = {r.key: r for r in c.outbox.all()}
            assert {k: (r.state, r.nonce) for k, r in rows.items()} == {
                "fill:forged": (REJECTED, 0), "pay:a": (FINAL, 1), "pay:b": (FINAL, 2), fill_key: (FINAL, 0)}
            applied = await chain.applied()
            assert [applied[rows[k].tx_hash] for k in ("fill:forged", "pay:a", "pay:b", fill_key)] == [0, 1, 1, 1]
            assert sum(applied.values()) == 3
            assert await chain.nonce(4) == 3 and await chain.balance(3) == START + 24
            await dispose(c)

    asyncio.run(go())
