"""Exchange.reclaim on anvil: an unsettled fill's escrow back to its taker after the settle timeout.

The same rule as the bundled chain (tests/gateway/validator/test_reclaim.py): allowed from the block
time ``intervalStart + intervalSeconds + settleTimeout`` on, whoever sends it; the whole escrow goes to
the taker; the fill is closed (a later settle names it: ``fill_reclaimed``; a second reclaim:
``fill_reclaimed``). The boundary is pinned with ``evm_setNextBlockTimestamp``: the block one second
before the deadline refuses, the block at the deadline accepts.
"""

from __future__ import annotations

from typing import Any

from eth_abi import decode as abi_decode
from web3.logs import DISCARD

from .test_contracts import (GAS, INTERVAL, REJECTED, SETTLE_TIMEOUT, Env, _revert_data, cs, fund, make_env,
                             new_key)
from .test_contracts import artefacts, env, node  # noqa: F401  (fixtures; a fresh anvil for this module)

ESCROWED, SETTLED, RECLAIMED = 1, 2, 3


def deadline_of(env: Env, fid: bytes) -> int:
    f = env.exchange.functions.fills(fid).call()
    return int(f[3]) + INTERVAL + SETTLE_TIMEOUT


def send_at(env: Env, fn: Any, sender: Any, timestamp: int) -> Any:
    """Mine ``fn`` in a block whose timestamp is exactly ``timestamp``; returns the receipt."""
    env.node.rpc("evm_setNextBlockTimestamp", [timestamp])
    rcpt = env.send(fn, sender)
    assert int(env.w3.eth.get_block(rcpt["blockNumber"])["timestamp"]) == timestamp
    return rcpt


def reason_at_block(env: Env, fn: Any, sender: Any, block: int) -> str | None:
    """The revert reason of ``fn`` evaluated in block ``block``'s context (its timestamp)."""
    try:
        fn.call({"from": cs(sender), "gas": GAS}, block_identifier=block)
    except Exception as exc:
        data = _revert_data(exc)
        assert data[:4] == REJECTED, data.hex()
        return str(abi_decode(["string"], data[4:])[0])
    return None


def test_timeout_is_an_immutable_of_the_deployment(env: Env) -> None:
    assert env.exchange.functions.settleTimeout().call() == SETTLE_TIMEOUT
    assert env.exchange.functions.intervalSeconds().call() == INTERVAL


def test_reclaim_boundary_one_second_before_and_at_the_deadline(env: Env) -> None:
    o, fid = env.filled(nonce=1)
    deadline = deadline_of(env, fid)
    assert env.exchange.functions.reclaimableAt(fid).call() == deadline
    assert deadline == o.interval_start + INTERVAL + SETTLE_TIMEOUT > env.now()
    reclaim = env.exchange.functions.reclaim(fid)
    env.reject(reclaim, env.taker, "reclaim_too_early")  # now: long before
    before = env.snapshot()
    early = send_at(env, reclaim, env.taker, deadline - 1)
    assert early["status"] == 0 and env.snapshot() == before
    assert reason_at_block(env, reclaim, env.taker, early["blockNumber"]) == "reclaim_too_early"
    assert env.exchange.functions.fills(fid).call()[4] == ESCROWED
    t0, x0 = env.bal(env.taker), env.bal(env.exchange.address)
    rcpt = send_at(env, reclaim, env.taker, deadline)
    assert rcpt["status"] == 1
    assert env.bal(env.taker) == t0 + o.noia and env.bal(env.exchange.address) == x0 - o.noia
    ev = env.exchange.events.Reclaimed().process_receipt(rcpt, errors=DISCARD)[0]["args"]
    assert (bytes(ev["fillId"]), ev["taker"], ev["refund"]) == (fid, cs(env.taker), o.noia)
    f = env.exchange.functions.fills(fid).call()
    assert (f[4], f[5], f[7], f[8], f[9]) == (RECLAIMED, 0, 0, 0, o.noia)
    assert env.exchange.functions.reclaimableAt(fid).call() == 0


