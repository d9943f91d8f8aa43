"""A device's retained ``state`` message: online/offline and its firmware version.

The contract (firmware ``device/loop.py``): on connect the device publishes,
retained, QoS 1, on ``metanoia/{grid}/{device}/state`` the JSON object
``{"state":"online","fw":"<version>"}``, and registers the last will
``{"state":"offline"}``. Older firmware sent the plain bytes ``online`` /
``offline``; both are accepted. Anything else is refused with a reason
(``bad_state`` is counted per device by the ingest) and never raises past
``parse_state``: a hostile payload costs one counter, never the pipeline.

An empty payload is how MQTT clears a retained message; it says nothing about
the device and is ignored (``parse_state`` returns None).

Table ``device_state`` (one row per device, written in the ingest's batch
transaction): the state, the last firmware version the device reported (an
``offline`` will carries none, so the version stays), ``since`` = when the
device entered this state (a retained message delivered again on reconnect
does not move it) and ``seen_at`` = the latest state message, both gateway
clock in unix ms.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass

MAX_STATE_BYTES = 256
STATES = ("online", "offline")
FW_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_KEYS = frozenset({"state", "fw"})

STATE_REASONS: dict[str, str] = {
    "bad_state": "a state message that is neither plain online/offline nor JSON "
                 '{"state":"online"|"offline","fw":"<version>"}',
}

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS device_state (
        device_id BLOB    PRIMARY KEY,
        state     TEXT    NOT NULL CHECK (state IN ('online', 'offline')),
        fw        TEXT,                  -- firmware version last reported (NULL: never, e.g. old firmware)
        format    TEXT    NOT NULL CHECK (format IN ('json', 'plain')),
        since     INTEGER NOT NULL,      -- gateway clock (unix ms): entered this state
        seen_at   INTEGER NOT NULL       -- gateway clock (unix ms): latest state message
    ) WITHOUT ROWID""",
)

UPSERT = ("INSERT INTO device_state (device_id, state, fw, format, since, seen_at) VALUES (?, ?, ?, ?, ?, ?) "
          "ON CONFLICT (device_id) DO UPDATE SET "
          "since = CASE WHEN device_state.state = excluded.state THEN device_state.since ELSE excluded.since END, "
          "state = excluded.state, fw = COALESCE(excluded.fw, device_state.fw), format = excluded.format, "
          "seen_at = excluded.seen_at")


class StateError(ValueError):
    """A state payload refused; ``reason`` is the counter name, ``detail`` says why (no payload echo)."""

    def __init__(self, detail: str, reason: str = "bad_state") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DeviceStateMsg:
    state: str             # online | offline
    fw: str | None         # firmware version, when the message carries one
    format: str            # json | plain


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise StateError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_state(payload: bytes) -> DeviceStateMsg | None:
    """The state a payload reports; None for an empty payload (a cleared retained message).

    Raises ``StateError`` for anything outside the contract: oversize, not UTF-8,
    not a JSON object, unknown or duplicate keys, a state other than online/offline,
    a firmware version that is not 1-64 of ``[A-Za-z0-9._+-]``."""
    if not payload:
        return None
    if len(payload) > MAX_STATE_BYTES:
        raise StateError(f"{len(payload)} bytes > {MAX_STATE_BYTES}")
    if payload in (b"online", b"offline"):
        return DeviceStateMsg(payload.decode(), None, "plain")
    try:
        doc = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=lambda c: _refuse(f"constant {c}"))
    except StateError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StateError("neither plain online/offline nor JSON") from None
    if not isinstance(doc, dict):
        raise StateError("JSON but not an object")
    extra = set(doc) - _KEYS
    if extra:
        raise StateError(f"unknown key(s) {sorted(extra)!r}"[:120])
    state, fw = doc.get("state"), doc.get("fw")
    if state not in STATES:
        raise StateError("'state' must be \"online\" or \"offline\"")
    if fw is not None and (not isinstance(fw, str) or not FW_RE.match(fw)):
        raise StateError("'fw' must be 1-64 of [A-Za-z0-9._+-]")
    if state == "online" and fw is None:
        raise StateError("an online message carries 'fw'")
    return DeviceStateMsg(str(state), fw, "json")


def _refuse(what: str) -> None:
    raise StateError(what)


@dataclass(frozen=True, slots=True)
class DeviceStateRow:
    device_id: bytes
    state: str
    fw: str | None
    format: str
    since_ms: int
    seen_at_ms: int


def read_states(conn: sqlite3.Connection) -> dict[bytes, DeviceStateRow]:
    """Every device's recorded state (empty when the table does not exist yet)."""
    try:
        rows = conn.execute("SELECT device_id, state, fw, format, since, seen_at FROM device_state").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {bytes(r[0]): DeviceStateRow(bytes(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows}
