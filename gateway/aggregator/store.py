"""The ingest's tables and its one writer transaction per batch (SQLite, WAL, synchronous=FULL).

Tables owned here (``readings`` itself is declared once in ``gateway.db``):

- ``ingest_devices``: per device, the acknowledgement (highest contiguous
  accounted seq), the highest stored seq, last reading, and the ``state``
  topic's online/offline. Written in the same transaction as the readings, so
  the ack the gateway publishes is always one that is on disk.
- ``ingest_quarantine``: readings the device validly signed but that the
  checks refused (future clock, counters backwards unflagged, ...): kept as
  evidence, never used as energy; their seqs count as accounted for.
- ``ingest_counters``: rejections and notes by (name, device); the empty
  device id stands for messages that name no known device.
- ``device_state`` (``device_state.py``): each device's retained online/offline
  message with its firmware version; ``ingest_devices.state`` mirrors the state.
- ``ingest_gap_closures``: seqs an operator declared lost for good
  (``metanoia gateway gap close``), with who and when.

A seq is *accounted for* when it is stored, quarantined or below a closure;
the ack is the highest seq with every seq from 1 to it accounted for.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.aggregator.device_state import SCHEMA as STATE_SCHEMA, UPSERT as _UPSERT_DEVICE_STATE
from gateway.db import ensure_schema, open_gateway_db

INGEST_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ingest_devices (
        device_id        BLOB PRIMARY KEY,
        acked            INTEGER NOT NULL DEFAULT 0,  -- highest contiguous accounted seq: the ack
        highest          INTEGER NOT NULL DEFAULT 0,  -- highest seq stored in readings
        last_time        INTEGER,                     -- device time of that reading
        last_received_at INTEGER,                     -- gateway clock (unix ms) of the last stored reading
        state            TEXT,                        -- 'online' / 'offline' (retained state topic, last will)
        state_at         INTEGER                      -- gateway clock (unix ms) of that state
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ingest_quarantine (
        device_id   BLOB    NOT NULL,
        seq         INTEGER NOT NULL,
        reason      TEXT    NOT NULL,   -- checks.QUARANTINE_REASONS
        time        INTEGER NOT NULL,
        flags       INTEGER NOT NULL,
        raw         BLOB    NOT NULL,   -- the COSE_Sign1 as received (validly signed)
        received_at INTEGER NOT NULL,   -- unix ms
        PRIMARY KEY (device_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ingest_counters (
        name      TEXT    NOT NULL,     -- checks.COUNTER_NAMES
        device_id BLOB    NOT NULL,     -- x'' when no known device
        count     INTEGER NOT NULL,
        last_at   INTEGER NOT NULL,     -- unix ms
        PRIMARY KEY (name, device_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ingest_gap_closures (
        id        INTEGER PRIMARY KEY,
        device_id BLOB    NOT NULL,
        upto      INTEGER NOT NULL,     -- every missing seq <= upto will never arrive
        closed_at INTEGER NOT NULL,     -- unix ms
        closed_by TEXT    NOT NULL
    )""",
)

