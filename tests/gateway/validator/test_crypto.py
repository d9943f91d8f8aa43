"""``recover_address`` calls libsecp256k1 through coincurve's cffi binding directly (fewer Python
objects per recovery); it must answer exactly what coincurve's public API answers, for valid
signatures and for arbitrary well-shaped garbage. The shape check compares r and s as bytes and
must give the reasons the numeric rules give; ``recover_canonical`` (the verifier's fast path)
must accept exactly what ``recover_address`` accepts: high s, r or s zero or >= n, v not 27/28."""

from __future__ import annotations

from coincurve import PrivateKey, PublicKey
from hypothesis import given, settings, strategies as st

from gateway.validator import crypto
from gateway.validator.crypto import HALF_N, SECP256K1_N, address_of, keccak256, recover_address, sign_digest
from gateway.validator.errors import BAD_SIGNATURE, HIGH_S, DecodeError


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


def _shape_reference(sig: bytes) -> tuple[str, str] | None:
    """The shape rules as numbers (what ``check_signature_shape`` compares as bytes)."""
    if len(sig) != 65:
        return (BAD_SIGNATURE, "signature is not 65 bytes")
    if sig[64] not in (27, 28):
        return (BAD_SIGNATURE, f"v = {sig[64]}, expected 27 or 28")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    if not 0 < r < SECP256K1_N or not 0 < s < SECP256K1_N:
        return (BAD_SIGNATURE, "r or s out of range")
    if s > HALF_N:
        return (HIGH_S, "s > n/2")
    return None


EDGE = st.sampled_from([0, 1, HALF_N - 1, HALF_N, HALF_N + 1, SECP256K1_N - 1, SECP256K1_N, SECP256K1_N + 1,
                        2**256 - 1])
SCALARS = st.one_of(EDGE, st.integers(0, 2**256 - 1), st.integers(1, HALF_N))
VS = st.one_of(st.sampled_from([27, 28]), st.integers(0, 255))


def _sig(r: int, s: int, v: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((v,))


@settings(max_examples=400, deadline=None)
@given(r=SCALARS, s=SCALARS, v=VS, cut=st.sampled_from([None, 64, 66]))
def test_the_shape_check_compares_bytes_as_numbers(r, s, v, cut):
    sig = _sig(r, s, v)
    if cut == 66:
        sig += b"\x00"
    elif cut is not None:
        sig = sig[:cut]
    want = _shape_reference(sig)
    for form in (sig, bytearray(sig), memoryview(sig)):
        try:
            crypto.check_signature_shape(form)
            got = None
        except DecodeError as exc:
            got = (exc.reason, exc.detail)
        assert got == want


def _recovered(digest: bytes, sig: bytes) -> bytes | None:
    try:
        return recover_address(digest, sig)
    except DecodeError:
        return None


@settings(max_examples=400, deadline=None)
@given(r=SCALARS, s=SCALARS, v=VS, digest=st.binary(min_size=32, max_size=32))
def test_recover_canonical_accepts_exactly_what_recover_address_accepts(r, s, v, digest):
    sig = _sig(r, s, v)
    assert crypto.recover_canonical(digest, sig) == _recovered(digest, sig)


@settings(max_examples=100, deadline=None)
@given(secret=st.integers(1, SECP256K1_N - 1), digest=st.binary(min_size=32, max_size=32))
def test_recover_canonical_refuses_the_high_s_twin_of_a_valid_signature(secret, digest):
    key = PrivateKey(secret.to_bytes(32, "big"))
    sig = sign_digest(key, digest)
    assert crypto.recover_canonical(digest, sig) == address_of(key)
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - sig[64],))   # same key, s > n/2
    assert _reference(digest, twin) == address_of(key)        # libsecp256k1 alone would accept it
    assert crypto.recover_canonical(digest, twin) is None
    try:
        recover_address(digest, twin)
    except DecodeError as exc:
        assert exc.reason == HIGH_S
    else:
        raise AssertionError("a high-s signature recovered")


def test_recovery_buffers_are_per_thread():
    import threading
    key = PrivateKey(b"\x05" * 32)
    sigs = [(d, sign_digest(key, d)) for d in (keccak256(bytes((i,))) for i in range(50))]
    bad: list[bytes] = []

    def run() -> None:
        for _ in range(20):
            for d, sig in sigs:
                if crypto.recover_canonical(d, sig) != address_of(key) or recover_address(d, sig) != address_of(key):
                    bad.append(d)

    ts = [threading.Thread(target=run) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


@settings(max_examples=100, deadline=None)
@given(sigs=st.lists(st.one_of(st.builds(_sig, SCALARS, SCALARS, VS), st.binary(max_size=70)), max_size=6),
       secret=st.integers(1, SECP256K1_N - 1), data=st.data())
def test_recover_many_answers_as_recover_canonical_one_by_one(sigs, secret, data):
    key = PrivateKey(secret.to_bytes(32, "big"))
    digests = [data.draw(st.binary(min_size=32, max_size=32)) for _ in sigs]
    good = keccak256(b"ok")
    pairs = list(zip(digests, sigs)) + [(good, sign_digest(key, good))]
    data.draw(st.randoms()).shuffle(pairs)
    ds, ss = [d for d, _ in pairs], [s for _, s in pairs]
    assert crypto.recover_many(ds, ss) == [crypto.recover_canonical(d, s) for d, s in pairs]
    assert address_of(key) in crypto.recover_many(ds, ss)
