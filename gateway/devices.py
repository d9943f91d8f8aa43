"""The gateway's device registry: which meters belong to the complex, with which key.

A device enters the registry from its **provisioning record** (docs/devices.md),
written by the installer: the 9-byte device id, the P-256 public key read from
its secure element, the SHA-256 of the one-time claim code printed on its QR
label, the meter profile and the complex's grid id. The homeowner later
**pairs** it with a household by presenting the claim code (once). A device is
``active`` until it is **revoked**; a revoked device's key is no longer pinned
(``active_keys``), so its readings are rejected, and its broker credential is
dropped the next time the broker config is generated.

The registry is one table in the gateway's SQLite database (``gateway/db.py``).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives import serialization

from gateway.db import ensure_schema
from gateway.telemetry.decode import PublicKeyError, load_public_key

log = logging.getLogger(__name__)

DEVICE_ID_SIZE = 9
PUBLIC_KEY_SIZE = 64
CLAIM_HASH_SIZE = 32
MIN_CLAIM_CODE_LEN = 8
STATUSES = ("active", "revoked")
DEFAULT_PROFILE = "unspecified"

# Grid ids and profiles end up in MQTT topics and broker ACLs: no '/', '+', '#',
# spaces or control characters.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS devices (
        device_id     BLOB    PRIMARY KEY CHECK (length(device_id) = 9),
        public_key    BLOB    NOT NULL UNIQUE CHECK (length(public_key) = 64),  -- raw X||Y, P-256
        claim_hash    BLOB    NOT NULL CHECK (length(claim_hash) = 32),         -- SHA-256(claim code)
        profile       TEXT    NOT NULL,
        grid          TEXT    NOT NULL,
        name          TEXT,                  -- installer's label, informational
        household     TEXT,                  -- NULL until paired
        status        TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
        added_at      INTEGER NOT NULL,      -- unix s
        paired_at     INTEGER,               -- unix s; set once: the claim code is single use
        revoked_at    INTEGER,               -- unix s
        revoke_reason TEXT
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS devices_by_grid ON devices (grid, status)",
)

RECORD_KEYS = frozenset({"device_id", "public_key", "public_key_pem", "claim_hash", "claim_code", "profile",
                         "grid", "name"})


class DeviceRegistryError(Exception):
    """Base of the registry's errors; ``reason`` is a short machine-readable code."""

    reason = "registry_error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class BadRecordError(DeviceRegistryError, ValueError):
    """A provisioning record is malformed (id, key, claim, grid, profile, keys)."""

    reason = "bad_record"


class DuplicateDeviceError(DeviceRegistryError):
    """The device id (or its public key) is already registered."""

    reason = "duplicate_device"


class UnknownDeviceError(DeviceRegistryError, LookupError):
    reason = "unknown_device"


class DeviceRevokedError(DeviceRegistryError):
    reason = "device_revoked"


class ClaimError(DeviceRegistryError):
    """Pairing refused: wrong claim code, or the code was already used."""

    reason = "bad_claim"


