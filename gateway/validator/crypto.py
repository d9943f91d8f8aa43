"""secp256k1 and keccak-256 the Ethereum way, on coincurve and safe-pysha3 (or pycryptodome).

Signatures are 65 bytes ``r || s || v`` with ``v`` in {27, 28}: the bytes
eth-account and Solidity's ``ecrecover`` use. Only low-s signatures are valid
(``s <= n/2``, EIP-2), so a signature cannot be re-shaped into a second valid
one. An address is the last 20 bytes of keccak-256 of the uncompressed public
key without its 0x04 prefix.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterable, Sequence

from coincurve import PrivateKey, PublicKey

from .errors import BAD_SIGNATURE, HIGH_S, DecodeError

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2
ZERO_ADDRESS = b"\x00" * 20
_Z32 = bytes(32)
_N_BYTES = SECP256K1_N.to_bytes(32, "big")
_HALF_N_BYTES = HALF_N.to_bytes(32, "big")


try:  # safe-pysha3: a C keccak, about 1 us per short hash (pycryptodome's wrapper: about 4 us)
    from sha3 import keccak_256 as _keccak_256  # type: ignore[import-untyped]

    def keccak256(data: bytes) -> bytes:
        digest: bytes = _keccak_256(data).digest()
        return digest

    _digest = operator.methodcaller("digest")

    def keccak256_many(items: Iterable[bytes]) -> list[bytes]:
        """``[keccak256(x) for x in items]`` with the loop in C (no Python call per item)."""
        return list(map(_digest, map(_keccak_256, items)))
except ImportError:  # pragma: no cover - platforms without a safe-pysha3 wheel
    from Crypto.Hash import keccak as _keccak

    def keccak256(data: bytes) -> bytes:
        return _keccak.new(digest_bits=256, data=data).digest()

    def keccak256_many(items: Iterable[bytes]) -> list[bytes]:
        return [keccak256(x) for x in items]


def address_of_public_key(pub: PublicKey) -> bytes:
    return keccak256(pub.format(compressed=False)[1:])[12:]


def private_key(secret: bytes) -> PrivateKey:
    if len(secret) != 32:
        raise ValueError("a secp256k1 secret is 32 bytes")
    return PrivateKey(secret)


def address_of(key: PrivateKey) -> bytes:
    return address_of_public_key(key.public_key)


def sign_digest(key: PrivateKey, digest: bytes) -> bytes:
    """``r || s || v`` over a 32-byte digest (RFC 6979, low-s by libsecp256k1)."""
    rsv = key.sign_recoverable(digest, hasher=None)
    return rsv[:64] + bytes((rsv[64] + 27,))


def check_signature_shape(sig: bytes) -> None:
    """The Ethereum rules on the 65 bytes alone (raises DecodeError). r and s are compared as
    32-byte big-endian strings, which order as the numbers do (no int conversion)."""
    if len(sig) != 65:
        raise DecodeError(BAD_SIGNATURE, "signature is not 65 bytes")
    if type(sig) is not bytes:
        sig = bytes(sig)
    v = sig[64]
    if v != 27 and v != 28:
        raise DecodeError(BAD_SIGNATURE, f"v = {v}, expected 27 or 28")
    r, s = sig[:32], sig[32:64]
    if not _Z32 < r < _N_BYTES or not _Z32 < s < _N_BYTES:
        raise DecodeError(BAD_SIGNATURE, "r or s out of range")
    if s > _HALF_N_BYTES:
        raise DecodeError(HIGH_S, "s > n/2")


def recover_address(digest: bytes, sig: bytes) -> bytes:
    """The address that signed ``digest`` (raises DecodeError on a bad signature)."""
    check_signature_shape(sig)
    if _lib is not None and len(digest) == 32:
        return _recover_direct(digest, bytes(sig))
    try:
        pub = PublicKey.from_signature_and_message(sig[:64] + bytes((sig[64] - 27,)), digest, hasher=None)
    except Exception as exc:  # coincurve raises ValueError/Exception on unrecoverable points
        raise DecodeError(BAD_SIGNATURE, f"recovery failed: {exc}") from None
    return address_of_public_key(pub)


def recover_canonical(digest: bytes, sig: bytes) -> bytes | None:
    """The address that signed the 32-byte ``digest`` with the 65-byte ``sig``, or None when
    ``recover_address`` would raise (any shape rule broken, or no key recovers): the verifier's
    fast path, which takes only the accepting answer from here and asks ``recover_address`` for
    the reason otherwise. Checks v in {27, 28}, 0 < r and 0 < s <= n/2 on the bytes; r >= n is
    refused by libsecp256k1's parse_compact (its overflow check), r = 0 is refused here too
    (tests/gateway/validator/test_crypto.py compares the two on every case)."""
    if _lib is None or len(sig) != 65 or type(sig) is not bytes or len(digest) != 32:
        try:
            return recover_address(digest, sig)
        except DecodeError:
            return None
    v = sig[64] - 27
    s = sig[32:64]
    if (v != 0 and v != 1) or not _Z32 < s <= _HALF_N_BYTES or sig.startswith(_Z32):
        return None
    b = _TLS
    ctx = _CTX.ctx
    if not _lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, b.rsig, sig, v) \
            or not _lib.secp256k1_ecdsa_recover(ctx, b.pub, b.rsig, digest):
        return None
    b.outlen[0] = 65
    _lib.secp256k1_ec_pubkey_serialize(ctx, b.out, b.outlen, b.pub, _UNCOMPRESSED)
    return keccak256(b.buf[1:])[12:]


def recover_many(digests: Sequence[bytes], sigs: Sequence[bytes]) -> list[bytes | None]:
    """``recover_canonical`` over pairs, in three passes: the shape rules on the bytes, then the C calls
    (parse, recover, serialize) in one tight loop, then the addresses' keccak. The same recoveries cost
    about 10% less than one at a time between the hashing and the Python around them (measured on
    fills: bench/intake_cpu.py), libsecp256k1's tables staying in cache."""
    if _lib is None:
        return [recover_canonical(d, s) for d, s in zip(digests, sigs)]
    out: list[bytes | None] = [None] * len(sigs)
    todo: list[int] = []
    for i, sig in enumerate(sigs):
        if type(sig) is not bytes or len(sig) != 65 or len(digests[i]) != 32 or type(digests[i]) is not bytes:
            out[i] = recover_canonical(digests[i], sig)
            continue
        v = sig[64]
        if (v == 27 or v == 28) and _Z32 < sig[32:64] <= _HALF_N_BYTES and not sig.startswith(_Z32):
            todo.append(i)
    b = _TLS
    ctx, rsig, pub, outlen, buf = _CTX.ctx, b.rsig, b.pub, b.outlen, b.buf
    parse, recover = _lib.secp256k1_ecdsa_recoverable_signature_parse_compact, _lib.secp256k1_ecdsa_recover
    serialize, flags = _lib.secp256k1_ec_pubkey_serialize, _UNCOMPRESSED
    keys: list[tuple[int, bytes]] = []
    for i in todo:
        sig = sigs[i]
        if parse(ctx, rsig, sig, sig[64] - 27) and recover(ctx, pub, rsig, digests[i]):
            outlen[0] = 65
            serialize(ctx, b.out, outlen, pub, flags)
            keys.append((i, buf[1:]))
    for i, key in keys:
        out[i] = keccak256(key)[12:]
    return out


