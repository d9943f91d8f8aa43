"""Where the ingest gets each device's pinned public key.

``KeySource.key_for(device_id)`` returns the 64-byte X||Y key, ``REVOKED`` for
a revoked device, or None for a device it does not know. Two sources:
``DictKeySource`` (tests, bench, ``gateway run --keys FILE``) and
``RegistryKeySource`` over the gateway's device registry (``gateway.devices``),
cached for a couple of seconds so a device added or revoked with
``metanoia gateway devices`` takes effect on a running gateway quickly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class _Revoked:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REVOKED"


REVOKED: Final = _Revoked()
KeyLookup = bytes | _Revoked | None


class KeySource(Protocol):
    def key_for(self, device_id: bytes) -> KeyLookup:
        """The device's 64-byte X||Y public key, ``REVOKED``, or None (unknown)."""
        ...


class KeyFileError(ValueError):
    """A keys file that cannot be used."""


def key_xy(key: bytes | str) -> bytes:
    """64-byte X||Y from X||Y bytes, hex text of X||Y or SEC1, or PEM text."""
    if isinstance(key, str):
        if key.lstrip().startswith("-----BEGIN"):
            loaded = serialization.load_pem_public_key(key.encode())
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise KeyFileError("PEM key is not an EC key")
            raw = loaded.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            return raw[1:]
        key = bytes.fromhex(key)
    if len(key) == 65 and key[0] == 4:
        key = key[1:]
    if len(key) != 64:
        raise KeyFileError(f"public key must be 64-byte X||Y, got {len(key)} bytes")
    return bytes(key)


class DictKeySource:
    """Keys from a mapping (device id -> key or REVOKED); mutable for tests."""

    def __init__(self, keys: Mapping[bytes, bytes | str | _Revoked] | None = None) -> None:
        self.keys: dict[bytes, bytes | _Revoked] = {}
        for device_id, key in (keys or {}).items():
            self.set(device_id, key)

    def set(self, device_id: bytes, key: bytes | str | _Revoked) -> None:
        self.keys[bytes(device_id)] = key if isinstance(key, _Revoked) else key_xy(key)

    def key_for(self, device_id: bytes) -> KeyLookup:
        return self.keys.get(device_id)


def load_keys_file(path: str | Path) -> DictKeySource:
    """``{"<device id hex>": "<X||Y hex or PEM>" | "revoked", ...}`` as a key source."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise KeyFileError("the keys file must hold a JSON object")
        keys: dict[bytes, bytes | str | _Revoked] = {}
        for dev, key in data.items():
            keys[bytes.fromhex(dev)] = REVOKED if key == "revoked" else key
        return DictKeySource(keys)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: {e}") from None


class RegistryKeySource:
    """Keys from the device registry (``gateway.devices.DeviceRegistry``) of one grid, cached."""

    def __init__(self, conn: sqlite3.Connection, grid: str, ttl_s: float = 2.0) -> None:
        from gateway.devices import DeviceRegistry  # the registry is another part's module

        self.registry = DeviceRegistry(conn)
        self.grid = grid
        self.ttl_s = ttl_s
        self._cache: dict[bytes, tuple[float, KeyLookup]] = {}

    def key_for(self, device_id: bytes) -> KeyLookup:
        now = time.monotonic()
        hit = self._cache.get(device_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        rec = self.registry.get(device_id)
        found: KeyLookup
        if rec is None or rec.grid != self.grid:
            found = None
        elif rec.status != "active":
            found = REVOKED
        else:
            found = key_xy(rec.public_key)
        if len(self._cache) > 100_000:  # a flood of made-up ids must not grow memory without bound
            self._cache.clear()
        self._cache[device_id] = (now, found)
        return found
