"""The transaction format: round trips, every decoder reason, fuzzing, pool-safe verification."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.validator import errors as E
from gateway.validator.crypto import SECP256K1_N, keccak256, sign_digest
from gateway.validator.errors import DecodeError
from gateway.validator.order import Domain
from gateway.validator.tx import (HEADER_SIZE, MAX_SETTLE_ENTRIES, MAX_TX_SIZE, RECLAIM, SIG_PREFIX, Cancel,
                                  Checkpoint, Reclaim, Settlement, SettleBatch, Tx, decode_tx, sign_tx, verify_batch,
                                  verify_tx)

from .kit import CHAIN_ID, CONTRACT, DOMAIN, GRID, addr, fill, key, order, raw_tx, settle, signed, transfer


def samples() -> list[bytes]:
    return [
        raw_tx(2, 0, transfer(3, 10**18)),
        raw_tx(3, 5, fill(order(2, nonce=9))),
        raw_tx(2, 1, Cancel(2**255 + 3)),
        raw_tx(1, 0, settle([(b"\x01" * 32, 400, 800, 200), (b"\x02" * 32, 0, 0, 1000)])),
        raw_tx(0, 0, Checkpoint(12, b"\xaa" * 32, b"\xbb" * 32)),
        raw_tx(4, 3, Reclaim(b"\x05" * 32)),
    ]


def reason(raw: bytes, domain: Domain = DOMAIN) -> str:
    with pytest.raises(DecodeError) as ei:
        verify_tx(raw, domain)
    return ei.value.reason


def resign(body: bytes, signer: int) -> bytes:
    return body + sign_digest(key(signer), keccak256(SIG_PREFIX + body))


def test_every_type_round_trips_and_verifies() -> None:
    for raw in samples():
        v = verify_tx(raw, DOMAIN)
        assert v.raw == raw and v.hash == keccak256(raw)
        assert v.tx.encode_body() + raw[-65:] == raw
        assert decode_tx(raw) == v.tx
    assert verify_tx(samples()[1], DOMAIN).order_hash == order(2, nonce=9).digest(DOMAIN)


def test_sizes_are_compact() -> None:
    assert [len(r) for r in samples()] == [154, 327, 134, 384, 174, 134]


def test_sign_tx_refuses_a_foreign_key() -> None:
    with pytest.raises(ValueError):
        sign_tx(Tx(CHAIN_ID, addr(2), 0, transfer(3, 1)), key(3))


def test_decoder_reasons() -> None:
    good = samples()[0]
    assert reason(b"") == E.TRUNCATED
    assert reason(b"\x01" * (MAX_TX_SIZE + 1)) == E.TOO_LARGE
    assert reason(b"\x09" + good[1:]) == E.UNKNOWN_TYPE
    assert reason(good[:50]) == E.TRUNCATED
    assert reason(good[:-66] + good[-65:]) == E.TRUNCATED         # payload one byte short
    assert reason(resign(good[:-65] + b"\x00", 2)) == E.BAD_LENGTH  # one byte too many
    assert reason(good[:-1] + b"\x1d") == E.BAD_SIGNATURE          # v = 29
    assert reason(good[:-65] + bytes(64) + b"\x1b") == E.BAD_SIGNATURE  # r = s = 0
    s = int.from_bytes(good[-33:-1], "big")
    assert reason(good[:-33] + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - good[-1],))) == E.HIGH_S
    assert reason(good, Domain(CHAIN_ID + 1, CONTRACT)) == E.WRONG_CHAIN_ID
    assert reason(resign(good[:-65], 3)) == E.SIGNER_MISMATCH      # signed by someone else
    assert reason(good[:-2] + bytes((good[-2] ^ 1,)) + good[-1:]) == E.SIGNER_MISMATCH  # corrupted s
    zero_sender = good[:9] + bytes(20) + good[29:]
    assert reason(zero_sender) == E.BAD_FIELD
    zero_to = good[:HEADER_SIZE] + bytes(20) + good[HEADER_SIZE + 20:]
    assert reason(zero_to) == E.BAD_FIELD


def test_settle_batch_rules() -> None:
    e1, e2 = Settlement(b"\x01" * 32, 1, 1, 1), Settlement(b"\x02" * 32, 1, 1, 1)
    unsorted = Tx(CHAIN_ID, addr(1), 0, SettleBatch(GRID, 0, bytes(32), (e2, e1)))
    assert reason(sign_tx(unsorted, key(1))) == E.NON_CANONICAL
    dup = Tx(CHAIN_ID, addr(1), 0, SettleBatch(GRID, 0, bytes(32), (e1, e1)))
    assert reason(sign_tx(dup, key(1))) == E.NON_CANONICAL
    empty = Tx(CHAIN_ID, addr(1), 0, SettleBatch(GRID, 0, bytes(32), ()))
    assert reason(sign_tx(empty, key(1))) == E.BAD_FIELD
    many = tuple(Settlement(i.to_bytes(32, "big"), 1, 1, 1) for i in range(1, MAX_SETTLE_ENTRIES + 2))
    assert reason(sign_tx(Tx(CHAIN_ID, addr(1), 0, SettleBatch(GRID, 0, bytes(32), many)), key(1))) == E.BAD_FIELD
    ok = Tx(CHAIN_ID, addr(1), 0, SettleBatch(GRID, 0, bytes(32), many[:-1]))
    assert len(verify_tx(sign_tx(ok, key(1)), DOMAIN).tx.payload.entries) == MAX_SETTLE_ENTRIES


def test_fill_order_signature_is_checked() -> None:
    o = order(2)
    forged = fill(o).__class__(signed(o, signer=4))  # maker 2, signed by 4
    assert reason(raw_tx(3, 0, forged)) == E.ORDER_BAD_SIGNATURE
    other_domain = Domain(CHAIN_ID, b"\x01" * 20)
    from gateway.validator.order import sign_order
    from gateway.validator.tx import Fill
    assert reason(raw_tx(3, 0, Fill(sign_order(o, other_domain, key(2))))) == E.ORDER_BAD_SIGNATURE
    s = signed(o)
    hs = s.signature[:32] + (SECP256K1_N - int.from_bytes(s.signature[32:64], "big")).to_bytes(32, "big") \
        + bytes((55 - s.signature[64],))
    with pytest.raises(DecodeError) as ei:
        verify_tx(raw_tx(3, 0, Fill(s.__class__(o, hs))), DOMAIN)
    assert ei.value.reason == E.ORDER_BAD_SIGNATURE and "high_s" in ei.value.detail


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        verify_tx(data, DOMAIN)
    except DecodeError as exc:
        assert exc.reason in E.__dict__.values()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(samples()), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1,
                                            max_size=4), st.integers(-3, 3))
def test_mutations_are_rejected_with_a_reason(raw: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    b = bytearray(raw)
    for pos, val in edits:
        if pos < len(b):
            b[pos] = val
    if cut < 0:
        del b[cut:]
    elif cut > 0:
        b += bytes(cut)
    mutated = bytes(b)
    try:
        v = verify_tx(mutated, DOMAIN)
    except DecodeError as exc:
        assert exc.reason in E.__dict__.values()
    else:
        assert mutated == raw and v.raw == raw  # only the unmodified tx verifies


def test_errors_and_results_cross_process_boundaries() -> None:
    raws = samples() + [b"\x07junk"]
    local = verify_batch(raws, CHAIN_ID, CONTRACT)
    n = len(samples())
    assert [type(x).__name__ for x in local] == ["VerifiedTx"] * n + ["DecodeError"]
    err = pickle.loads(pickle.dumps(local[-1]))
    assert isinstance(err, DecodeError) and err.reason == E.UNKNOWN_TYPE
    with ProcessPoolExecutor(max_workers=2) as pool:
        remote = list(pool.map(verify_batch, [raws[:3], raws[3:]], [CHAIN_ID] * 2, [CONTRACT] * 2))
    flat = remote[0] + remote[1]
    assert [x.hash for x in flat[:n]] == [x.hash for x in local[:n]]
    assert flat[n].reason == E.UNKNOWN_TYPE


def test_reclaim_layout_is_exactly_one_fill_id() -> None:
    good = raw_tx(4, 3, Reclaim(b"\x05" * 32))
    assert good[0] == RECLAIM and good[HEADER_SIZE:HEADER_SIZE + 32] == b"\x05" * 32
    body = good[:-65]
    assert reason(resign(body[:-1], 4)) == E.TRUNCATED          # a 31-byte fill id
    assert reason(resign(body + b"\x00", 4)) == E.BAD_LENGTH    # 33 bytes
    assert reason(good[:HEADER_SIZE] + good[-65:]) == E.TRUNCATED  # no payload at all
    with pytest.raises(ValueError):
        sign_tx(Tx(CHAIN_ID, addr(4), 0, Reclaim(b"\x05" * 31)), key(4))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1), st.sampled_from([2, 3, 4, 5]),
       st.binary(max_size=40), st.integers(0, 70))
def test_hostile_reclaim_bytes(fid: bytes, nonce: int, sender: int, junk: bytes, cut: int) -> None:
    """Any fill id and nonce round-trips; any truncation or extension of a reclaim is refused with a reason."""
    raw = raw_tx(sender, nonce, Reclaim(fid))
    v = verify_tx(raw, DOMAIN)
    assert v.tx.payload == Reclaim(fid) and v.nonce == nonce and v.sender == addr(sender)
    body = raw[:-65]
    for bad in (resign(body[:max(HEADER_SIZE, len(body) - 1 - cut % 32)], sender), resign(body + junk, sender),
                raw[:len(raw) - 1 - cut]):
        if bad == raw:
            continue
        try:
            verify_tx(bad, DOMAIN)
        except DecodeError as exc:
            assert exc.reason in E.__dict__.values()
        else:
            raise AssertionError("a malformed reclaim verified")
