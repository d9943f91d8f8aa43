"""Ethereum keystore v3 (Web3 Secret Storage): scrypt + AES-128-CTR + keccak-256 MAC.

The format every Ethereum wallet imports (geth, MetaMask, eth-account's
``Account.decrypt``)::

    {"version": 3, "id": uuid4, "address": 40 hex (no 0x),
     "crypto": {"cipher": "aes-128-ctr", "cipherparams": {"iv": 16 bytes hex},
                "ciphertext": hex, "kdf": "scrypt",
                "kdfparams": {"dklen": 32, "n": N, "r": 8, "p": 1, "salt": 32 bytes hex},
                "mac": keccak256(derived[16:32] || ciphertext) hex}}

``derived = scrypt(passphrase, salt, N, r, p, 32)``; the AES key is ``derived[:16]``.
Writing always uses scrypt; reading also accepts ``pbkdf2`` (hmac-sha256), which
some wallets export. Implemented here on ``hashlib`` and ``cryptography`` (no
eth-utils at run time) and checked against eth-keyfile / eth-account in the tests.

An imported file chooses its own KDF cost, so reading caps it (``MAX_KDF_MEMORY``,
``MAX_PBKDF2_ROUNDS``): a hostile file cannot make the gateway allocate gigabytes.
Every failure is a ``KeystoreError`` with a reason code; no message ever holds the
passphrase or key material.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.validator.crypto import SECP256K1_N, address_of, keccak256, private_key

MAX_KDF_MEMORY = 1 << 30          # bytes scrypt may use for a file being read (128 * n * r)
MAX_PBKDF2_ROUNDS = 10_000_000
MAX_KEYSTORE_SIZE = 16 * 1024

# reason codes
BAD_KEYSTORE = "bad_keystore"
UNSUPPORTED = "unsupported_keystore"
KDF_TOO_COSTLY = "kdf_too_costly"
MAC_MISMATCH = "mac_mismatch"


class KeystoreError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost. ``STANDARD`` is geth's (n = 2**18: about 1 s and 256 MiB here)."""

    n: int = 1 << 18
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or not 1 <= self.r <= 64 or not 1 <= self.p <= 16:
            raise ValueError("scrypt needs n a power of two >= 2, 1 <= r <= 64, 1 <= p <= 16")

    @property
    def memory(self) -> int:
        return 128 * self.n * self.r


STANDARD = ScryptParams()
LIGHT = ScryptParams(n=1 << 14)  # for high-entropy passphrases (see docs/wallet.md)


def _scrypt(passphrase: bytes, salt: bytes, params: ScryptParams, dklen: int = 32) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, n=params.n, r=params.r, p=params.p, dklen=dklen,
                          maxmem=params.memory * 2 + (64 << 20))


def _aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def encrypt(secret: bytes, passphrase: str, params: ScryptParams = STANDARD) -> dict[str, Any]:
    """A keystore v3 object for a 32-byte secp256k1 secret."""
    if len(secret) != 32 or not 0 < int.from_bytes(secret, "big") < SECP256K1_N:
        raise ValueError("not a secp256k1 secret")
    salt, iv = os.urandom(32), os.urandom(16)
    derived = _scrypt(passphrase.encode("utf-8"), salt, params)
    ciphertext = _aes_ctr(derived[:16], iv, secret)
    mac = keccak256(derived[16:32] + ciphertext)
    return {
        "version": 3,
        "id": str(uuid.uuid4()),
        "address": address_of(private_key(secret)).hex(),
        "crypto": {
            "cipher": "aes-128-ctr",
            "cipherparams": {"iv": iv.hex()},
            "ciphertext": ciphertext.hex(),
            "kdf": "scrypt",
            "kdfparams": {"dklen": 32, "n": params.n, "r": params.r, "p": params.p, "salt": salt.hex()},
            "mac": mac.hex(),
        },
    }


