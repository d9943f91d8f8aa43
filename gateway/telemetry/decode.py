"""Strict decoding and signature verification of telemetry messages.

``decode_message(data)`` turns one ``tele`` message (a COSE_Sign1, or a CBOR
array of them) into ``Sign1`` records whose payload has been checked but whose
signature has not; ``verify(sign1, public_key)`` checks the ES256 signature and
returns the ``Reading``. Every failure raises ``TelemetryError`` with a
``reason`` from ``REASONS``.

Strict about meaning, lenient about encoding: a message must mean exactly what
the format says (tag 18, protected header {1: -7} and nothing else, unprotected
header {4: kid} and nothing else, payload keys 1..8 with their types and
ranges, kid == payload device id, 64-byte signature; no duplicate map keys, no
other tags, no trailing bytes). How it is encoded is free within well-formed
CBOR (non-shortest heads, indefinite lengths, any map key order), because the
signature covers the bytes as sent and other COSE implementations make other
choices. The Sig_structure is always built with definite, shortest lengths
(RFC 9052 section 9).

Fast path: cbor2's C decoder parses the message; if re-encoding the result
canonically gives back exactly the input, the input is the unique canonical
encoding of that value and is taken as parsed (every firmware message takes
this path). Anything else goes through ``cbor_reader.Reader``, a small strict reader that
is the authority on what is well-formed, so the reason for a rejection never
depends on which path saw it first.
"""

from __future__ import annotations

import functools
import logging
import struct
import threading
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .cbor_reader import CborError, Reader
from .format import (ALG_ES256, DEVICE_ID_SIZE, FLAGS_ALL, HEADER_ALG, HEADER_KID, I32_MAX, I32_MIN,
                     MAX_BATCH, MAX_MESSAGE_SIZE, MAX_SIGN1_SIZE, PAYLOAD_KEYS, PROTECTED_ES256,
                     SIGNATURE_SIZE, TAG_COSE_SIGN1, U32_MAX, Reading)

log = logging.getLogger(__name__)

REASONS: dict[str, str] = {
    "oversize": f"message larger than the cap ({MAX_SIGN1_SIZE} bytes per COSE_Sign1, "
                f"{MAX_MESSAGE_SIZE} per array)",
    "not_cbor": "not well-formed CBOR (truncated, reserved encodings, bad UTF-8, nested too deep)",
    "trailing_data": "bytes after the end of the CBOR item",
    "empty_batch": "an array holding no message",
    "batch_too_large": f"an array holding more than {MAX_BATCH} messages",
    "not_sign1_tag": "a message is not CBOR tag 18 (COSE_Sign1)",
    "bad_structure": "COSE_Sign1 is not a 4-element array, or a map has duplicate or unusable keys",
    "bad_protected_header": "protected header is not a bstr holding a map with only alg",
    "alg_not_es256": "protected alg missing or not ES256 (-7)",
    "bad_unprotected_header": "unprotected header is not a map holding only kid",
    "bad_kid": "kid missing or not a 9-byte bstr",
    "kid_mismatch": "kid differs from the device id in the payload",
    "bad_payload": "payload missing, not a map of keys 1..8, or a value of the wrong type or range",
    "bad_signature_length": "signature is not a 64-byte bstr (raw r||s)",
    "wrong_device": "kid is not the device whose key was given",
    "bad_signature": "ES256 signature does not verify under the device's key",
    "bad_key": "public key is not a P-256 point (64-byte X||Y, SEC1, PEM or a key object)",
}


