"""Telemetry: the signed-reading format (``format``) and its strict decoder (``decode``).

See docs/telemetry.md. Typical use::

    for sign1 in decode_message(data):          # raises TelemetryError(reason)
        reading = verify(sign1, pinned_key)     # raises TelemetryError("bad_signature")
"""

from __future__ import annotations

from .decode import (REASONS, DecodeError, PublicKeyError, RejectionCounter, Sign1, TelemetryError,
                     VerificationError, decode_and_verify, decode_message, load_public_key, verify)
from .format import FLAG_NAMES, MAX_BATCH, MAX_MESSAGE_SIZE, MAX_SIGN1_SIZE, Reading, flag_names

__all__ = [
    "FLAG_NAMES", "MAX_BATCH", "MAX_MESSAGE_SIZE", "MAX_SIGN1_SIZE", "REASONS", "DecodeError",
    "PublicKeyError", "Reading", "RejectionCounter", "Sign1", "TelemetryError", "VerificationError",
    "decode_and_verify", "decode_message", "flag_names", "load_public_key", "verify",
]
