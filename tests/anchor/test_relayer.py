"""``metanoia chain anchor`` as a process against 4 validator processes and anvil with the registry.

Checkpoints get anchored while transfers flow, each one the block every validator holds at that height,
and recorded on the side chain as a ``checkpoint`` transaction; a relayer killed with kill -9 (while a
submission is pending, or between journalling and sending) never anchors a height twice nor wastes a
transaction; with one validator down anchoring goes on with 3 of 4 signatures.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from gateway.anchor.deploy import deploy_registry
from gateway.anchor.evm import EvmRpc
from gateway.anchor.journal import ANCHORED, Journal
from gateway.anchor.relayer import Relayer, RelayerConfig
from gateway.cli import main as cli_main
from gateway.validator.crypto import address_of, keccak256, private_key
from gateway.validator.genesis import parse_genesis
from gateway.validator.tx import CHECKPOINT, decode_tx
from gateway.validator.tx import Checkpoint as CheckpointTx
from tests.gateway.validator.netkit import AUTH_KEYS, genesis_doc

from tests.evm.test_contracts import cs

from .rig import BT, DEPLOYER, EVERY, RELAYER_KEY, AnchorRig


def _no_double_anchoring(rig: AnchorRig) -> list[dict]:
    """Every registry entry once, heights increasing, each the journalled tx of its height, and not one
    wasted main-chain tx of the relayer (the relayer may be running: its last row may still be ``signed``)."""
    sent_before = rig.relayer_tx_count()
    rows = rig.journal_rows()
    ev = rig.events()
    sent_after = rig.relayer_tx_count()
    heights = [e["height"] for e in ev]
    assert heights == sorted(set(heights)), heights
    journalled = {r[0]: (r[1], bytes(r[3])) for r in rows}
    for e in ev:
        assert journalled[e["height"]][1] == bytes(e["tx"])
    assert {h for h, (st, _) in journalled.items() if st == ANCHORED} <= set(heights)
    assert all(st in (ANCHORED, "signed") for st, _ in journalled.values()), rows
    assert sent_before <= len(ev) <= sent_after      # a double submission would have cost a (reverted) tx
    assert sorted(r[2] for r in rows) == list(range(len(rows)))   # account nonces 0, 1, 2, ...: one per height
    return ev


async def _side_checkpoints(rig: AnchorRig, want: set[int], timeout: float = 20) -> dict[int, bytes]:
    """The side chain's checkpoint txs (height -> block hash), each height at most once, all from the
    relayer's authority key; waits until ``want`` are among them (the outbox sends them after the anchor)."""
    end = time.monotonic() + timeout
    while True:
        seen: dict[int, bytes] = {}
        top = await rig.call(0, "chain_finalizedNumber")
        for n in range(1, top + 1):
            for raw in (await rig.call(0, "chain_getBlockByNumber", n, True))["transactions"]:
                tx = decode_tx(bytes.fromhex(raw[2:]))
                if tx.type == CHECKPOINT:
                    assert isinstance(tx.payload, CheckpointTx)
                    assert tx.sender == address_of(AUTH_KEYS[0])
                    assert tx.payload.height not in seen
                    seen[tx.payload.height] = tx.payload.block_hash
        if want <= set(seen):
            return seen
        assert time.monotonic() < end, f"side chain recorded {sorted(seen)}, want {sorted(want)}"
        await asyncio.sleep(0.3)


def test_checkpoints_anchored_while_transactions_flow(rig: AnchorRig) -> None:
    rig.start_relayer()
    first = rig.latest()

    async def load_until_anchored(n: int) -> None:
        while len([e for e in rig.events() if e["height"] > first]) < n:
            await rig.send_transfers(6, via=len(rig.txs) % 4)
    asyncio.run(asyncio.wait_for(load_until_anchored(3), 60))
    ev = _no_double_anchoring(rig)
    assert len(ev) >= 3 and all(e["signatures"] >= 3 for e in ev)
    for a, b in zip(ev, ev[1:]):
        assert b["height"] >= a["height"] + EVERY

    async def check_side() -> None:
        for e in ev:     # each anchored checkpoint is the block every validator holds at that height
            for i in range(4):
                blk = await rig.call(i, "chain_getBlockByNumber", e["height"])
                assert (blk["hash"], blk["stateRoot"]) == ("0x" + e["blockHash"].hex(), "0x" + e["stateRoot"].hex())
        # ... and is recorded on the side chain by the authority key, as a checkpoint tx (outbox: may lag)
        seen = await _side_checkpoints(rig, {e["height"] for e in ev[:2]})
        for e in ev:
            if e["height"] in seen:
                assert seen[e["height"]] == e["blockHash"]
    asyncio.run(check_side())
    txs_in_blocks = asyncio.run(rig.call(0, "chain_getTxProof", "0x" + rig.txs[-1].hex()))
    assert txs_in_blocks is not None