class TelemetryError(ValueError):
    """A message or key was rejected; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise AssertionError(f"undocumented telemetry reason {reason!r}")
        super().__init__(f"{reason}: {detail or REASONS[reason]}")
        self.reason = reason
        self.detail = detail or REASONS[reason]


class DecodeError(TelemetryError):
    """The bytes are not a well-formed telemetry message."""


class VerificationError(TelemetryError):
    """A well-formed message whose signature or device does not check out."""


class PublicKeyError(TelemetryError):
    """The public key given to verify with is unusable (reason ``bad_key``)."""


@dataclass(frozen=True, slots=True)
class Sign1:
    """One structurally valid COSE_Sign1 (signature not yet checked)."""

    protected: bytes   # the protected header bstr's content, as sent
    kid: bytes         # 9-byte device id from the unprotected header
    payload: bytes     # the payload bstr's content, as sent
    signature: bytes   # 64-byte r||s
    reading: Reading   # decoded payload: trust it only after verify()
    raw: bytes         # this COSE_Sign1's bytes as received (evidence)

    def sig_structure(self) -> bytes:
        """The signed bytes: ["Signature1", protected, h'', payload] (RFC 9052 4.4)."""
        if self.protected == PROTECTED_ES256:
            return _TBS_ES256 + _bstr_head(len(self.payload)) + self.payload
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])


_TBS_ES256 = b"\x84\x6aSignature1\x43\xa1\x01\x26\x40"
_SIGN1_ES256 = b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x49"
# cbor2 6 decodes arrays to tuples and maps inside them to frozendicts; cbor2 5 to lists and dicts
_ARRAY = (tuple, list)
_MAP = (dict, getattr(cbor2, "frozendict", dict))


def _bstr_head(n: int) -> bytes:
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return struct.pack(">BH", 0x59, n)
    return struct.pack(">BI", 0x5A, n)


def _array_head(n: int) -> bytes:
    return bytes((0x80 | n,)) if n < 24 else bytes((0x98, n))


def _strict_inner(data: bytes, reason: str) -> Any:
    """A CBOR item filling ``data`` exactly (a bstr-wrapped header or payload)."""
    p = Reader(data)
    try:
        value = p.item(1)
    except CborError as e:
        raise DecodeError(reason, e.detail) from None
    if p.pos != len(data):
        raise DecodeError(reason, f"{len(data) - p.pos} bytes after the CBOR item")
    return value


# -- the COSE_Sign1 structure ------------------------------------------------------------

def _is_uint(v: Any, limit: int) -> bool:
    return type(v) is int and 0 <= v <= limit


def _reading(payload: Any, strict: bool) -> Reading:
    if type(payload) is not bytes:
        if payload is None:
            raise DecodeError("bad_payload", "detached payload (nil) is not supported")
        raise DecodeError("bad_payload", f"payload is {type(payload).__name__}, expected bstr")
    if strict:
        m = _strict_inner(payload, "bad_payload")
    else:
        m = cbor2.loads(payload)
    if type(m) not in _MAP:
        raise DecodeError("bad_payload", f"payload is {type(m).__name__}, expected a map")
    if len(m) != 8 or any(type(k) is not int for k in m) or m.keys() != PAYLOAD_KEYS:
        keys = sorted(repr(k) for k in m)
        raise DecodeError("bad_payload", f"payload keys are {', '.join(keys) or 'none'}, expected 1..8")
    device_id, flags, power = m[1], m[8], m[7]
    if type(device_id) is not bytes or len(device_id) != DEVICE_ID_SIZE:
        raise DecodeError("bad_payload", "device id (key 1) must be a 9-byte bstr")
    for key, name in ((2, "seq"), (3, "time"), (4, "import_wh"), (5, "export_wh"), (6, "pv_wh")):
        if not _is_uint(m[key], U32_MAX):
            raise DecodeError("bad_payload", f"{name} (key {key}) must be a uint32, got {m[key]!r}")
    if type(power) is not int or not I32_MIN <= power <= I32_MAX:
        raise DecodeError("bad_payload", f"power_w (key 7) must be an int32, got {power!r}")
    if not _is_uint(flags, FLAGS_ALL):
        raise DecodeError("bad_payload", f"flags (key 8) must be a uint with only bits 0x3f, got {flags!r}")
    if not strict and cbor2.dumps(m, canonical=True) != payload:
        raise _NotCanonical
    return Reading(device_id, m[2], m[3], m[4], m[5], m[6], power, flags)


def _check_protected(protected: Any, strict: bool) -> None:
    if type(protected) is not bytes:
        raise DecodeError("bad_protected_header", f"protected header is {type(protected).__name__}, expected bstr")
    if protected == PROTECTED_ES256:
        return
    if not strict:
        raise _NotCanonical
    hdr = _strict_inner(protected, "bad_protected_header") if protected else {}
    if type(hdr) not in _MAP:
        raise DecodeError("bad_protected_header", f"protected header holds {type(hdr).__name__}, expected a map")
    _check_labels(hdr, "bad_protected_header")
    alg = hdr.get(HEADER_ALG)
    if type(alg) is not int or alg != ALG_ES256:
        raise DecodeError("alg_not_es256", f"alg is {alg!r}, expected -7 (ES256)" if HEADER_ALG in hdr
                          else "protected header has no alg")
    if len(hdr) != 1:
        extra = sorted(repr(k) for k in hdr if k != HEADER_ALG)
        raise DecodeError("bad_protected_header", f"protected header has labels besides alg: {', '.join(extra)}")


def _check_labels(hdr: Any, reason: str) -> None:
    # Exact ints only: simple(4), 4.0 and true compare equal to ints in Python.
    for k in hdr:
        if type(k) is not int:
            raise DecodeError(reason, f"header label {k!r} is not an integer")


def _sign1(item: Any, raw: bytes, strict: bool) -> Sign1:
    if type(item) is not cbor2.CBORTag or item.tag != TAG_COSE_SIGN1:
        what = f"tag {item.tag}" if type(item) is cbor2.CBORTag else type(item).__name__
        raise DecodeError("not_sign1_tag", f"expected tag 18 (COSE_Sign1), got {what}")
    body = item.value
    if type(body) not in _ARRAY or len(body) != 4:
        what = f"{len(body)}-element array" if type(body) in _ARRAY else type(body).__name__
        raise DecodeError("bad_structure", f"COSE_Sign1 holds a {what}, expected a 4-element array")
    protected, unprotected, payload, signature = body
    _check_protected(protected, strict)
    if type(unprotected) not in _MAP:
        raise DecodeError("bad_unprotected_header", f"unprotected header is {type(unprotected).__name__}, expected a map")
    _check_labels(unprotected, "bad_unprotected_header")
    if HEADER_KID not in unprotected or type(unprotected[HEADER_KID]) is not bytes:
        raise DecodeError("bad_kid", "unprotected header has no kid (label 4) bstr")
    kid = unprotected[HEADER_KID]
    if len(kid) != DEVICE_ID_SIZE:
        raise DecodeError("bad_kid", f"kid is {len(kid)} bytes, expected {DEVICE_ID_SIZE}")
    if len(unprotected) != 1:
        extra = sorted(repr(k) for k in unprotected if k != HEADER_KID)
        raise DecodeError("bad_unprotected_header", f"unprotected header has labels besides kid: {', '.join(extra)}")
    reading = _reading(payload, strict)
    if reading.device_id != kid:
        raise DecodeError("kid_mismatch", f"kid {kid.hex()} but payload device id {reading.device_id.hex()}")
    if type(signature) is not bytes:
        raise DecodeError("bad_signature_length", f"signature is {type(signature).__name__}, expected bstr")
    if len(signature) != SIGNATURE_SIZE:
        raise DecodeError("bad_signature_length", f"signature is {len(signature)} bytes, expected 64 (r||s)")
    if not strict:
        raw = _SIGN1_ES256 + kid + _bstr_head(len(payload)) + payload + b"\x58\x40" + signature
    return Sign1(protected, kid, payload, signature, reading, raw)


class _NotCanonical(Exception):
    """Internal: the fast path cannot vouch for this input; use the strict reader."""


def _decode_fast(data: bytes) -> list[Sign1]:
    top = cbor2.loads(data)  # duplicates, tags, odd encodings: caught by the comparison below
    if type(top) in _ARRAY:
        if not 0 < len(top) <= MAX_BATCH:
            raise _NotCanonical
        out = [_sign1(item, b"", False) for item in top]
        rebuilt = _array_head(len(out)) + b"".join(s.raw for s in out)
    else:
        out = [_sign1(top, b"", False)]
        rebuilt = out[0].raw
    if rebuilt != data:
        raise _NotCanonical
    return out


def _decode_strict(data: bytes) -> list[Sign1]:
    p = Reader(data)
    items: list[tuple[Any, int, int | None]]
    try:
        if data[0] >> 5 != 4:
            items = [(p.item(0), 0, None)]
        else:
            _major, _ai, count = p.head()
            if count is not None and count > MAX_BATCH:
                raise DecodeError("batch_too_large", f"array of {count} messages, at most {MAX_BATCH}")
            items = []
            while (len(items) < count) if count is not None else not p.at_break():
                if len(items) == MAX_BATCH:
                    raise DecodeError("batch_too_large", f"array of more than {MAX_BATCH} messages")
                start = p.pos
                items.append((p.item(1), start, p.pos))
            if not items:
                raise DecodeError("empty_batch", "an empty array holds no message")
    except CborError as e:
        reason = "not_cbor" if e.kind == "malformed" else "bad_structure"
        raise DecodeError(reason, e.detail) from None
    if p.pos != len(data):
        raise DecodeError("trailing_data", f"{len(data) - p.pos} bytes after the message")
    out = []
    for item, start, end in items:
        raw = data if end is None else data[start:end]
        if len(raw) > MAX_SIGN1_SIZE:
            raise DecodeError("oversize", f"a COSE_Sign1 of {len(raw)} bytes, at most {MAX_SIGN1_SIZE}")
        out.append(_sign1(item, raw, True))
    return out


def decode_message(data: bytes | bytearray | memoryview) -> list[Sign1]:
    """Decode one ``tele`` message: a COSE_Sign1, or a CBOR array of 1..MAX_BATCH of them.

    Raises DecodeError (a TelemetryError) with the reason; signatures are not
    checked here (see ``verify``).
    """
    data = bytes(data)
    if not data:
        raise DecodeError("not_cbor", "empty message")
    limit = MAX_MESSAGE_SIZE if data[0] >> 5 == 4 else MAX_SIGN1_SIZE
    if len(data) > limit:
        raise DecodeError("oversize", f"{len(data)} bytes, at most {limit}")
    try:
        return _decode_fast(data)
    except Exception:  # anything the fast path cannot vouch for: the strict reader decides
        pass
    out = _decode_strict(data)
    log.debug("accepted a non-canonical telemetry message (%d bytes)", len(data))
    return out


# -- signatures --------------------------------------------------------------------------

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


@functools.lru_cache(maxsize=4096)
def _load_key_bytes(key: bytes) -> ec.EllipticCurvePublicKey:
    try:
        if key.startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_public_key(key)
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise PublicKeyError("bad_key", f"PEM key is {type(loaded).__name__}, not EC")
            return _check_curve(loaded)
        if len(key) == 64:
            key = b"\x04" + key
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    except ValueError as e:
        if isinstance(e, PublicKeyError):
            raise
        raise PublicKeyError("bad_key", f"not a P-256 public key ({len(key)} bytes): {e}") from None


def _check_curve(key: ec.EllipticCurvePublicKey) -> ec.EllipticCurvePublicKey:
    if not isinstance(key.curve, ec.SECP256R1):
        raise PublicKeyError("bad_key", f"key is on {key.curve.name}, ES256 needs P-256")
    return key


def load_public_key(key: bytes | bytearray | str | ec.EllipticCurvePublicKey) -> ec.EllipticCurvePublicKey:
    """A P-256 key from 64-byte X||Y, 65/33-byte SEC1, PEM text, or a key object (cached)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _check_curve(key)
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)):
        raise PublicKeyError("bad_key", f"unusable key type {type(key).__name__}")
    return _load_key_bytes(bytes(key))


