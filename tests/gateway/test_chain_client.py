"""Chain client: exactly-once submission through the outbox, against the JSON-RPC node double.

The node is ``RpcNodeDouble`` (tests/gateway/test_chain_client_double.py): a TEST
DOUBLE that speaks the validator's JSON-RPC over HTTP and runs the real chain
core (verify_tx, build_block, MemoryStore). The same guarantees are shown on the
real validator in tests/gateway/test_chain_client_node.py (submit -> final,
fill and settle, idempotent submits, the client SIGKILLed between steps, the
validator SIGKILLed mid-flight, overspend rejected and its nonce filled); this
file keeps what needs the double's knobs: finality lagging the head, a crash at
every fault point and at random ones (10 ms blocks), replies lost after the
node accepted the tx, a chain paused at will, a node down before the first
submit, a nonce used outside the outbox, many concurrent submitters.
"Applied once" is read from the chain: the tx's hash is in exactly one block,
balances moved once, the sender's nonce advanced once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.chain_client import (FINAL, PENDING, REJECTED, SIGNED, SUBMITTED, BundledBackend, ClientConfig, Intent,
                                  NonceFill, Outbox, OutboxChainClient, StaticKeyring, SubmissionId)
from gateway.chain_client.client import FAULT_POINTS, filler_intent
from tests.gateway.test_chain_client_double import RpcNodeDouble
from tests.gateway.validator import kit

FAST = ClientConfig(poll_interval=0.02, resubmit_after=0.3, backoff_initial=0.02, backoff_max=0.2)
KEYS = StaticKeyring([kit.key(i) for i in range(8)])


class Crash(BaseException):
    """A simulated process death at a fault point (BaseException: nothing in the client catches it)."""


def make_client(db: Path, url: str, fault: Callable[[str], None] | None = None,
                config: ClientConfig = FAST) -> OutboxChainClient:
    backend = BundledBackend.from_genesis(url, kit.GENESIS, timeout=2)
    return OutboxChainClient(backend, Outbox(db, backend.name), KEYS, config=config, fault=fault)


async def dispose(client: OutboxChainClient) -> None:
    """What dying leaves behind: nothing in memory; the database file stays."""
    task = client.follower
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await client.backend.aclose()
    client.outbox.close()


def pay(key: str, sender: int, to: int, amount: int) -> Intent:
    return Intent(key, kit.addr(sender), kit.transfer(to, amount))


def crash_at(point: str, nth: int = 1) -> Callable[[str], None]:
    seen = {"n": 0}

    def fault(where: str) -> None:
        if where == point:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Crash(where)
    return fault


# ---- the happy path ----------------------------------------------------------------------------

def test_submit_then_wait_final_gives_a_receipt_and_queries_read_the_chain(tmp_path):
    async def go() -> None:
        async with RpcNodeDouble(finality_lag=2) as node:
            async with make_client(tmp_path / "gw.db", node.url) as c:
                sid = await c.submit(pay("pay:1", 2, 3, 1234))
                assert sid == "pay:1"
                r = await c.wait_final(sid, 10)
                assert r.ok and r.status == FINAL and r.reason is None and r.nonce == 0
                assert r.height is not None and r.height <= await c.finalized_number() <= await c.block_number()
                assert node.applied(r.tx_hash) == 1
                assert await c.balance(kit.addr(3)) == kit.START_BALANCE + 1234
                assert await c.balance(kit.addr(2)) == kit.START_BALANCE - 1234
                assert await c.nonce(kit.addr(2)) == 1
                s = c.status(sid)
                assert (s.state, s.kind, s.tx_hash, s.attempts) == (FINAL, "transfer", r.tx_hash, 1)

    asyncio.run(go())


# ---- idempotency -------------------------------------------------------------------------------

def test_signing_is_deterministic_so_a_resign_is_byte_identical(tmp_path):
    async def go() -> None:
        async with RpcNodeDouble() as node:
            c = make_client(tmp_path / "gw.db", node.url, fault=crash_at("signed"))
            with pytest.raises(Crash):
                await c.submit(pay("pay:det", 2, 3, 5))
            row = c.outbox.get("pay:det")
            assert row.state == SIGNED
            again = c.backend.build(row.intent, row.nonce, kit.key(2))
            assert again.raw == row.raw and again.tx_hash == row.tx_hash
            await dispose(c)

    asyncio.run(go())


# ---- crashes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("point", FAULT_POINTS)
def test_crash_at_each_step_then_restart_applies_exactly_once(tmp_path, point):
    async def go() -> None:
        db = tmp_path / "gw.db"
        intent = pay("pay:crash", 2, 3, 777)
        async with RpcNodeDouble() as node:
            c = make_client(db, node.url, fault=crash_at(point))
            with pytest.raises(Crash):
                await c.submit(intent)
                await c.run_until_settled(10)
            state_at_crash = c.outbox.get("pay:crash").state
            await dispose(c)
            expected = {"recorded": PENDING, "signed": SIGNED, "sent": SIGNED, "submitted": SUBMITTED,
                        "final_seen": SUBMITTED}[point]
            assert state_at_crash == expected
            await asyncio.sleep(0.1)  # the node may apply it meanwhile: the restart must not apply it again
            c2 = make_client(db, node.url)
            assert await c2.submit(intent) == "pay:crash"  # the gateway re-submits after its restart
            await c2.run_until_settled(10)
            r = c2.receipt(SubmissionId("pay:crash"))
            assert r is not None and r.ok and r.nonce == 0
            assert node.applied(r.tx_hash) == 1
            assert node.balance(3) == kit.START_BALANCE + 777 and node.nonce(2) == 1
            await dispose(c2)

    asyncio.run(go())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.tuples(st.sampled_from([2, 3]), st.integers(1, 10**6)), min_size=1, max_size=5),
       crashes=st.lists(st.integers(1, 12), min_size=0, max_size=4))
def test_random_crash_points_still_apply_every_intent_exactly_once(tmp_path_factory, amounts, crashes):
    """Kill the client at the k-th fault point (any step, any intent), restart, resubmit everything."""
    async def go() -> None:
        db = tmp_path_factory.mktemp("h") / "gw.db"
        intents = [pay(f"pay:{i}", s, 6, a) for i, (s, a) in enumerate(amounts)]
        async with RpcNodeDouble(block_interval=0.01) as node:
            schedule = sorted(set(crashes))
            count = {"n": 0}

            def fault(where: str) -> None:
                count["n"] += 1
                if schedule and count["n"] == schedule[0]:
                    schedule.pop(0)
                    raise Crash(where)

            for _ in range(len(crashes) + 1):
                c = make_client(db, node.url, fault=fault)
                try:
                    for i in intents:
                        await c.submit(i)
                    await c.run_until_settled(10)
                    await dispose(c)
                    break
                except Crash:
                    await dispose(c)
            else:
                c = make_client(db, node.url)
                for i in intents:
                    await c.submit(i)
                await c.run_until_settled(10)
                await dispose(c)
            ob = Outbox(db, "metanoia:31337")
            rows = ob.all()
            ob.close()
            assert all(r.state == FINAL for r in rows) and len(rows) == len(intents)
            for s in (2, 3):
                mine = sorted(r.nonce for r in rows if r.sender == kit.addr(s))
                assert mine == list(range(len(mine))) and node.nonce(s) == len(mine)
            assert node.balance(6) == kit.START_BALANCE + sum(a for _, a in amounts)
            assert all(node.applied(r.tx_hash) == 1 for r in rows)

    asyncio.run(go())


# ---- the node goes away ------------------------------------------------------------------------

def test_connection_refused_then_node_back_retries_with_backoff_no_duplicates(tmp_path):
    async def go() -> None:
        node = RpcNodeDouble()
        await node.start()
        await node.stop()  # down before the first submit: the nonce cannot even be read
        async with make_client(tmp_path / "gw.db", node.url) as c:
            sids = [await c.submit(pay(f"pay:down{i}", 2, 3, 9)) for i in range(4)]
            assert {c.status(s).state for s in sids} == {PENDING}
            await asyncio.sleep(0.4)
            assert c.counters.get("backoff", 0) >= 2
            await node.start()
            rs = [await c.wait_final(s, 10) for s in sids]
            assert all(r.ok and node.applied(r.tx_hash) == 1 for r in rs)
            assert [r.nonce for r in rs] == [0, 1, 2, 3] and node.balance(3) == kit.START_BALANCE + 36
            assert node.calls.get("chain_sendRawTransactions", 0) >= 1  # the backlog went in one call
        await node.stop()

    asyncio.run(go())


def test_node_restart_loses_mempool_and_lost_answers_are_resent_never_doubled(tmp_path):
    async def go() -> None:
        async with RpcNodeDouble() as node:
            async with make_client(tmp_path / "gw.db", node.url) as c:
                node.paused = True
                sid = await c.submit(pay("pay:a", 2, 3, 1))
                assert c.status(sid).state == SUBMITTED
                await node.restart(down_for=0.2)  # the mempool is gone
                node.paused = False
                r = await c.wait_final(sid, 10)
                assert r.ok and node.sends[r.tx_hash] >= 2 and node.applied(r.tx_hash) == 1
                assert c.counters.get("resent_unknown", 0) >= 1

                node.drop_responses = 1  # accepted and applied, but the answer never arrives
                sid2 = await c.submit(pay("pay:b", 2, 3, 2))
                r2 = await c.wait_final(sid2, 10)
                assert r2.ok and node.sends[r2.tx_hash] >= 2 and node.applied(r2.tx_hash) == 1
                assert node.balance(3) == kit.START_BALANCE + 3 and node.nonce(2) == 2

    asyncio.run(go())


# ---- rejections and nonces ---------------------------------------------------------------------

def test_stale_nonce_used_outside_the_outbox_is_resigned_with_a_fresh_nonce(tmp_path):
    async def go() -> None:
        db = tmp_path / "gw.db"
        async with RpcNodeDouble() as node:
            c = make_client(db, node.url, fault=crash_at("signed"))
            with pytest.raises(Crash):
                await c.submit(pay("pay:mine", 5, 3, 40))
            old = c.outbox.get("pay:mine")
            await dispose(c)
            # meanwhile the same key signs something else at nonce 0 (another wallet, an old backup)
            node._intake(kit.raw_tx(5, 0, kit.transfer(6, 7)))  # the chain applies a foreign tx at nonce 0
            for _ in range(100):
                if node.nonce(5) == 1:
                    break
                await asyncio.sleep(0.01)
            c2 = make_client(db, node.url)
            await c2.run_until_settled(10)
            r = c2.receipt(SubmissionId("pay:mine"))
            assert r is not None and r.ok and r.nonce == 1 and r.tx_hash != old.tx_hash
            assert c2.outbox.attempts("pay:mine") == [(0, old.tx_hash, "stale_nonce")]
            assert node.applied(old.tx_hash) == 0 and node.applied(r.tx_hash) == 1
            assert node.balance(3) == kit.START_BALANCE + 40 and node.balance(6) == kit.START_BALANCE + 7
            await dispose(c2)

    asyncio.run(go())


def test_filler_loses_to_the_tx_it_replaced_and_the_chain_is_believed(tmp_path):
    """A tx recorded rejected that a node applied after all: its filler is superseded, the tx is final."""
    async def go() -> None:
        db = tmp_path / "gw.db"
        async with RpcNodeDouble() as node:
            node.paused = True
            c = make_client(db, node.url, fault=crash_at("sent"))
            with pytest.raises(Crash):
                await c.submit(pay("pay:x", 7, 3, 3))
            x = c.outbox.get("pay:x")
            # as if a lagging node had reported it dropped: rejected, filler takes nonce 0
            c.outbox.mark_rejected("pay:x", "insufficient_balance", filler=filler_intent(kit.addr(7), 0))
            await dispose(c)
            c2 = make_client(db, node.url)
            await c2.run_once()  # the filler meets x still pending in the mempool: nonce_in_use, later
            assert c2.counters.get("send_deferred") == 1
            assert c2.outbox.get(filler_intent(kit.addr(7), 0).key).state == SIGNED
            node.paused = False
            await c2.run_until_settled(10)
            fill_row = c2.outbox.get(filler_intent(kit.addr(7), 0).key)
            assert (fill_row.state, fill_row.reason) == (REJECTED, "superseded")
            rx = c2.outbox.get("pay:x")
            assert rx.state == FINAL and node.applied(x.tx_hash) == 1 and node.nonce(7) == 1
            assert node.applied(fill_row.tx_hash) == 0
            await dispose(c2)

    asyncio.run(go())


def test_concurrent_submits_keep_nonces_unique_and_gap_free(tmp_path):
    async def go() -> None:
        db = tmp_path / "gw.db"
        async with RpcNodeDouble() as node:
            a = make_client(db, node.url)
            b = make_client(db, node.url)  # a second connection to the same outbox (another worker)
            a.start()
            intents = [pay(f"pay:{i}", 2 + i % 3, 7, 1 + i) for i in range(45)]
            ids = await asyncio.gather(*((a if i % 2 else b).submit(x) for i, x in enumerate(intents)))
            assert len(set(ids)) == 45
            rs = await asyncio.gather(*(a.wait_final(i, 20) for i in ids))
            assert all(r.ok for r in rs) and len({r.tx_hash for r in rs}) == 45
            for s in (2, 3, 4):
                nonces = sorted(r.nonce for r in rs if r.sender == kit.addr(s))
                assert nonces == list(range(15)) and node.nonce(s) == 15
            assert node.balance(7) == kit.START_BALANCE + sum(range(1, 46))
            assert all(node.applied(r.tx_hash) == 1 for r in rs)
            await dispose(a)
            await dispose(b)

    asyncio.run(go())


def test_nonce_fill_is_a_noop_that_only_consumes_the_nonce(tmp_path):
    async def go() -> None:
        async with RpcNodeDouble() as node:
            async with make_client(tmp_path / "gw.db", node.url) as c:
                r = await c.wait_final(await c.submit(Intent("noop", kit.addr(2), NonceFill())), 10)
                assert r.ok and node.nonce(2) == 1 and node.balance(2) == kit.START_BALANCE

    asyncio.run(go())