def test_relayer_killed_mid_submission_never_double_anchors(rig: AnchorRig) -> None:
    if rig.relayer is None:
        rig.start_relayer()
    rig.wait_anchored(rig.latest())
    # kill -9 while a submission is journalled and not yet mined (anvil mines once a second)
    end = time.monotonic() + 30
    killed_at = None
    while killed_at is None:
        assert time.monotonic() < end, "never saw a pending submission"
        pending = [r for r in rig.journal_rows() if r[1] == "signed"]
        if pending:
            rig.kill_relayer()
            killed_at = pending[0][0]
        time.sleep(0.01)
    rig.start_relayer()
    h = rig.wait_anchored(killed_at)
    rig.wait_anchored(h)                 # and it goes on after the recovered one
    ev = _no_double_anchoring(rig)
    assert [e["height"] for e in ev].count(killed_at) == 1
    # recorded on the side chain once too (the outbox, restarted with the relayer, sends it exactly once)
    seen = asyncio.run(_side_checkpoints(rig, {killed_at}))
    assert seen[killed_at] == next(e["blockHash"] for e in ev if e["height"] == killed_at)


def test_crash_between_journal_and_send_is_recovered_from_the_journal(rig: AnchorRig) -> None:
    """The relayer died after fsyncing its signed tx and before sending it: the restarted relayer sends
    exactly those bytes (same hash, same nonce)."""
    rig.stop_relayer(graceful=True)
    assert not [r for r in rig.journal_rows() if r[1] != ANCHORED]
    cfg = RelayerConfig(side_urls=tuple(rig.urls), main_url=rig.anvil.url, registry=rig.registry,
                        key=RELAYER_KEY.secret, journal=rig.journal, every=EVERY)

    async def prepare_only() -> tuple[int, bytes]:
        r = Relayer(cfg)
        try:
            await r.start()
            latest = await r.registry.latest()
            target = await r.validators.anchorable_height(4)
            while target <= latest.height:
                await asyncio.sleep(0.1)
                target = await r.validators.anchorable_height(4)
            e = await r.prepare(target)
            return e.height, e.tx_hash
        finally:
            await r.aclose()
    height, tx_hash = asyncio.run(prepare_only())
    assert rig.latest() < height and rig.relayer_tx_count() == len(rig.events())   # nothing sent
    rig.start_relayer()
    rig.wait_anchored(height - 1)
    ev = _no_double_anchoring(rig)
    (mine,) = [e for e in ev if e["height"] == height]
    assert bytes(mine["tx"]) == tx_hash


def test_anchoring_continues_with_one_validator_down(rig: AnchorRig) -> None:
    if rig.relayer is None:
        rig.start_relayer()
    # the relayer records on the side chain through validator 3 (its first --rpc) before that one goes down
    asyncio.run(_side_checkpoints(rig, {rig.wait_anchored(rig.latest())}))
    rig.procs[3].kill()
    try:
        # a round that collected its signatures before the kill may still land with 4: let it, then count
        # only what the relayer signs after it (it runs one submission at a time)
        rig.wait_anchored(max([rig.latest()] + [r[0] for r in rig.journal_rows()]), timeout=40)
        after = max([rig.latest()] + [r[0] for r in rig.journal_rows()])
        h = rig.wait_anchored(after, timeout=40)
        ev = [e for e in _no_double_anchoring(rig) if e["height"] > after]
        assert ev and ev[-1]["height"] >= h and all(e["signatures"] == 3 for e in ev)
        # the side-chain record was on validator 3 (first --rpc): it moves to a live one and goes on
        asyncio.run(_side_checkpoints(rig, {e["height"] for e in ev}))
    finally:
        rig.procs[3].start()
        asyncio.run(rig._wait_up())


