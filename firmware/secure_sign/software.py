"""Software P-256 signer for development boards and simulation.

The key is an ordinary file on flash, so readings signed with it carry the
software-key flag (``signer.software`` is True) and a gateway may treat them
as less trustworthy than readings signed inside an ATECC608.

Key file format (``load_or_create``), 50 bytes, all fixed width:

====== ====== ==============================================================
offset length content
====== ====== ==============================================================
0      4      magic ``b"MNSK"`` (Metanoia software key)
4      1      format version, 1
5      9      device id (random, from ``urandom`` at creation)
14     32     P-256 private scalar, big-endian, 1 <= d < n
46     4      first 4 bytes of SHA-256 over bytes 0..45 (detects corruption)
====== ====== ==============================================================

A file that exists but does not parse raises ``KeyFileError``: it is never
silently replaced, because the gateway pinned the device's public key at
provisioning and a new key would orphan the device.
"""

import hashlib

from secure_sign import p256

_MAGIC = b"MNSK"
_VERSION = 1
_FILE_LEN = 50
_ID_LEN = 9


class KeyFileError(Exception):
    """The key file exists but is truncated, corrupted or of another format."""


def verify(public_key, digest, signature):
    """True if the 64-byte r||s signature of ``digest`` verifies under ``public_key``."""
    if len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    return p256.verify(public_key, digest, r, s)


def _random_scalar(urandom):
    while True:  # rejection sampling: uniform in [1, n)
        d = int.from_bytes(urandom(32), "big")
        if 0 < d < p256.N:
            return d


def encode_key_file(device_id, private_key):
    body = _MAGIC + bytes((_VERSION,)) + bytes(device_id) + bytes(private_key)
    return body + hashlib.sha256(body).digest()[:4]


def decode_key_file(data):
    """(device_id, private_key) from the key file bytes, or KeyFileError."""
    if len(data) != _FILE_LEN:
        raise KeyFileError("key file length %d, expected %d" % (len(data), _FILE_LEN))
    if data[:4] != _MAGIC or data[4] != _VERSION:
        raise KeyFileError("not a version-1 software key file")
    if hashlib.sha256(data[:46]).digest()[:4] != data[46:]:
        raise KeyFileError("key file checksum mismatch")
    return bytes(data[5:14]), bytes(data[14:46])


class SoftwareSigner:
    """The Signer interface over a P-256 key held in RAM (RFC 6979 signatures).

    ``SoftwareSigner(private_key_bytes, device_id)``: 32-byte big-endian scalar
    and 9-byte device id.
    """

    software = True

    def __init__(self, private_key, device_id):
        if len(device_id) != _ID_LEN:
            raise ValueError("device id must be 9 bytes")
        if len(private_key) != 32:
            raise ValueError("private key must be 32 bytes")
        d = int.from_bytes(private_key, "big")
        if not 0 < d < p256.N:
            raise ValueError("private key out of range")
        self._d = d
        self.device_id = bytes(device_id)
        self.public_key = p256.public_key(d)
        self.signatures = 0
        self.errors = 0  # rejected inputs (wrong digest length)

    def sign_digest(self, digest):
        """64-byte r||s ECDSA signature of a 32-byte SHA-256 digest."""
        if len(digest) != 32:
            self.errors += 1
            raise ValueError("digest must be 32 bytes")
        r, s = p256.sign(self._d, digest)
        self.signatures += 1
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify_digest(self, digest, signature):
        """Self-test: True if ``signature`` of ``digest`` verifies under our key."""
        return verify(self.public_key, digest, signature)

    @classmethod
    def generate(cls, urandom):
        """A fresh key and random 9-byte device id; ``urandom(n)`` gives n random bytes."""
        return cls(_random_scalar(urandom).to_bytes(32, "big"), urandom(_ID_LEN))

    @classmethod
    def load_or_create(cls, path, urandom):
        """Load the dev-board key from ``path``, creating it (atomically) if absent."""
        try:
            f = open(path, "rb")
        except OSError:
            f = None
        if f is not None:
            try:
                data = f.read()
            finally:
                f.close()
            device_id, key = decode_key_file(data)
            return cls(key, device_id)
        signer = cls.generate(urandom)
        blob = encode_key_file(signer.device_id, signer._d.to_bytes(32, "big"))
        import os

        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
        os.rename(tmp, path)
        return signer
