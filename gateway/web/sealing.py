"""The web server's secret, and sealing small values (TOTP secrets) under it.

A copy of the database alone does not give an attacker the homeowners' TOTP
secrets: they are AES-256-GCM sealed under a key derived from a 32-byte server
secret kept in its own 0600 file (created on first start), bound to the
account id so a sealed value cannot be moved to another account.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.fsutil import replace_durably

SECRET_BYTES = 32


class SealError(Exception):
    """The server secret is missing, unsafe, or a sealed value does not open."""


def load_or_create_secret(path: Path) -> bytes:
    """The server secret from ``path`` (0600), written there first if it does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_durably(path, secrets.token_bytes(SECRET_BYTES).hex().encode() + b"\n", 0o600)
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SealError(f"{path} is readable by group or others (chmod 600)")
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise SealError(f"{path} does not hold a hex secret") from None
    if len(secret) != SECRET_BYTES:
        raise SealError(f"{path} must hold {SECRET_BYTES} bytes")
    return secret


class Sealer:
    def __init__(self, server_secret: bytes, purpose: bytes) -> None:
        self._aead = AESGCM(hmac.new(server_secret, b"metanoia-web/v1/" + purpose, hashlib.sha256).digest())

    def seal(self, value: bytes, bound_to: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, value, bound_to)

    def open(self, sealed: bytes, bound_to: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], bound_to)
        except (InvalidTag, ValueError):
            raise SealError("a sealed value does not open (wrong server secret or tampered)") from None