def verify(sign1: Sign1, public_key: bytes | bytearray | str | ec.EllipticCurvePublicKey, *,
           device_id: bytes | None = None) -> Reading:
    """Check the ES256 signature; return the reading it vouches for.

    ``device_id``: when given, the message's kid must be that device
    (``wrong_device`` otherwise), so a key is never tried on another's message.
    """
    if device_id is not None and sign1.kid != device_id:
        raise VerificationError("wrong_device", f"message from {sign1.kid.hex()}, key is for {device_id.hex()}")
    key = load_public_key(public_key)
    sig = sign1.signature
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, sign1.sig_structure(), _ECDSA_SHA256)
    except InvalidSignature:
        raise VerificationError("bad_signature", f"signature of seq {sign1.reading.seq} from "
                                f"{sign1.kid.hex()} does not verify") from None
    return sign1.reading


def decode_and_verify(data: bytes | bytearray | memoryview,
                      public_key: bytes | bytearray | str | ec.EllipticCurvePublicKey) -> list[Reading]:
    """Decode a message and verify every COSE_Sign1 in it under one device's key."""
    return [verify(s, public_key) for s in decode_message(data)]


class RejectionCounter:
    """Counts rejections by reason (thread-safe); every reason reads 0 until seen."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(REASONS, 0)
        self._lock = threading.Lock()

    def record(self, err: TelemetryError) -> None:
        with self._lock:
            self._counts[err.reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