def test_max_age_and_confirmations(rig: AnchorRig) -> None:
    """``every`` out of reach: the checkpoint's age in side-chain block time triggers it; and its receipt
    counts only under two more main-chain blocks."""
    rig.stop_relayer(graceful=True)
    cfg = RelayerConfig(side_urls=tuple(rig.urls), main_url=rig.anvil.url, registry=rig.registry,
                        key=RELAYER_KEY.secret, journal=rig.journal, every=10**9, max_age=1, confirmations=3)

    async def one_anchor() -> tuple[str, int]:
        r = Relayer(cfg)
        try:
            what = await r.step()
            while not what.startswith("anchored:"):
                assert what in ("waiting", "pending"), what
                what = await r.step()
            return what, await r.evm.block_number()
        finally:
            await r.aclose()
    try:
        what, head = asyncio.run(asyncio.wait_for(one_anchor(), 30))
        height = int(what.split(":")[1])
        (ev,) = [e for e in rig.events() if e["height"] == height]
        mined_in = rig.w3.eth.get_transaction_receipt(ev["tx"])["blockNumber"]
        assert head - mined_in + 1 >= 3          # it waited for two more main-chain blocks on top
        _no_double_anchoring(rig)
    finally:
        rig.start_relayer()


def test_unreachable_chains_are_counted_rounds_go_on(rig: AnchorRig, tmp_path: Path) -> None:
    async def rounds(main_url: str, side_urls: tuple[str, ...]) -> dict[str, int]:
        cfg = RelayerConfig(side_urls=side_urls, main_url=main_url, registry=rig.registry, key=RELAYER_KEY.secret,
                            journal=tmp_path / f"j{len(side_urls)}.db", poll=0.01, rpc_timeout=2)
        r = Relayer(cfg)
        try:
            await r.run(asyncio.Event(), rounds=3)
        finally:
            await r.aclose()
        return r.counters
    assert asyncio.run(rounds("http://127.0.0.1:9/", tuple(rig.urls))) == {"error_main_unavailable": 3}
    # the registry answers, but only 2 of 4 validators are reachable: below the threshold, nothing is signed
    c = asyncio.run(rounds(rig.anvil.url, (rig.urls[0], "http://127.0.0.1:9/")))
    assert c == {"error_side_unavailable": 3}


