"""The EIP-712 order format against eth-account (the reference implementation)."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.validator.crypto import SECP256K1_N, ZERO_ADDRESS, keccak256, parse_address, to_checksum
from gateway.validator.errors import BAD_FIELD, BAD_SIGNATURE, HIGH_S, TRUNCATED, DecodeError
from gateway.validator.order import (DOMAIN_TYPEHASH, ORDER_TYPE, ORDER_TYPEHASH, Domain, Order, SignedOrder,
                                     grid_id, order_signer, sign_order, typed_data)

from .kit import CONTRACT, DOMAIN, addr, key, order

SECRET = (1002).to_bytes(32, "big")  # kit.key(2)


def test_type_strings_are_the_solidity_ones() -> None:
    assert ORDER_TYPE == ("Order(uint256 nonce,uint64 expiry,address maker,address taker,uint64 wh,"
                          "uint64 intervalStart,uint256 noia,bytes32 grid)")
    assert ORDER_TYPEHASH == keccak256(ORDER_TYPE.encode())
    assert DOMAIN_TYPEHASH == keccak256(
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")


def test_digest_and_signature_match_eth_account() -> None:
    o = order(2, nonce=7, noia=123 * 10**15, wh=1500, taker=3)
    ours = sign_order(o, DOMAIN, key(2))
    msg = encode_typed_data(full_message=typed_data(o, DOMAIN))
    theirs = Account.from_key(SECRET).sign_message(msg)
    assert theirs.message_hash == o.digest(DOMAIN)
    assert theirs.signature == ours.signature  # RFC 6979, low-s, v = 27/28: byte for byte
    assert Account.recover_message(msg, signature=ours.signature) == to_checksum(addr(2))
    assert order_signer(ours, DOMAIN) == (addr(2), o.digest(DOMAIN))


def test_domain_separator_matches_eth_account_hash_domain() -> None:
    from eth_account._utils.encode_typed_data.encoding_and_hashing import hash_domain
    assert hash_domain(DOMAIN.typed_data_domain()) == DOMAIN.separator


def test_order_for_another_domain_recovers_someone_else() -> None:
    o = order(2)
    s = sign_order(o, DOMAIN, key(2))
    for other in (Domain(DOMAIN.chain_id + 1, CONTRACT), Domain(DOMAIN.chain_id, b"\x01" * 20)):
        assert order_signer(s, other)[0] != addr(2)


def test_grid_id_is_keccak_of_the_name() -> None:
    assert grid_id("complex-7") == keccak256(b"complex-7")


def test_high_s_and_bad_v_are_refused() -> None:
    o = order(2)
    s = sign_order(o, DOMAIN, key(2))
    r, sv, v = s.signature[:32], int.from_bytes(s.signature[32:64], "big"), s.signature[64]
    flipped = SignedOrder(o, r + (SECP256K1_N - sv).to_bytes(32, "big") + bytes((55 - v,)))
    with pytest.raises(DecodeError) as ei:
        order_signer(flipped, DOMAIN)
    assert ei.value.reason == HIGH_S
    with pytest.raises(DecodeError) as ei:
        order_signer(SignedOrder(o, s.signature[:64] + b"\x01"), DOMAIN)
    assert ei.value.reason == BAD_SIGNATURE


def test_decode_errors() -> None:
    with pytest.raises(DecodeError) as ei:
        Order.decode(bytes(100))
    assert ei.value.reason == TRUNCATED
    with pytest.raises(DecodeError) as ei:
        Order.decode(bytes(160))  # zero maker
    assert ei.value.reason == BAD_FIELD


def test_checksum_addresses() -> None:
    a = addr(3)
    assert parse_address(to_checksum(a)) == a
    assert parse_address("0x" + a.hex()) == a
    bad = to_checksum(a).swapcase().replace("0X", "0x")
    if bad[2:] != bad[2:].lower() and bad[2:] != bad[2:].upper():
        with pytest.raises(ValueError):
            parse_address(bad)


orders = st.builds(
    Order, nonce=st.integers(0, 2**256 - 1), expiry=st.integers(0, 2**64 - 1),
    maker=st.binary(min_size=20, max_size=20).filter(lambda b: b != ZERO_ADDRESS),
    taker=st.one_of(st.just(ZERO_ADDRESS), st.binary(min_size=20, max_size=20)),
    wh=st.integers(0, 2**64 - 1), interval_start=st.integers(0, 2**64 - 1), noia=st.integers(0, 2**256 - 1),
    grid=st.binary(min_size=32, max_size=32))


@settings(max_examples=40, deadline=None)
@given(orders, st.integers(1, 2**64 - 1))
def test_any_order_round_trips_and_hashes_like_eth_account(o: Order, chain_id: int) -> None:
    dom = Domain(chain_id, CONTRACT)
    assert Order.decode(o.encode()) == o
    msg = encode_typed_data(full_message=typed_data(o, dom))
    assert msg.version + msg.header + msg.body == b"\x01" + dom.separator + o.struct_hash()
    s = sign_order(o, dom, key(2))
    assert SignedOrder.decode(s.encode()) == s
    assert order_signer(s, dom)[0] == addr(2)
    assert Account.recover_message(msg, signature=s.signature) == to_checksum(addr(2))