try:  # libsecp256k1 through coincurve's own cffi binding: the same three calls as
    # PublicKey.from_signature_and_message + format(), without building Python objects in between
    # (about 2.7 us of 32 per recovery; every validator recovers two signatures per fill)
    from coincurve._libsecp256k1 import ffi as _ffi, lib as _lib  # type: ignore[import-not-found]
    from coincurve.context import GLOBAL_CONTEXT as _CTX

    _UNCOMPRESSED = _lib.SECP256K1_EC_UNCOMPRESSED
except ImportError:  # pragma: no cover - a coincurve without the binding module: the public API above
    _lib = None


class _Buffers(threading.local):
    """The C objects one recovery writes, allocated once per thread (about 0.8 us of cffi
    allocations per recovery otherwise)."""

    def __init__(self) -> None:
        self.rsig = _ffi.new("secp256k1_ecdsa_recoverable_signature *")
        self.pub = _ffi.new("secp256k1_pubkey *")
        self.out = _ffi.new("unsigned char[65]")
        self.outlen = _ffi.new("size_t *", 65)
        self.buf = _ffi.buffer(self.out, 65)


_TLS: _Buffers = _Buffers() if _lib is not None else None  # type: ignore[assignment]


def _recover_direct(digest: bytes, sig: bytes) -> bytes:
    b = _TLS
    ctx = _CTX.ctx
    if not _lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, b.rsig, sig, sig[64] - 27):
        raise DecodeError(BAD_SIGNATURE, "recovery failed: invalid signature")
    if not _lib.secp256k1_ecdsa_recover(ctx, b.pub, b.rsig, digest):
        raise DecodeError(BAD_SIGNATURE, "recovery failed: no public key for this signature")
    b.outlen[0] = 65
    _lib.secp256k1_ec_pubkey_serialize(ctx, b.out, b.outlen, b.pub, _UNCOMPRESSED)
    return keccak256(b.buf[1:])[12:]


def parse_address(text: str) -> bytes:
    """``0x`` + 40 hex digits (any case; a mixed-case address must match EIP-55)."""
    if not isinstance(text, str) or len(text) != 42 or not text.startswith(("0x", "0X")):
        raise ValueError(f"not an address: {text!r}")
    raw = bytes.fromhex(text[2:])
    body = text[2:]
    if body != body.lower() and body != body.upper() and to_checksum(raw) != text:
        raise ValueError(f"bad EIP-55 checksum: {text}")
    return raw


def to_checksum(addr: bytes) -> str:
    """EIP-55 mixed-case hex."""
    hexed = addr.hex()
    h = keccak256(hexed.encode()).hex()
    return "0x" + "".join(c.upper() if c.isalpha() and int(h[i], 16) >= 8 else c for i, c in enumerate(hexed))
