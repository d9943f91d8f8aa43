"""secp256k1 and keccak-256 the Ethereum way, on coincurve and safe-pysha3 (or pycryptodome).

Signatures are 65 bytes ``r || s || v`` with ``v`` in {27, 28}: the bytes
eth-account and Solidity's ``ecrecover`` use. Only low-s signatures are valid
(``s <= n/2``, EIP-2), so a signature cannot be re-shaped into a second valid
one. An address is the last 20 bytes of keccak-256 of the uncompressed public
key without its 0x04 prefix.
"""

from __future__ import annotations

from coincurve import PrivateKey, PublicKey

from .errors import BAD_SIGNATURE, HIGH_S, DecodeError

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2
ZERO_ADDRESS = b"\x00" * 20


try:  # safe-pysha3: a C keccak, about 1 us per short hash (pycryptodome's wrapper: about 4 us)
    from sha3 import keccak_256 as _keccak_256  # type: ignore[import-untyped]

    def keccak256(data: bytes) -> bytes:
        digest: bytes = _keccak_256(data).digest()
        return digest
except ImportError:  # pragma: no cover - platforms without a safe-pysha3 wheel
    from Crypto.Hash import keccak as _keccak

    def keccak256(data: bytes) -> bytes:
        return _keccak.new(digest_bits=256, data=data).digest()


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
    """The Ethereum rules on the 65 bytes alone (raises DecodeError)."""
    if len(sig) != 65:
        raise DecodeError(BAD_SIGNATURE, "signature is not 65 bytes")
    v = sig[64]
    if v != 27 and v != 28:
        raise DecodeError(BAD_SIGNATURE, f"v = {v}, expected 27 or 28")
    r = int.from_bytes(sig[0:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    if not 0 < r < SECP256K1_N or not 0 < s < SECP256K1_N:
        raise DecodeError(BAD_SIGNATURE, "r or s out of range")
    if s > HALF_N:
        raise DecodeError(HIGH_S, "s > n/2")


def recover_address(digest: bytes, sig: bytes) -> bytes:
    """The address that signed ``digest`` (raises DecodeError on a bad signature)."""
    check_signature_shape(sig)
    if _lib is not None and len(digest) == 32:
        return _recover_direct(digest, sig)
    try:
        pub = PublicKey.from_signature_and_message(sig[:64] + bytes((sig[64] - 27,)), digest, hasher=None)
    except Exception as exc:  # coincurve raises ValueError/Exception on unrecoverable points
        raise DecodeError(BAD_SIGNATURE, f"recovery failed: {exc}") from None
    return address_of_public_key(pub)


try:  # libsecp256k1 through coincurve's own cffi binding: the same three calls as
    # PublicKey.from_signature_and_message + format(), without building Python objects in between
    # (about 2.7 us of 32 per recovery; every validator recovers two signatures per fill)
    from coincurve._libsecp256k1 import ffi as _ffi, lib as _lib  # type: ignore[import-not-found]
    from coincurve.context import GLOBAL_CONTEXT as _CTX

    _UNCOMPRESSED = _lib.SECP256K1_EC_UNCOMPRESSED
except ImportError:  # pragma: no cover - a coincurve without the binding module: the public API above
    _lib = None


def _recover_direct(digest: bytes, sig: bytes) -> bytes:
    ctx = _CTX.ctx
    rsig = _ffi.new("secp256k1_ecdsa_recoverable_signature *")
    pub = _ffi.new("secp256k1_pubkey *")
    out = _ffi.new("unsigned char[65]")
    if not _lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, rsig, sig[:64], sig[64] - 27):
        raise DecodeError(BAD_SIGNATURE, "recovery failed: invalid signature")
    if not _lib.secp256k1_ecdsa_recover(ctx, pub, rsig, digest):
        raise DecodeError(BAD_SIGNATURE, "recovery failed: no public key for this signature")
    _lib.secp256k1_ec_pubkey_serialize(ctx, out, _ffi.new("size_t *", 65), pub, _UNCOMPRESSED)
    return keccak256(_ffi.buffer(out, 65)[1:])[12:]


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
