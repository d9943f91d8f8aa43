"""Reclaim: an unsettled fill's escrow back to its taker once the settle timeout has passed.

Deadline = the order's interval start + interval_seconds + settle_timeout (genesis). Before it:
``reclaim_too_early``; from it on: the whole escrow to the taker, the fill closed (``fill_reclaimed``
for a later settle or a second reclaim). The same rule, reasons and boundary as Exchange.reclaim
(tests/evm/test_exchange_reclaim.py).
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.validator import errors as E
from gateway.validator.block import Block
from gateway.validator.errors import BlockInvalid
from gateway.validator.execute import BlockContext, apply_tx, build_block, execute_block, reclaim_deadline
from gateway.validator.genesis import DEFAULT_SETTLE_TIMEOUT
from gateway.validator.state import (Overlay, accumulate, decode_escrow, decode_reclaimed, escrow_key, get_account,
                                     reclaimed_key, settled_key, state_root, total_money)
from gateway.validator.tx import RECLAIM, Reclaim

from .kit import COMPLEX, GENESIS_TIME, INTERVAL, PARAMS, START_BALANCE, Chain, addr, settle, vtx
from .test_execute import MAKER, OTHER, TAKER, bal, filled, rejects

DEADLINE = GENESIS_TIME + INTERVAL + DEFAULT_SETTLE_TIMEOUT  # for the kit's orders (interval start GENESIS_TIME)


def at(chain: Chain, t: int) -> None:
    """The next block (``Chain.send``/``block`` add one second) gets timestamp ``t``."""
    chain.time = t - 1


def test_the_deadline_is_the_interval_end_plus_the_genesis_timeout() -> None:
    c = Chain()
    _, fid = filled(c)
    esc = decode_escrow(c.store.get(escrow_key(fid)))
    assert PARAMS.settle_timeout == DEFAULT_SETTLE_TIMEOUT == 7 * 86_400
    assert reclaim_deadline(esc, PARAMS) == DEADLINE


def test_reclaim_one_second_before_the_deadline_is_refused_and_at_it_refunds_the_whole_escrow() -> None:
    c = Chain()
    _, fid = filled(c, noia=1000, wh=500)
    rejects(c, TAKER, Reclaim(fid), E.RECLAIM_TOO_EARLY)                       # right after the fill
    rejects(c, TAKER, Reclaim(fid), E.RECLAIM_TOO_EARLY, time=DEADLINE - 1)
    at(c, DEADLINE)
    v = c.send(TAKER, Reclaim(fid))
    assert c.store.head.timestamp == DEADLINE
    assert bal(c, TAKER) == START_BALANCE and bal(c, MAKER) == START_BALANCE
    assert c.store.get(escrow_key(fid)) is None and c.store.get(settled_key(fid)) is None
    rec = decode_reclaimed(c.store.get(reclaimed_key(fid)))
    assert (rec.taker, rec.refund) == (addr(TAKER), 1000)
    assert get_account(c.store, addr(TAKER)).nonce == 2  # the fill and the reclaim
    r = c.store.receipt(v.hash)
    assert r is not None and r.type == RECLAIM and r.fill_id == fid and r.sender == addr(TAKER)
    # money is conserved, and the state root covers the reclaim record (recomputed from a dump)
    assert total_money(c.store.items()) == 6 * START_BALANCE
    assert accumulate(c.store.items()) == c.store.accumulator
    assert state_root(c.store.accumulator) == c.store.head.state_root


def test_anyone_may_reclaim_and_only_the_taker_is_paid() -> None:
    c = Chain()
    _, fid = filled(c, noia=700)
    at(c, DEADLINE + 3600)
    c.send(OTHER, Reclaim(fid))
    assert bal(c, TAKER) == START_BALANCE and bal(c, OTHER) == START_BALANCE
    assert get_account(c.store, addr(OTHER)).nonce == 1


def test_reclaim_refusals() -> None:
    c = Chain()
    _, fid = filled(c, nonce=1)
    _, fid2 = filled(c, nonce=2)
    at(c, DEADLINE)
    rejects(c, TAKER, Reclaim(b"\x07" * 32), E.UNKNOWN_FILL)
    rejects(c, TAKER, Reclaim(fid), E.BAD_NONCE, nonce=0)
    c.send(COMPLEX, settle([(fid2, 500, 1000, 0)]))   # settling after the deadline is still allowed
    rejects(c, TAKER, Reclaim(fid2), E.FILL_ALREADY_SETTLED)
    c.send(TAKER, Reclaim(fid))
    rejects(c, TAKER, Reclaim(fid), E.FILL_RECLAIMED)   # twice
    rejects(c, OTHER, Reclaim(fid), E.FILL_RECLAIMED)


def test_settle_naming_a_reclaimed_fill_is_refused_whole() -> None:
    c = Chain()
    _, fid = filled(c, nonce=1)
    _, fid2 = filled(c, nonce=2)
    at(c, DEADLINE)
    c.send(TAKER, Reclaim(fid))
    rejects(c, COMPLEX, settle([(fid, 500, 1000, 0)]), E.FILL_RECLAIMED)
    # all or nothing: the good entry next to it is not applied either
    rejects(c, COMPLEX, settle([(fid, 500, 1000, 0), (fid2, 500, 1000, 0)]), E.FILL_RECLAIMED)
    assert c.store.get(escrow_key(fid2)) is not None
    c.send(COMPLEX, settle([(fid2, 500, 1000, 0)]))
    assert bal(c, MAKER) == START_BALANCE + 1000 and bal(c, TAKER) == START_BALANCE - 1000


def test_settle_and_reclaim_in_one_block_first_one_wins() -> None:
    for first in ("settle", "reclaim"):
        c = Chain()
        _, fid = filled(c)
        at(c, DEADLINE)
        s = vtx(COMPLEX, 0, settle([(fid, 500, 1000, 0)]))
        r = vtx(TAKER, 1, Reclaim(fid))
        txs = [s, r] if first == "settle" else [r, s]
        blk, _, rejected = c.block(txs)
        assert len(blk.txs) == 1 and blk.txs[0] == txs[0].raw
        assert [(v, e.reason) for v, e in rejected] == [
            (txs[1], E.FILL_ALREADY_SETTLED if first == "settle" else E.FILL_RECLAIMED)]
        assert total_money(c.store.items()) == 6 * START_BALANCE


def test_a_block_that_reclaims_too_early_is_invalid_for_followers() -> None:
    c = Chain()
    _, fid = filled(c)
    s = c.store
    blk, _, rejected = build_block(s, s.accumulator, s.head, [vtx(TAKER, 1, Reclaim(fid))], PARAMS, addr(0),
                                   DEADLINE, header_at=s.header_at)
    assert not rejected and len(blk.txs) == 1
    execute_block(s, s.accumulator, blk, s.head, PARAMS, header_at=s.header_at)  # valid as built
    early = Block(dataclasses.replace(blk.header, timestamp=DEADLINE - 1), blk.txs)
    with pytest.raises(BlockInvalid) as ei:
        execute_block(s, s.accumulator, early, s.head, PARAMS, header_at=s.header_at)
    assert ei.value.reason == E.TX_REJECTED and E.RECLAIM_TOO_EARLY in ei.value.detail and ei.value.index == 0


def test_the_timeout_is_the_genesis_parameter() -> None:
    c = Chain()
    _, fid = filled(c)
    short = dataclasses.replace(PARAMS, settle_timeout=60)
    v = vtx(TAKER, 1, Reclaim(fid))
    end = GENESIS_TIME + INTERVAL
    with pytest.raises(E.TxRejected) as ei:
        apply_tx(Overlay(c.store), v, BlockContext(short, 9, end + 59))
    assert ei.value.reason == E.RECLAIM_TOO_EARLY
    ov = Overlay(c.store)
    apply_tx(ov, v, BlockContext(short, 9, end + 60))
    assert ov.writes[escrow_key(fid)] is None


def test_reclaim_reasons_are_declared_once() -> None:
    assert (E.FILL_RECLAIMED, E.RECLAIM_TOO_EARLY) == ("fill_reclaimed", "reclaim_too_early")
    import inspect
    src = inspect.getsource(E)
    assert src.count('"fill_reclaimed"') == 1 and src.count('"reclaim_too_early"') == 1
