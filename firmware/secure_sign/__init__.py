"""Signing telemetry: the ``Signer`` interface and its two implementations.

Every signer has:

- ``signer.device_id``: bytes (9). The ATECC608 serial number (config bytes 0-3
  and 8-12), or a random 9-byte id for a software key.
- ``signer.public_key``: bytes (64). Raw X||Y, big-endian, the uncompressed P-256
  point without its 0x04 prefix.
- ``signer.software``: bool. True when the key is a file on flash (readings then
  carry the software-key flag), False when it lives in a secure element.
- ``signer.sign_digest(digest)``: bytes (64). ECDSA P-256 (COSE ES256) raw r||s,
  big-endian, of a 32-byte SHA-256 digest. Other lengths raise ValueError.
  Neither implementation normalises s to the low half (COSE does not ask for
  it, the ATECC608 does not do it), so verifiers must accept both s and n - s.

Implementations (import the one you need; this package imports nothing, so a
device without the ATECC608 does not load its driver):

- ``secure_sign.atecc608.ATECC608Signer(ATECC608(i2c), slot=0)``: the key is
  generated inside the chip and never leaves it.
- ``secure_sign.software.SoftwareSigner(private_key, device_id)`` and
  ``SoftwareSigner.load_or_create(path, urandom)``: plain-MicroPython P-256 with
  RFC 6979 deterministic nonces (``secure_sign.p256``), for dev boards and
  simulation.
"""
