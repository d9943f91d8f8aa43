"""Execution rules: the happy paths, and every rejection reason reachable with state untouched."""

from __future__ import annotations

import pytest

from gateway.validator import errors as E
from gateway.validator.crypto import keccak256
from gateway.validator.errors import TxRejected
from gateway.validator.execute import BlockContext, apply_tx
from gateway.validator.state import (Overlay, decode_escrow, decode_settled, escrow_key, get_account,
                                     settled_key, total_money)
from gateway.validator.tx import Cancel, Checkpoint

from .kit import (COMPLEX, GENESIS_TIME, GRID, INTERVAL, PARAMS, START_BALANCE, Chain, addr, fill, order, settle,
                  transfer, vtx)

MAKER, TAKER, OTHER = 2, 3, 4


def bal(chain: Chain, i: int) -> int:
    return get_account(chain.store, addr(i)).balance


def rejects(chain: Chain, sender: int, payload, reason: str, *, nonce: int | None = None, time: int | None = None):
    """Apply directly (no block) and check: the reason, nothing written, state root unchanged."""
    s = chain.store
    before = dict(s.items())
    acc = s.accumulator
    ov = Overlay(s)
    n = chain.nonces.get(sender, 0) if nonce is None else nonce
    ctx = BlockContext(PARAMS, s.head.height + 1, chain.time if time is None else time, s.header_at)
    with pytest.raises(TxRejected) as ei:
        apply_tx(ov, vtx(sender, n, payload), ctx)
    assert ei.value.reason == reason, ei.value
    assert ov.writes == {}
    assert dict(s.items()) == before and s.accumulator == acc


def filled(chain: Chain, **kw) -> tuple[object, bytes]:
    o = order(MAKER, **kw)
    v = chain.send(TAKER, fill(o))
    assert v.order_hash is not None
    return o, v.order_hash


def test_transfer_moves_money_and_bumps_the_nonce() -> None:
    c = Chain()
    c.send(MAKER, transfer(OTHER, 5))
    assert bal(c, MAKER) == START_BALANCE - 5 and bal(c, OTHER) == START_BALANCE + 5
    assert get_account(c.store, addr(MAKER)).nonce == 1
    c.send(MAKER, transfer(MAKER, 7))  # to oneself: only the nonce moves
    assert bal(c, MAKER) == START_BALANCE - 5
    c.send(MAKER, transfer(20, 1))  # to a fresh account
    assert bal(c, 20) == 1


def test_fill_escrows_and_settle_pays_maker_and_refunds_taker() -> None:
    c = Chain()
    o, fid = filled(c, noia=1000, wh=500)
    assert bal(c, TAKER) == START_BALANCE - 1000
    esc = decode_escrow(c.store.get(escrow_key(fid)))
    assert (esc.maker, esc.taker, esc.noia, esc.wh) == (addr(MAKER), addr(TAKER), 1000, 500)
    receipt = c.store.receipt(keccak256(c.store.block_at(c.store.head.height).txs[0]))
    assert receipt is not None and receipt.fill_id == fid and receipt.sender == addr(TAKER)
    c.send(COMPLEX, settle([(fid, 400, 800, 200)]))
    assert bal(c, MAKER) == START_BALANCE + 800 and bal(c, TAKER) == START_BALANCE - 800
    assert c.store.get(escrow_key(fid)) is None
    assert decode_settled(c.store.get(settled_key(fid))).delivered_wh == 400
    assert total_money(c.store.items()) == 6 * START_BALANCE


def test_cancel_then_fill_is_refused() -> None:
    c = Chain()
    c.send(MAKER, Cancel(1))
    rejects(c, TAKER, fill(order(MAKER, nonce=1)), E.ORDER_CANCELLED)
    rejects(c, MAKER, Cancel(1), E.ORDER_CANCELLED)