@dataclass(frozen=True)
class DeviceRecord:
    device_id: bytes            # 9 bytes (ATECC608 serial, or random for software keys)
    public_key: bytes           # 64 bytes raw X||Y, P-256
    claim_hash: bytes           # 32 bytes, SHA-256 of the one-time claim code
    profile: str
    grid: str
    household: str | None = None
    status: str = "active"
    added_at: int = 0
    revoked_at: int | None = None
    name: str | None = None
    paired_at: int | None = None
    revoke_reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, bytes) or len(self.device_id) != DEVICE_ID_SIZE:
            raise BadRecordError(f"device_id must be {DEVICE_ID_SIZE} bytes", "bad_device_id")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_SIZE:
            raise BadRecordError(f"public_key must be {PUBLIC_KEY_SIZE} raw bytes (X||Y)", "bad_key")
        if not isinstance(self.claim_hash, bytes) or len(self.claim_hash) != CLAIM_HASH_SIZE:
            raise BadRecordError("claim_hash must be 32 bytes (SHA-256)", "bad_claim")
        check_name(self.grid, "grid")
        check_name(self.profile, "profile")
        if self.status not in STATUSES:
            raise BadRecordError(f"status must be one of {STATUSES}", "bad_status")

    @property
    def id_hex(self) -> str:
        return self.device_id.hex()

    @property
    def active(self) -> bool:
        return self.status == "active"

    def public_key_pem(self) -> str:
        key = load_public_key(self.public_key)
        return key.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def to_json(self) -> dict[str, Any]:
        """Everything but the claim hash (a guessable code's hash is close to the code)."""
        return {"device_id": self.id_hex, "public_key": self.public_key.hex(), "profile": self.profile,
                "grid": self.grid, "name": self.name, "household": self.household, "status": self.status,
                "added_at": self.added_at, "paired_at": self.paired_at, "revoked_at": self.revoked_at,
                "revoke_reason": self.revoke_reason}


def claim_hash_of(claim_code: str) -> bytes:
    """SHA-256 of the claim code's UTF-8 bytes, exactly as printed on the label."""
    if not isinstance(claim_code, str) or len(claim_code) < MIN_CLAIM_CODE_LEN:
        raise BadRecordError(f"a claim code is a string of at least {MIN_CLAIM_CODE_LEN} characters",
                             "bad_claim")
    return hashlib.sha256(claim_code.encode()).digest()


def parse_device_id(value: str | bytes) -> bytes:
    """A device id from 18 hex digits (or 9 bytes)."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value.strip())
        except ValueError:
            raise BadRecordError(f"device_id {value!r} is not hex", "bad_device_id") from None
    else:
        raise BadRecordError("device_id must be a hex string", "bad_device_id")
    if len(raw) != DEVICE_ID_SIZE:
        raise BadRecordError(f"device_id must be {DEVICE_ID_SIZE} bytes ({2 * DEVICE_ID_SIZE} hex digits), "
                             f"got {len(raw)}", "bad_device_id")
    return raw


def parse_public_key(value: str | bytes) -> bytes:
    """64-byte raw X||Y from hex (raw 64 bytes or SEC1 65/33 bytes) or PEM; P-256 only."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-----BEGIN"):
            data: bytes = text.encode()
        else:
            try:
                data = bytes.fromhex(text)
            except ValueError:
                raise BadRecordError("public_key is neither hex nor PEM", "bad_key") from None
    elif isinstance(value, bytes):
        data = value
    else:
        raise BadRecordError("public_key must be a hex or PEM string", "bad_key")
    try:
        key = load_public_key(data)
    except PublicKeyError as e:
        raise BadRecordError(f"public_key: {e.detail}", "bad_key") from None
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]