def _hex(obj: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(obj, str):
        raise KeystoreError(BAD_KEYSTORE, f"{what} is not a hex string")
    try:
        raw = bytes.fromhex(obj.removeprefix("0x"))
    except ValueError:
        raise KeystoreError(BAD_KEYSTORE, f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise KeystoreError(BAD_KEYSTORE, f"{what} is not {size} bytes")
    return raw


def _int(obj: Any, what: str) -> int:
    if not isinstance(obj, int) or isinstance(obj, bool) or obj <= 0:
        raise KeystoreError(BAD_KEYSTORE, f"{what} is not a positive integer")
    return obj


def parse(text: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """The keystore object from JSON text (size-capped), or the object itself."""
    if isinstance(text, dict):
        obj: Any = text
    else:
        if len(text) > MAX_KEYSTORE_SIZE:
            raise KeystoreError(BAD_KEYSTORE, "larger than a keystore")
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise KeystoreError(BAD_KEYSTORE, "not JSON") from None
    if not isinstance(obj, dict):
        raise KeystoreError(BAD_KEYSTORE, "not a JSON object")
    if obj.get("version") != 3:
        raise KeystoreError(UNSUPPORTED, "only keystore version 3 is supported")
    crypto = obj.get("crypto", obj.get("Crypto"))
    if not isinstance(crypto, dict):
        raise KeystoreError(BAD_KEYSTORE, "no crypto object")
    return obj


def address_in(obj: dict[str, Any]) -> bytes | None:
    """The (unauthenticated) address a keystore claims, if any."""
    addr = obj.get("address")
    if not isinstance(addr, str):
        return None
    try:
        raw = bytes.fromhex(addr.removeprefix("0x"))
    except ValueError:
        return None
    return raw if len(raw) == 20 else None


def decrypt(keystore: str | bytes | dict[str, Any], passphrase: str) -> bytes:
    """The 32-byte secret, or ``KeystoreError`` (``mac_mismatch`` = wrong passphrase or a damaged file)."""
    obj = parse(keystore)
    crypto = obj.get("crypto", obj.get("Crypto"))
    assert isinstance(crypto, dict)
    if crypto.get("cipher") != "aes-128-ctr":
        raise KeystoreError(UNSUPPORTED, f"cipher {crypto.get('cipher')!r}")
    cp = crypto.get("cipherparams")
    if not isinstance(cp, dict):
        raise KeystoreError(BAD_KEYSTORE, "no cipherparams")
    iv = _hex(cp.get("iv"), "iv", 16)
    ciphertext = _hex(crypto.get("ciphertext"), "ciphertext", 32)
    mac = _hex(crypto.get("mac"), "mac", 32)
    kp = crypto.get("kdfparams")
    if not isinstance(kp, dict):
        raise KeystoreError(BAD_KEYSTORE, "no kdfparams")
    salt = _hex(kp.get("salt"), "salt")
    if _int(kp.get("dklen"), "dklen") != 32:
        raise KeystoreError(UNSUPPORTED, "dklen must be 32")
    pw = passphrase.encode("utf-8")
    kdf = crypto.get("kdf")
    if kdf == "scrypt":
        n, r, p = _int(kp.get("n"), "n"), _int(kp.get("r"), "r"), _int(kp.get("p"), "p")
        if 128 * n * r * p > MAX_KDF_MEMORY or r > 64 or p > 16:
            raise KeystoreError(KDF_TOO_COSTLY, f"scrypt n={n} r={r} p={p} is above this gateway's limit")
        try:
            params = ScryptParams(n, r, p)
        except ValueError as exc:
            raise KeystoreError(BAD_KEYSTORE, str(exc)) from None
        derived = _scrypt(pw, salt, params)
    elif kdf == "pbkdf2":
        c = _int(kp.get("c"), "c")
        if kp.get("prf") != "hmac-sha256":
            raise KeystoreError(UNSUPPORTED, "pbkdf2 prf must be hmac-sha256")
        if c > MAX_PBKDF2_ROUNDS:
            raise KeystoreError(KDF_TOO_COSTLY, f"pbkdf2 c={c} is above this gateway's limit")
        derived = hashlib.pbkdf2_hmac("sha256", pw, salt, c, 32)
    else:
        raise KeystoreError(UNSUPPORTED, f"kdf {kdf!r}")
    if not hmac.compare_digest(keccak256(derived[16:32] + ciphertext), mac):
        raise KeystoreError(MAC_MISMATCH, "wrong passphrase or a damaged keystore")
    secret = _aes_ctr(derived[:16], iv, ciphertext)
    if not 0 < int.from_bytes(secret, "big") < SECP256K1_N:
        raise KeystoreError(BAD_KEYSTORE, "decrypted value is not a secp256k1 key")
    claimed = address_in(obj)
    if claimed is not None and claimed != address_of(private_key(secret)):
        raise KeystoreError(BAD_KEYSTORE, "the address field does not match the key")
    return secret
