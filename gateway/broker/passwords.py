"""Mosquitto password file entries (``mosquitto_passwd`` format, Mosquitto >= 2.0).

A line is ``user:$7$<iterations>$<salt base64>$<hash base64>`` where the hash is
PBKDF2-HMAC-SHA512 of the password over a 12-byte salt, 64 bytes long. Written
here rather than by ``mosquitto_passwd -b``, which would put each password on a
command line (visible in ``ps``). Mosquitto's default of 101 iterations is kept:
the passwords are 192-bit random tokens, so stretching adds nothing against
guessing, while every connect pays for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

ITERATIONS = 101
SALT_SIZE = 12


class PasswordFormatError(ValueError):
    pass


def new_password() -> str:
    """A random broker password (192 bits, URL-safe, no ':' so it is file-safe)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(SALT_SIZE) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        raise PasswordFormatError("not a Mosquitto $7$ (PBKDF2-SHA512) hash")
    try:
        iterations = int(parts[2])
        salt, dk = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except ValueError:
        raise PasswordFormatError("corrupt Mosquitto $7$ hash") from None
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=len(dk))
    return hmac.compare_digest(got, dk)


def parse_password_file(text: str) -> dict[str, str]:
    """user -> encoded hash; blank and '#' lines ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if sep:
            out[user] = encoded
    return out
