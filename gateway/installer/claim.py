"""One-time claim codes: made on the installer's host with ``secrets``.

Crockford base32 (no I, L, O, U: nothing to misread on a label), 12 symbols =
60 bits, grouped by four: ``7KQ2-M9XD-4T8P``. The gateway stores only
SHA-256 of the string exactly as printed (docs/devices.md), and rate-limits
claims, so 60 bits are far beyond guessing.
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SYMBOLS = 12
GROUP = 4
BITS = SYMBOLS * 5
PATTERN = re.compile(r"^[%s]{4}(-[%s]{4}){2}$" % (ALPHABET, ALPHABET))


def new_claim_code() -> str:
    s = "".join(secrets.choice(ALPHABET) for _ in range(SYMBOLS))
    return "-".join(s[i:i + GROUP] for i in range(0, SYMBOLS, GROUP))


def is_claim_code(code: str) -> bool:
    return bool(PATTERN.match(code))


def group_device_id(device_id_hex: str) -> str:
    """``0123ee4f5d8c1a7b01`` -> ``0123 EE4F 5D8C 1A7B 01``: easy to read aloud."""
    h = device_id_hex.upper()
    return " ".join(h[i:i + 4] for i in range(0, len(h), 4))


_TYPOS = str.maketrans({"O": "0", "I": "1", "L": "1"})


def canonical_claim_code(typed: str) -> str:
    """The printed form of a code a person typed: Crockford's decoding rules
    (any case, O read as 0, I and L as 1, spaces and hyphens ignored), then
    regrouped. Anything that is not 12 symbols of the alphabet is returned
    unchanged, so codes in other formats (docs/devices.md allows any string of
    8+ characters) still match exactly as printed."""
    s = typed.upper().translate(_TYPOS).replace("-", "").replace(" ", "")
    if len(s) != SYMBOLS or any(ch not in ALPHABET for ch in s):
        return typed
    return "-".join(s[i:i + GROUP] for i in range(0, SYMBOLS, GROUP))