def record_from_dict(data: Mapping[str, Any], *, claim_code: str | None = None, grid: str | None = None,
                     profile: str | None = None, now: int = 0) -> DeviceRecord:
    """A ``DeviceRecord`` from a provisioning record (or a ``device.json``).

    ``claim_code``, ``grid`` and ``profile`` come from the command line when the
    file lacks them (a simulated device's ``device.json`` has no claim code); a
    value given both ways must agree.
    """
    if not isinstance(data, Mapping):
        raise BadRecordError("a provisioning record is a JSON object", "bad_record")
    unknown = set(data) - RECORD_KEYS
    if unknown:
        raise BadRecordError(f"unknown keys in provisioning record: {sorted(unknown)}", "unknown_key")
    if "device_id" not in data:
        raise BadRecordError("provisioning record has no device_id", "missing_key")
    device_id = parse_device_id(data["device_id"])
    keys = [data[k] for k in ("public_key", "public_key_pem") if k in data]
    if not keys:
        raise BadRecordError("provisioning record has no public_key", "missing_key")
    parsed = {parse_public_key(k) for k in keys}
    if len(parsed) != 1:
        raise BadRecordError("public_key and public_key_pem differ", "bad_key")
    public_key = parsed.pop()
    hashes: set[bytes] = set()
    if data.get("claim_hash") is not None:
        try:
            h = bytes.fromhex(str(data["claim_hash"]))
        except ValueError:
            raise BadRecordError("claim_hash is not hex", "bad_claim") from None
        if len(h) != CLAIM_HASH_SIZE:
            raise BadRecordError("claim_hash must be 32 bytes (64 hex digits)", "bad_claim")
        hashes.add(h)
    for code in (data.get("claim_code"), claim_code):
        if code is not None:
            hashes.add(claim_hash_of(code))
    if not hashes:
        raise BadRecordError("no claim: give claim_hash or claim_code (or --claim-code)", "missing_key")
    if len(hashes) != 1:
        raise BadRecordError("the claim code does not match the record's claim_hash", "bad_claim")
    the_grid = _one(data.get("grid"), grid, "grid")
    if not the_grid:
        raise BadRecordError("provisioning record has no grid (or give --grid)", "missing_key")
    return DeviceRecord(
        device_id=device_id, public_key=public_key, claim_hash=hashes.pop(),
        profile=_one(data.get("profile"), profile, "profile") or DEFAULT_PROFILE, grid=the_grid,
        name=_opt_str(data.get("name"), "name"), added_at=now)


class DeviceRegistry:
    """The ``devices`` table over a gateway database connection (``gateway.db.connect``)."""

    def __init__(self, conn: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.clock = clock
        ensure_schema(conn, "devices", SCHEMA)

    def _now(self) -> int:
        return int(self.clock())

    def add(self, record: DeviceRecord | Mapping[str, Any], *, claim_code: str | None = None) -> DeviceRecord:
        """Register a device; ``DuplicateDeviceError`` if its id or key is known."""
        now = self._now()
        if isinstance(record, DeviceRecord):
            rec = record
            if claim_code is not None and not hmac.compare_digest(claim_hash_of(claim_code), rec.claim_hash):
                raise BadRecordError("the claim code does not match the record's claim_hash", "bad_claim")
            if not rec.added_at:
                rec = replace(rec, added_at=now)
        else:
            rec = record_from_dict(record, claim_code=claim_code, now=now)
        if rec.status != "active" or rec.household is not None or rec.paired_at is not None:
            raise BadRecordError("a new device is active and unpaired", "bad_status")
        try:
            self.conn.execute(
                "INSERT INTO devices (device_id, public_key, claim_hash, profile, grid, name, status, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'active', ?)",
                (rec.device_id, rec.public_key, rec.claim_hash, rec.profile, rec.grid, rec.name, rec.added_at))
        except sqlite3.IntegrityError:
            if self.get(rec.device_id) is not None:
                raise DuplicateDeviceError(f"device {rec.id_hex} is already registered") from None
            raise DuplicateDeviceError(f"public key of {rec.id_hex} is already registered to another device",
                                       "duplicate_key") from None
        log.info("device added id=%s grid=%s profile=%s", rec.id_hex, rec.grid, rec.profile)
        return rec

    def get(self, device_id: bytes | str) -> DeviceRecord | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?",
                                (parse_device_id(device_id),)).fetchone()
        return _row(row) if row else None

    def require(self, device_id: bytes | str) -> DeviceRecord:
        rec = self.get(device_id)
        if rec is None:
            raise UnknownDeviceError(f"no device {_hex(device_id)} in the registry")
        return rec

    def list(self, grid: str | None = None, *, status: str | None = None) -> builtins.list[DeviceRecord]:
        sql, args = f"SELECT {_COLUMNS} FROM devices WHERE 1", []
        if grid is not None:
            sql += " AND grid = ?"
            args.append(grid)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return [_row(r) for r in self.conn.execute(sql + " ORDER BY grid, device_id", args)]

    def revoke(self, device_id: bytes | str, reason: str) -> DeviceRecord:
        """Revoke for good; ``DeviceRevokedError`` if it already is (the first reason stays)."""
        reason = (reason or "").strip()
        if not reason:
            raise DeviceRegistryError("a revocation needs a reason", "missing_reason")
        rec = self.require(device_id)
        cur = self.conn.execute("UPDATE devices SET status = 'revoked', revoked_at = ?, revoke_reason = ? "
                                "WHERE device_id = ? AND status = 'active'", (self._now(), reason, rec.device_id))
        if cur.rowcount != 1:
            raise DeviceRevokedError(f"device {rec.id_hex} is already revoked")
        log.warning("device revoked id=%s reason=%s", rec.id_hex, reason)
        return self.require(rec.device_id)

    def pair(self, device_id: bytes | str, household: str, claim_code: str) -> DeviceRecord:
        """Bind an active, unpaired device to ``household`` if ``claim_code`` is its code.

        The code is compared by hash in constant time and works once: the
        update only applies while ``paired_at`` is unset, so two concurrent
        claims cannot both succeed.
        """
        household = _opt_str(household, "household") or ""
        if not household:
            raise BadRecordError("household must be a non-empty string", "bad_household")
        rec = self.require(device_id)
        if not rec.active:
            raise DeviceRevokedError(f"device {rec.id_hex} is revoked")
        try:
            presented = claim_hash_of(claim_code)
        except BadRecordError:
            presented = b""
        if not hmac.compare_digest(presented, rec.claim_hash):
            log.warning("pairing refused id=%s: wrong claim code", rec.id_hex)
            raise ClaimError(f"wrong claim code for device {rec.id_hex}")
        cur = self.conn.execute("UPDATE devices SET household = ?, paired_at = ? "
                                "WHERE device_id = ? AND paired_at IS NULL AND status = 'active'",
                                (household, self._now(), rec.device_id))
        if cur.rowcount != 1:
            raise ClaimError(f"the claim code of device {rec.id_hex} was already used", "claim_used")
        log.info("device paired id=%s household=%s", rec.id_hex, household)
        return self.require(rec.device_id)

    def active_keys(self, grid: str) -> dict[bytes, bytes]:
        """device id -> 64-byte public key of every active device of ``grid``."""
        return {bytes(d): bytes(k) for d, k in self.conn.execute(
            "SELECT device_id, public_key FROM devices WHERE grid = ? AND status = 'active'", (grid,))}