def test_anyone_may_reclaim_but_the_money_goes_to_the_taker(env: Env) -> None:
    o, fid = env.filled(nonce=1)
    stranger = new_key()
    fund(env.node, stranger)
    env.node.rpc("evm_increaseTime", [deadline_of(env, fid) - env.now()])
    t0, m0 = env.bal(env.taker), env.bal(env.maker)
    env.ok(env.exchange.functions.reclaim(fid), stranger)
    assert env.bal(env.taker) == t0 + o.noia and env.bal(env.maker) == m0 and env.bal(stranger) == 0


def test_reclaimed_fill_cannot_be_settled_or_reclaimed_again(env: Env) -> None:
    o, fid = env.filled(nonce=1)
    o2, fid2 = env.filled(nonce=2)
    env.node.rpc("evm_increaseTime", [deadline_of(env, fid) - env.now()])
    env.ok(env.exchange.functions.reclaim(fid), env.taker)
    env.reject(env.exchange.functions.reclaim(fid), env.taker, "fill_reclaimed")
    env.reject(env.settle_fn([(fid, o.wh, o.noia, 0)], o.interval_start), env.authority, "fill_reclaimed")
    # all or nothing: a batch naming a reclaimed fill next to a good one moves nothing
    batch = sorted([(fid, o.wh, o.noia, 0), (fid2, o2.wh, o2.noia, 0)])
    env.reject(env.settle_fn(batch, o.interval_start), env.authority, "fill_reclaimed")
    assert env.exchange.functions.fills(fid2).call()[4] == ESCROWED
    # settlement after the deadline is still allowed for a fill nobody reclaimed (first in wins)
    env.ok(env.settle_fn([(fid2, o2.wh, o2.noia, 0)], o.interval_start), env.authority)
    env.reject(env.exchange.functions.reclaim(fid2), env.taker, "fill_already_settled")


def test_reclaim_of_unknown_or_settled_fill_is_refused(env: Env) -> None:
    env.reject(env.exchange.functions.reclaim(b"\x42" * 32), env.taker, "unknown_fill")
    o, fid = env.filled(nonce=1)
    env.ok(env.settle_fn([(fid, o.wh, o.noia, 0)], o.interval_start), env.authority)
    env.node.rpc("evm_increaseTime", [o.interval_start + INTERVAL + SETTLE_TIMEOUT - env.now()])
    env.reject(env.exchange.functions.reclaim(fid), env.taker, "fill_already_settled")


def test_reclaim_is_reentrancy_safe(node: Any, artefacts: dict[str, Any]) -> None:  # noqa: F811
    """During reclaim's refund transfer a hostile token re-enters reclaim for the same fill: refused."""
    e = make_env(node, artefacts, token_name="ReentrantToken")
    o, fid = e.filled(nonce=1)
    e.node.rpc("evm_increaseTime", [deadline_of(e, fid) - e.now()])
    again = e.exchange.functions.reclaim(fid)._encode_transaction_data()
    e.ok(e.token.functions.arm(e.exchange.address, again), e.deployer)
    t0 = e.bal(e.taker)
    e.ok(e.exchange.functions.reclaim(fid), e.taker)
    tok = e.token.functions
    assert tok.reentered().call() and not tok.innerSuccess().call()
    inner = bytes(tok.innerResult().call())
    assert inner[:4] == REJECTED and abi_decode(["string"], inner[4:])[0] == "reentrancy"
    assert e.bal(e.taker) == t0 + o.noia and e.bal(e.exchange.address) == 0


def test_zero_settle_timeout_is_refused_at_deployment(env: Env, artefacts: dict[str, Any]) -> None:  # noqa: F811
    c = env.w3.eth.contract(abi=artefacts["Exchange"]["abi"], bytecode=artefacts["Exchange"]["bytecode"])
    tx = c.constructor(env.token.address, cs(env.authority), INTERVAL, 0).build_transaction(
        {"from": cs(env.deployer), "gas": 3_000_000})
    rcpt = env.w3.eth.wait_for_transaction_receipt(env.w3.eth.send_transaction(tx))
    assert rcpt["status"] == 0
