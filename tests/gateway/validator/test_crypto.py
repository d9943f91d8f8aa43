"""``recover_address`` calls libsecp256k1 through coincurve's cffi binding directly (fewer Python
objects per recovery); it must answer exactly what coincurve's public API answers, for valid
signatures and for arbitrary well-shaped garbage."""

from __future__ import annotations

from coincurve import PrivateKey, PublicKey
from hypothesis import given, settings, strategies as st

from gateway.validator import crypto
from gateway.validator.crypto import HALF_N, SECP256K1_N, address_of, keccak256, recover_address, sign_digest
from gateway.validator.errors import BAD_SIGNATURE, DecodeError


def _reference(digest: bytes, sig: bytes) -> bytes | None:
    """The public coincurve API: the address, or None when no key recovers."""
    try:
        pub = PublicKey.from_signature_and_message(sig[:64] + bytes((sig[64] - 27,)), digest, hasher=None)
    except Exception:
        return None
    return keccak256(pub.format(compressed=False)[1:])[12:]


def test_the_direct_binding_is_in_use():
    assert crypto._lib is not None


@settings(max_examples=200, deadline=None)
@given(secret=st.integers(1, SECP256K1_N - 1), digest=st.binary(min_size=32, max_size=32))
def test_valid_signatures_recover_their_signer(secret, digest):
    key = PrivateKey(secret.to_bytes(32, "big"))
    sig = sign_digest(key, digest)
    assert recover_address(digest, sig) == address_of(key) == _reference(digest, sig)


@settings(max_examples=400, deadline=None)
@given(r=st.integers(1, SECP256K1_N - 1), s=st.integers(1, HALF_N), v=st.sampled_from([27, 28]),
       digest=st.binary(min_size=32, max_size=32))
def test_arbitrary_signatures_agree_with_coincurve(r, s, v, digest):
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((v,))
    want = _reference(digest, sig)
    try:
        got = recover_address(digest, sig)
    except DecodeError as exc:
        assert exc.reason == BAD_SIGNATURE
        assert want is None
    else:
        assert got == want


def test_an_r_off_the_curve_is_a_bad_signature():
    # x = 5: 5^3 + 7 = 132 is not a square mod p, so no curve point has this r
    sig = (5).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1b"
    assert _reference(b"\x01" * 32, sig) is None
    try:
        recover_address(b"\x01" * 32, sig)
    except DecodeError as exc:
        assert exc.reason == BAD_SIGNATURE
    else:
        raise AssertionError("recovered a key for an r that is not on the curve")