def test_anchor_cli_rounds_and_json(rig: AnchorRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["chain", "anchor", "--rpc", *rig.urls, "--main-rpc", "http://127.0.0.1:9/", "--registry",
            rig.contract.address, "--key", str(rig.relayer_key), "--journal", str(tmp_path / "j.db"), "--poll", "0.01"]
    assert cli_main(args + ["--rounds", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"counters": {"error_main_unavailable": 2}}
    assert cli_main(args + ["--every", "0"]) == 2
    assert "--every" in capsys.readouterr().err
    missing = [str(tmp_path / "missing.key") if a == str(rig.relayer_key) else a for a in args]
    assert cli_main(missing) == 2 and "missing.key" in capsys.readouterr().err
    # a second relayer on the running relayer's journal refuses to start, and touches nothing
    if rig.relayer is None:
        rig.start_relayer()
    rig.wait_anchored(rig.latest())
    rows = [(r[0], r[3]) for r in rig.journal_rows()]       # (height, tx hash): the states move on
    second = [str(rig.journal) if a == str(tmp_path / "j.db") else a for a in args]
    assert cli_main(second + ["--rounds", "1"]) == 2
    assert "journal_in_use" in capsys.readouterr().err
    assert [(r[0], r[3]) for r in rig.journal_rows()][:len(rows)] == rows


def test_registry_of_another_chain_gets_no_signatures(rig: AnchorRig, tmp_path: Path) -> None:
    """A relayer pointed at a registry for another side chain: every validator's answer is refused
    (wrong_chain), nothing is signed for the main chain, and it says why."""
    other = parse_genesis({**genesis_doc(4, BT), "name": "another-chain"})

    async def go() -> tuple[dict[str, int], int]:
        evm = EvmRpc(rig.anvil.url)
        try:
            reg = (await deploy_registry(evm, DEPLOYER.secret, other)).address
        finally:
            await evm.aclose()
        r = Relayer(RelayerConfig(side_urls=tuple(rig.urls), main_url=rig.anvil.url, registry=reg, every=1,
                                  key=RELAYER_KEY.secret, journal=tmp_path / "j.db", poll=0.01))
        try:
            await r.run(asyncio.Event(), rounds=2)
            return r.counters, (await r.registry.latest()).height
        finally:
            await r.aclose()
    counters, latest = asyncio.run(go())
    assert counters == {"signature_refused_wrong_chain": 8, "error_insufficient_signatures": 2} and latest == 0
    j = Journal(tmp_path / "j.db")       # nothing was signed for the main chain
    try:
        assert j.conn.execute("SELECT COUNT(*) FROM anchor_journal").fetchone()[0] == 0
    finally:
        j.close()


def test_submission_reorged_out_is_mined_again_with_the_same_bytes(rig: AnchorRig) -> None:
    """With confirmations, a receipt that a main-chain reorg takes away (anvil_reorg) is not counted: the
    journalled bytes are sent again and the height is anchored once, by the same tx."""
    rig.stop_relayer(graceful=True)
    cfg = RelayerConfig(side_urls=tuple(rig.urls), main_url=rig.anvil.url, registry=rig.registry, every=1,
                        key=RELAYER_KEY.secret, journal=rig.journal, confirmations=6, resend_every=0.3)

    async def submitting_step(r: Relayer) -> str:
        # "waiting": no final side-chain height above the last anchored one yet (the side chain is
        # slow on a loaded machine); nothing was sent, so asking again is the relayer's own loop
        while (what := await r.step()) == "waiting":
            await asyncio.sleep(0.1)
        return what

    async def go() -> tuple[str, bytes, int]:
        r = Relayer(cfg)
        try:
            task = asyncio.create_task(submitting_step(r))
            while True:      # wait for our submission to be mined, then reorg it out
                assert not task.done(), task.result()
                rows = [x for x in rig.journal_rows() if x[1] == "signed"]
                rcpt = await r.evm.receipt(bytes(rows[0][3])) if rows else None
                if rcpt is not None:
                    break
                await asyncio.sleep(0.05)
            head = await r.evm.block_number()
            rig.anvil.rpc("anvil_reorg", [head - rcpt.block_number + 1, []])
            assert await r.evm.receipt(rcpt.tx_hash) is None
            return await asyncio.wait_for(task, 30), rcpt.tx_hash, rcpt.block_number
        finally:
            await r.aclose()
    try:
        what, tx_hash, first_block = asyncio.run(go())
        height = int(what.split(":")[1])
        (ev,) = [e for e in rig.events() if e["height"] == height]
        assert bytes(ev["tx"]) == tx_hash
        _no_double_anchoring(rig)
    finally:
        rig.start_relayer()


def test_unfunded_account_keeps_its_submission_until_it_can_pay(rig: AnchorRig, tmp_path: Path) -> None:
    """The main chain refuses the tx (no ether for gas): it stays journalled, nothing new is signed, and once
    the account is funded the same bytes are anchored. On a registry of its own, with a key of its own."""
    poor = private_key(keccak256(b"anchor-unfunded"))

    async def go() -> None:
        evm = EvmRpc(rig.anvil.url)
        try:
            reg = (await deploy_registry(evm, DEPLOYER.secret, rig.genesis)).address
        finally:
            await evm.aclose()
        r = Relayer(RelayerConfig(side_urls=tuple(rig.urls), main_url=rig.anvil.url, registry=reg, every=1,
                                  key=poor.secret, journal=tmp_path / "j.db", receipt_wait=1.0, resend_every=0.2))
        try:
            what = await r.step()
            assert what == "pending" and r.counters.get("send_refused", 0) >= 1, (what, r.counters)
            (e,) = r.journal.pending(reg)
            assert await r.step() == "pending" and r.journal.pending(reg) == [e]   # nothing new signed
            rig.anvil.rpc("anvil_setBalance", [cs(poor), hex(10**20)])
            assert (await r.step()).startswith("anchored:")       # the journalled one, and on to the next
            (row,) = [x for x in r.journal.entries(reg) if x.height == e.height]
            assert (row.state, row.tx_hash) == (ANCHORED, e.tx_hash)
            cp = await r.registry.at(e.height)
            assert cp is not None and cp.block_hash == e.block_hash
            assert await r.evm.receipt(e.tx_hash) is not None and e.nonce == 0
        finally:
            await r.aclose()
    asyncio.run(go())