def test_double_fill_and_cancel_after_fill_are_refused() -> None:
    c = Chain()
    filled(c)
    rejects(c, TAKER, fill(order(MAKER)), E.ORDER_ALREADY_FILLED)
    rejects(c, OTHER, fill(order(MAKER)), E.ORDER_ALREADY_FILLED)
    rejects(c, OTHER, fill(order(MAKER, noia=5)), E.ORDER_ALREADY_FILLED)  # another order, same nonce
    rejects(c, MAKER, Cancel(1), E.ORDER_ALREADY_FILLED)


def test_transaction_rules() -> None:
    c = Chain()
    c.send(TAKER, transfer(OTHER, 1))
    rejects(c, TAKER, transfer(OTHER, 1), E.BAD_NONCE, nonce=0)  # replay
    rejects(c, TAKER, transfer(OTHER, 1), E.BAD_NONCE, nonce=5)  # gap
    rejects(c, TAKER, transfer(OTHER, 0), E.ZERO_AMOUNT)
    rejects(c, 20, transfer(OTHER, 1), E.INSUFFICIENT_BALANCE)
    rejects(c, TAKER, transfer(OTHER, START_BALANCE), E.INSUFFICIENT_BALANCE)


def test_fill_rules() -> None:
    c = Chain()
    rejects(c, TAKER, fill(order(MAKER, expiry=c.time)), E.ORDER_EXPIRED)
    rejects(c, TAKER, fill(order(MAKER, taker=OTHER)), E.ORDER_TAKER_MISMATCH)
    rejects(c, MAKER, fill(order(MAKER)), E.SELF_FILL)
    rejects(c, TAKER, fill(order(MAKER, noia=START_BALANCE + 1)), E.INSUFFICIENT_BALANCE)
    rejects(c, TAKER, fill(order(MAKER, wh=0)), E.ZERO_AMOUNT)
    rejects(c, TAKER, fill(order(MAKER, noia=0)), E.ZERO_AMOUNT)
    c.send(TAKER, fill(order(MAKER, taker=TAKER)))  # the named taker may


def test_settle_rules() -> None:
    c = Chain()
    _, fid = filled(c, noia=1000, wh=500)
    rejects(c, OTHER, settle([(fid, 500, 1000, 0)]), E.NOT_AUTHORITY)
    rejects(c, COMPLEX, settle([(fid, 500, 1000, 0)]), E.INTERVAL_NOT_OVER, time=GENESIS_TIME + INTERVAL - 1)
    rejects(c, COMPLEX, settle([(fid, 500, 999, 0)]), E.SETTLE_AMOUNT_MISMATCH)
    rejects(c, COMPLEX, settle([(fid, 500, 1000, 1)]), E.SETTLE_AMOUNT_MISMATCH)
    rejects(c, COMPLEX, settle([(fid, 501, 1000, 0)]), E.DELIVERED_EXCEEDS_ORDER)
    rejects(c, COMPLEX, settle([(b"\x07" * 32, 1, 1, 0)]), E.UNKNOWN_FILL)
    rejects(c, COMPLEX, settle([(fid, 500, 1000, 0)], interval_start=GENESIS_TIME - INTERVAL), E.INTERVAL_MISMATCH)
    rejects(c, COMPLEX, settle([(fid, 500, 1000, 0)], grid=b"\x01" * 32), E.GRID_MISMATCH)
    # one bad entry spoils the batch: the good one is not applied either
    rejects(c, COMPLEX, settle([(fid, 500, 1000, 0), (b"\x00" * 32, 1, 1, 0)]), E.UNKNOWN_FILL)
    c.send(COMPLEX, settle([(fid, 500, 1000, 0)]))
    rejects(c, COMPLEX, settle([(fid, 500, 1000, 0)]), E.FILL_ALREADY_SETTLED)
    _, fid2 = filled(c, nonce=2)
    rejects(c, COMPLEX, settle([(fid2, 0, 0, 1000)], root=b"\x44" * 32), E.EVIDENCE_ROOT_CONFLICT)
    c.send(COMPLEX, settle([(fid2, 0, 0, 1000)]))  # same interval, same evidence root: a second batch is fine
    assert bal(c, TAKER) == START_BALANCE - 1000


