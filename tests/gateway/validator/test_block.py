"""Blocks: encoding, tx Merkle root and proofs, and what makes a block invalid."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.validator import errors as E
from gateway.validator.block import (DUPLICATE_TX, EMPTY_ROOT, MAX_BLOCK_TXS, Block, CompactBlock, Header,
                                     decode_block, decode_compact, merkle_proof, merkle_root, verify_merkle_proof)
from gateway.validator.crypto import keccak256
from gateway.validator.errors import BlockInvalid, DecodeError
from gateway.validator.execute import build_block, execute_block
from gateway.validator.state import DictState, accumulate, state_root, update_accumulator

from .kit import AUTHORITY, GENESIS, PARAMS, Chain, addr, fill, order, raw_tx, transfer, vtx


def test_genesis_header_commits_to_the_genesis_file() -> None:
    g = GENESIS.header()
    assert g.height == 0 and g.parent_hash == GENESIS.hash and g.tx_root == EMPTY_ROOT
    assert g.state_root == state_root(accumulate(GENESIS.state().data.items()))
    assert len(g.encode()) == 144 and g.hash == keccak256(g.encode())


def test_block_round_trip_and_strict_decoder() -> None:
    c = Chain()
    c.send(2, transfer(3, 1))
    blk = c.store.block_at(1)
    data = blk.encode()
    assert decode_block(data) == blk
    for bad, reason in ((data + b"\x00", E.BAD_LENGTH), (data[:-1], E.TRUNCATED), (data[:100], E.TRUNCATED),
                        (data[:144] + b"\xff\xff\xff\xff", E.TOO_LARGE)):
        with pytest.raises(DecodeError) as ei:
            decode_block(bad)
        assert ei.value.reason == reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_block_decoder_never_crashes(data: bytes) -> None:
    try:
        decode_block(data)
    except DecodeError:
        pass


def test_compact_block_round_trip_and_strict_decoder() -> None:
    c = Chain()
    c.send(2, transfer(3, 1))
    c.send(3, transfer(4, 1))
    blk = c.store.block_at(2)
    cb = CompactBlock(blk.header, tuple(keccak256(r) for r in blk.txs))
    data = cb.encode()
    assert len(data) == 144 + 4 + 32 * len(blk.txs)
    assert decode_compact(data) == cb and decode_compact(data).hash == blk.hash
    assert merkle_root(list(cb.tx_hashes)) == blk.header.tx_root    # the root is over the hashes alone
    h = keccak256(b"x")
    twice = CompactBlock(blk.header, (h, keccak256(b"y"), h)).encode()
    oversize = blk.header.encode() + (MAX_BLOCK_TXS + 1).to_bytes(4, "big")
    for bad, reason in ((data + b"\x00", E.BAD_LENGTH), (data[:-1], E.TRUNCATED), (data[:147], E.TRUNCATED),
                        (twice, DUPLICATE_TX), (oversize, E.TOO_LARGE)):
        with pytest.raises(DecodeError) as ei:
            decode_compact(bad)
        assert ei.value.reason == reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.binary(min_size=32, max_size=32), max_size=8))
def test_compact_decoder_never_crashes(data: bytes, hashes: list[bytes]) -> None:
    for d in (data, GENESIS.header().encode() + len(hashes).to_bytes(4, "big") + b"".join(hashes) + data):
        try:
            cb = decode_compact(d)
        except DecodeError as exc:
            assert exc.reason in (E.TRUNCATED, E.BAD_LENGTH, E.TOO_LARGE, DUPLICATE_TX)
        else:
            assert cb.encode() == d and len(set(cb.tx_hashes)) == len(cb.tx_hashes)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40), st.data())
def test_merkle_proofs(leaves: list[bytes], data: st.DataObject) -> None:
    root = merkle_root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    proof = merkle_proof(leaves, i)
    assert verify_merkle_proof(leaves[i], proof, root)
    assert not verify_merkle_proof(b"\x00" * 32, proof, root) or leaves[i] == b"\x00" * 32


def test_invalid_blocks() -> None:
    c = Chain()
    s = c.store
    txs = [vtx(2, 0, transfer(3, 5)), vtx(3, 0, fill(order(2)))]
    blk, res, rejected = build_block(s, s.accumulator, s.head, txs, PARAMS, addr(AUTHORITY), c.time + 1)
    assert not rejected and len(blk.txs) == 2
    assert execute_block(s, s.accumulator, blk, s.head, PARAMS).state_root == blk.header.state_root

    def bad(block: Block, reason: str) -> None:
        with pytest.raises(BlockInvalid) as ei:
            execute_block(s, s.accumulator, block, s.head, PARAMS)
        assert ei.value.reason == reason

    h = blk.header
    bad(Block(dataclasses.replace(h, state_root=b"\x00" * 32), blk.txs), E.STATE_ROOT_MISMATCH)
    bad(Block(dataclasses.replace(h, tx_root=b"\x00" * 32), blk.txs), E.TX_ROOT_MISMATCH)
    bad(Block(h, blk.txs[::-1]), E.TX_ROOT_MISMATCH)
    bad(Block(dataclasses.replace(h, height=5), blk.txs), E.BAD_HEADER)
    bad(Block(dataclasses.replace(h, parent_hash=b"\x01" * 32), blk.txs), E.BAD_HEADER)
    bad(Block(dataclasses.replace(h, chain_id=1), blk.txs), E.BAD_HEADER)
    bad(Block(dataclasses.replace(h, timestamp=s.head.timestamp - 1), blk.txs), E.BAD_HEADER)
    # a replayed tx inside a block makes the whole block invalid, pointing at it
    replay = txs + [txs[0]]
    hdr = dataclasses.replace(h, tx_root=merkle_root([v.hash for v in replay]))
    with pytest.raises(BlockInvalid) as ei:
        execute_block(s, s.accumulator, Block(hdr, tuple(v.raw for v in replay)), s.head, PARAMS)
    assert ei.value.reason == E.TX_REJECTED and ei.value.index == 2 and "bad_nonce" in ei.value.detail
    # a tx that does not verify
    junk = raw_tx(2, 0, transfer(3, 5))[:-1] + b"\x00"
    hdr = dataclasses.replace(h, tx_root=EMPTY_ROOT)
    with pytest.raises(BlockInvalid) as ei:
        execute_block(s, s.accumulator, Block(hdr, (junk,)), s.head, PARAMS)
    assert ei.value.reason == E.TX_REJECTED and "bad_signature" in ei.value.detail


def test_builder_drops_rejected_and_keeps_going() -> None:
    c = Chain()
    good, dup = vtx(2, 0, transfer(3, 5)), vtx(2, 0, transfer(4, 5))
    blk, res, rejected = c.block([good, dup, vtx(3, 0, transfer(2, 1))])
    assert len(blk.txs) == 2 and [r[1].reason for r in rejected] == [E.BAD_NONCE]
    assert [r.index for r in res.receipts] == [0, 1]


def test_incremental_root_equals_root_from_scratch() -> None:
    c = Chain()
    for i in range(5):
        c.send(2 + i % 3, transfer(3 + i % 2, 10 + i))
    c.send(3, fill(order(2)))
    assert state_root(accumulate(c.store.items())) == c.store.head.state_root
    # deleting and re-adding a key returns to the same accumulator
    base = DictState(dict(c.store.items()))
    acc = accumulate(base.data.items())
    k = next(iter(base.data))
    gone = update_accumulator(acc, base, {k: None})
    assert gone != acc
    assert update_accumulator(gone, DictState({x: y for x, y in base.data.items() if x != k}),
                              {k: base.data[k]}) == acc


def test_header_decode_rejects_wrong_sizes() -> None:
    with pytest.raises(DecodeError):
        Header.decode(b"\x00" * 143)
    with pytest.raises(DecodeError):
        Header.decode(b"\x00" * 145)