_FIELDS = ("device_id", "public_key", "claim_hash", "profile", "grid", "household", "status", "added_at",
           "revoked_at", "name", "paired_at", "revoke_reason")
_COLUMNS = ", ".join(_FIELDS)


def _row(row: tuple[Any, ...]) -> DeviceRecord:
    d = dict(zip(_FIELDS, row))
    for k in ("device_id", "public_key", "claim_hash"):
        d[k] = bytes(d[k])
    return DeviceRecord(**d)


def _hex(device_id: bytes | str) -> str:
    return device_id.hex() if isinstance(device_id, bytes) else str(device_id)


def check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise BadRecordError(f"{what} {value!r} must be 1-64 of [A-Za-z0-9_.-], starting with a letter or digit",
                             f"bad_{what}")


def _opt_str(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 200 or any(ord(c) < 32 for c in value):
        raise BadRecordError(f"{what} must be a short printable string", f"bad_{what}")
    return value.strip()


def _one(in_file: object, given: str | None, what: str) -> str | None:
    if in_file is not None and given is not None and in_file != given:
        raise BadRecordError(f"{what} {given!r} differs from the record's {in_file!r}", f"bad_{what}")
    value = given if given is not None else in_file
    if value is not None:
        check_name(value, what)
    return value  # type: ignore[return-value]


def load_record_file(text: str) -> dict[str, Any]:
    """Parse a provisioning record file (JSON object)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BadRecordError(f"provisioning record is not JSON: {e}", "not_json") from None
    if not isinstance(data, dict):
        raise BadRecordError("a provisioning record is a JSON object", "bad_record")
    return data