def test_checkpoint_rules() -> None:
    c = Chain()
    c.send(TAKER, transfer(OTHER, 1))
    h1 = c.store.header_at(1)
    rejects(c, OTHER, Checkpoint(1, h1.hash, h1.state_root), E.NOT_AUTHORITY)
    rejects(c, 0, Checkpoint(1, b"\x00" * 32, h1.state_root), E.CHECKPOINT_UNKNOWN_BLOCK)
    rejects(c, 0, Checkpoint(1, h1.hash, b"\x00" * 32), E.CHECKPOINT_UNKNOWN_BLOCK)
    rejects(c, 0, Checkpoint(50, h1.hash, h1.state_root), E.CHECKPOINT_UNKNOWN_BLOCK)
    rejects(c, 0, Checkpoint(0, c.store.header_at(0).hash, c.store.header_at(0).state_root),
            E.CHECKPOINT_NOT_MONOTONIC)
    c.send(0, Checkpoint(1, h1.hash, h1.state_root))
    rejects(c, 0, Checkpoint(1, h1.hash, h1.state_root), E.CHECKPOINT_NOT_MONOTONIC)
    h2 = c.store.header_at(2)
    c.send(0, Checkpoint(2, h2.hash, h2.state_root))


def test_every_tx_rejection_reason_is_reachable() -> None:
    """The reasons exercised above, listed against errors.py so a new reason needs a test."""
    import inspect
    src = inspect.getsource(inspect.getmodule(test_settle_rules))
    tx_reasons = [n for n in ("BAD_NONCE", "INSUFFICIENT_BALANCE", "ZERO_AMOUNT", "ORDER_EXPIRED",
                              "ORDER_TAKER_MISMATCH", "ORDER_ALREADY_FILLED", "ORDER_CANCELLED", "SELF_FILL",
                              "NOT_AUTHORITY", "UNKNOWN_FILL", "FILL_ALREADY_SETTLED", "SETTLE_AMOUNT_MISMATCH",
                              "DELIVERED_EXCEEDS_ORDER", "INTERVAL_MISMATCH", "GRID_MISMATCH",
                              "INTERVAL_NOT_OVER", "EVIDENCE_ROOT_CONFLICT", "CHECKPOINT_UNKNOWN_BLOCK",
                              "CHECKPOINT_NOT_MONOTONIC")]
    for n in tx_reasons:
        assert f"E.{n})" in src or f"E.{n}," in src, n
    emod = inspect.getsource(E)
    declared = {line.split(" = ")[0] for line in emod.splitlines() if " = \"" in line}
    assert declared >= set(tx_reasons)


def test_a_block_result_knows_the_parent_value_of_every_written_key() -> None:
    """Execution records what it read of the parent state (``BlockResult.before``): the state root's
    update and the store use it instead of reading again. A new escrow is recorded absent without a
    lookup; it must be what the parent state holds, for every written key."""
    from gateway.validator.execute import build_block, touched_keys
    from gateway.validator.state import ESCROW, update_accumulator

    from .kit import AUTHORITY, vtx

    c = Chain()
    _, fid = filled(c, nonce=1)
    s = c.store
    n = c.nonces[TAKER]
    txs = [vtx(TAKER, n, fill(order(MAKER, nonce=2))),
           vtx(TAKER, n + 1, fill(order(MAKER, nonce=1))),                        # refused: already filled
           vtx(MAKER, 0, transfer(OTHER, 3)),
           vtx(COMPLEX, 0, settle([(fid, 100, 600, 400)]))]
    assert not any(k[:1] == ESCROW for k in touched_keys(txs))
    blk, res, rejected = build_block(s, s.accumulator, s.head, txs, PARAMS, addr(AUTHORITY), c.time + 1,
                                     header_at=s.header_at)
    assert [e.reason for _, e in rejected] == [E.ORDER_ALREADY_FILLED]
    assert set(res.writes) <= set(res.before)
    assert all(res.before[k] == s.get(k) for k in res.before)
    assert sum(k[:1] == ESCROW and res.before[k] is None for k in res.writes) == 1   # the new escrow
    assert update_accumulator(s.accumulator, s, res.writes) == res.accumulator
