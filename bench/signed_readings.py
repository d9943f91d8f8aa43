"""Fast signed readings for the ingest bench and tests (``cryptography``, ~20,000 signatures/s).

The bytes are exactly what the firmware's ``ReadingEncoder`` makes (docs/telemetry.md):
tag 18, protected {1: -7}, kid, the canonical payload map, raw r||s; arrays are
``wrap`` (CBOR array head + the messages unchanged). The simulated devices of
``hil.device_sim`` run the real firmware and are slower; this is for volume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_PROTECTED = b"\xa1\x01\x26"
_TBS_PREFIX = b"\x84\x6aSignature1\x43\xa1\x01\x26\x40"
_ECDSA = ec.ECDSA(hashes.SHA256())


def _bstr_head(n: int) -> bytes:
    return bytes((0x40 | n,)) if n < 24 else bytes((0x58, n))


@dataclass(frozen=True)
class SigningDevice:
    """A device identity (9-byte id, P-256 key) that signs readings like the firmware."""

    device_id: bytes
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, device_id: bytes | None = None) -> SigningDevice:
        return cls(device_id or os.urandom(9), ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_key(self) -> bytes:
        """64-byte X||Y."""
        n = self.key.public_key().public_numbers()
        return n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")

    def payload(self, seq: int, time: int, import_wh: int, export_wh: int, pv_wh: int, power_w: int,
                flags: int, device_id: bytes | None = None) -> bytes:
        return cbor2.dumps({1: device_id or self.device_id, 2: seq, 3: time, 4: import_wh, 5: export_wh,
                            6: pv_wh, 7: power_w, 8: flags}, canonical=True)

    def sign_payload(self, payload: bytes, kid: bytes | None = None) -> bytes:
        """A COSE_Sign1 around ``payload`` (any bytes), signed with this key, kid default own id."""
        tbs = _TBS_PREFIX + _bstr_head(len(payload)) + payload
        r, s = decode_dss_signature(self.key.sign(tbs, _ECDSA))
        kid = kid or self.device_id
        return (b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x49" + kid + _bstr_head(len(payload)) + payload
                + b"\x58\x40" + r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def reading(self, seq: int, time: int, import_wh: int = 0, export_wh: int = 0, pv_wh: int = 0,
                power_w: int = 0, flags: int = 0) -> bytes:
        return self.sign_payload(self.payload(seq, time, import_wh, export_wh, pv_wh, power_w, flags))


def wrap(messages: list[bytes]) -> bytes:
    """Several COSE_Sign1 as one CBOR array (``tele`` batch), like the firmware's ``wrap_array``."""
    n = len(messages)
    head = bytes((0x80 | n,)) if n < 24 else bytes((0x98, n))
    return head + b"".join(messages)