_INSERT_READING = ("INSERT OR IGNORE INTO readings (device_id, seq, time, import_wh, export_wh, pv_wh, power_w, "
                   "flags, raw, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_QUARANTINE = ("INSERT OR IGNORE INTO ingest_quarantine (device_id, seq, reason, time, flags, raw, "
                      "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
_UPSERT_COUNTER = ("INSERT INTO ingest_counters (name, device_id, count, last_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (name, device_id) DO UPDATE SET count = count + excluded.count, "
                   "last_at = excluded.last_at")
_UPSERT_DEVICE = ("INSERT INTO ingest_devices (device_id, acked, highest, last_time, last_received_at) "
                  "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET acked = excluded.acked, "
                  "highest = excluded.highest, last_time = excluded.last_time, "
                  "last_received_at = excluded.last_received_at")
_UPSERT_STATE = ("INSERT INTO ingest_devices (device_id, state, state_at) VALUES (?, ?, ?) "
                 "ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, state_at = excluded.state_at")

ReadingRow = tuple[bytes, int, int, int, int, int, int, int, bytes, int]       # readings columns, in order
StateRow = tuple[bytes, str, str | None, str, int]    # device, state, fw, format, received (unix ms)
QuarantineRow = tuple[bytes, int, str, int, int, bytes, int]
Counters = tuple[int, int, int]


class StoreError(Exception):
    """A store operation refused; ``reason`` names why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class DeviceState:
    """The writer's in-memory view of one device (rebuilt from the tables on load)."""

    device_id: bytes
    contiguous: int = 0                            # the ack
    above: set[int] = field(default_factory=set)  # accounted seqs > contiguous + 1
    floor: int = 0                                 # highest gap closure
    highest: int = 0                               # highest stored seq
    last_counters: Counters | None = None          # counters of the highest stored reading
    last_time: int | None = None
    last_received_at: int | None = None

    def accounted(self, seq: int) -> bool:
        return seq <= self.contiguous or seq in self.above

    def account(self, seq: int) -> None:
        if seq > self.contiguous:
            self.above.add(seq)
            self.advance()

    def advance(self) -> None:
        c = max(self.contiguous, self.floor)
        above = self.above
        while c + 1 in above:
            c += 1
        if c != self.contiguous:
            self.contiguous = c
            if above:
                self.above = {s for s in above if s > c}


@dataclass(frozen=True, slots=True)
class Gap:
    device_id: bytes
    contiguous: int       # the ack, stalled below the hole
    first_missing: int
    next_present: int     # lowest accounted seq above the hole
    highest: int          # highest accounted seq


class ReadingStore:
    """The ingest's view of the gateway database; use from one thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        ensure_schema(conn, "ingest", INGEST_SCHEMA)
        ensure_schema(conn, "device_state", STATE_SCHEMA)

    @classmethod
    def open(cls, path: str | Path) -> ReadingStore:
        return cls(open_gateway_db(path))

    def close(self) -> None:
        self.conn.close()

    # -- device state ---------------------------------------------------------------------

    def load_device(self, device_id: bytes) -> DeviceState:
        c = self.conn
        row = c.execute("SELECT acked FROM ingest_devices WHERE device_id = ?", (device_id,)).fetchone()
        acked = row[0] if row else 0
        floor = c.execute("SELECT COALESCE(MAX(upto), 0) FROM ingest_gap_closures WHERE device_id = ?",
                          (device_id,)).fetchone()[0]
        above = {s for (s,) in c.execute(
            "SELECT seq FROM readings WHERE device_id = ? AND seq > ? UNION "
            "SELECT seq FROM ingest_quarantine WHERE device_id = ? AND seq > ?",
            (device_id, acked, device_id, acked))}
        st = DeviceState(device_id, contiguous=acked, above=above, floor=floor)
        last = c.execute("SELECT seq, import_wh, export_wh, pv_wh, time, received_at FROM readings "
                         "WHERE device_id = ? ORDER BY seq DESC LIMIT 1", (device_id,)).fetchone()
        if last:
            st.highest, st.last_counters, st.last_time, st.last_received_at = (
                last[0], (last[1], last[2], last[3]), last[4], last[5])
        st.advance()
        return st

    def raw_of(self, device_id: bytes, seq: int) -> bytes | None:
        """The stored (or quarantined) COSE_Sign1 for (device, seq), if any."""
        row = self.conn.execute("SELECT raw FROM readings WHERE device_id = ? AND seq = ?", (device_id, seq)).fetchone()
        if row is None:
            row = self.conn.execute("SELECT raw FROM ingest_quarantine WHERE device_id = ? AND seq = ?",
                                    (device_id, seq)).fetchone()
        return None if row is None else bytes(row[0])

    def neighbours(self, device_id: bytes, seq: int) -> tuple[tuple[int, Counters, int] | None,
                                                              tuple[int, Counters, int] | None]:
        """The stored readings just below and just above ``seq``: (seq, counters, flags) or None."""
        q = "SELECT seq, import_wh, export_wh, pv_wh, flags FROM readings WHERE device_id = ? AND seq {} ? ORDER BY seq {} LIMIT 1"
        lo = self.conn.execute(q.format("<", "DESC"), (device_id, seq)).fetchone()
        hi = self.conn.execute(q.format(">", "ASC"), (device_id, seq)).fetchone()
        return (None if lo is None else (lo[0], (lo[1], lo[2], lo[3]), lo[4]),
                None if hi is None else (hi[0], (hi[1], hi[2], hi[3]), hi[4]))

    # -- the batch transaction ------------------------------------------------------------

    def write_batch(self, rows: list[ReadingRow], quarantine: list[QuarantineRow],
                    counts: Mapping[tuple[str, bytes], int], devices: Iterable[DeviceState],
                    states: Iterable[StateRow] = (), now_ms: int | None = None) -> None:
        """Everything in one transaction, committed with synchronous=FULL (one fsync)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                c.executemany(_INSERT_READING, rows)
            if quarantine:
                c.executemany(_INSERT_QUARANTINE, quarantine)
            if counts:
                c.executemany(_UPSERT_COUNTER, [(n, d, k, now_ms) for (n, d), k in counts.items()])
            c.executemany(_UPSERT_DEVICE, [(d.device_id, d.contiguous, d.highest, d.last_time, d.last_received_at)
                                           for d in devices])
            states = list(states)
            c.executemany(_UPSERT_STATE, [(d, st, at) for d, st, _fw, _f, at in states])
            c.executemany(_UPSERT_DEVICE_STATE, [(d, st, fw, f, at, at) for d, st, fw, f, at in states])
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    # -- gaps -----------------------------------------------------------------------------

    def closures_after(self, last_id: int) -> list[tuple[int, bytes, int]]:
        return [(i, bytes(d), u) for i, d, u in self.conn.execute(
            "SELECT id, device_id, upto FROM ingest_gap_closures WHERE id > ? ORDER BY id", (last_id,))]

    def last_closure_id(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM ingest_gap_closures").fetchone()[0])

    def highest_accounted(self, device_id: bytes) -> int:
        return int(self.conn.execute(
            "SELECT MAX(m) FROM (SELECT COALESCE(MAX(seq), 0) AS m FROM readings WHERE device_id = ? UNION ALL "
            "SELECT COALESCE(MAX(seq), 0) FROM ingest_quarantine WHERE device_id = ?)",
            (device_id, device_id)).fetchone()[0])

    def close_gap(self, device_id: bytes, upto: int, closed_by: str = "operator") -> int:
        """Record that ``device_id``'s missing seqs <= ``upto`` are lost for good; return the new ack.

        Only up to the highest seq the device is known to have produced (a
        stored or quarantined reading), so an ack never covers a seq the device
        has not made.
        """
        if upto < 1:
            raise StoreError("bad_seq", "seqs start at 1")
        highest = self.highest_accounted(device_id)
        if highest == 0:
            raise StoreError("unknown_device", f"no reading of {device_id.hex()} is stored")
        if upto > highest:
            raise StoreError("beyond_highest", f"{device_id.hex()} has produced seqs up to {highest} only; "
                             f"cannot close up to {upto}")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("INSERT INTO ingest_gap_closures (device_id, upto, closed_at, closed_by) "
                              "VALUES (?, ?, ?, ?)", (device_id, upto, int(time.time() * 1000), closed_by))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return self.load_device(device_id).contiguous

    def gaps(self) -> list[Gap]:
        """Devices with accounted seqs above a hole (their ack is stalled below it)."""
        out = []
        for (device_id,) in self.conn.execute("SELECT device_id FROM ingest_devices ORDER BY device_id").fetchall():
            st = self.load_device(bytes(device_id))
            if st.above:
                out.append(Gap(st.device_id, st.contiguous, st.contiguous + 1, min(st.above), max(st.above)))
        return out

    # -- counters -------------------------------------------------------------------------

    def counters(self, device_id: bytes | None = None) -> dict[str, int]:
        """Counter totals by name (all devices, or one; x'' = messages naming no known device)."""
        if device_id is None:
            rows = self.conn.execute("SELECT name, SUM(count) FROM ingest_counters GROUP BY name")
        else:
            rows = self.conn.execute("SELECT name, count FROM ingest_counters WHERE device_id = ?", (device_id,))
        return {n: int(k) for n, k in rows}
