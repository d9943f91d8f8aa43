"""The gateway's SQLite database: one file per complex, WAL mode.

Durability policy (shared NOTES: WAL + ``synchronous=NORMAL`` survives a killed
process but may roll back the last commits on power loss): the gateway opens
every connection with ``synchronous=FULL``, so a commit that returned is on
disk; the hot path batches many readings into one transaction so one fsync
covers many. Anything acknowledged to a device, or sent to the chain, is
acknowledged only after such a commit.

Each part of the gateway owns its tables and declares them with
``ensure_schema(conn, part, statements)``; the tables every part reads are
declared here, once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Raw signed readings are the evidence; the decoded columns are an index over them.
READINGS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS readings (
        device_id   BLOB    NOT NULL,   -- 9-byte device id (kid)
        seq         INTEGER NOT NULL,   -- per device, from 1
        time        INTEGER NOT NULL,   -- unix s as signed by the device (0 = unsynced)
        import_wh   INTEGER NOT NULL,   -- cumulative
        export_wh   INTEGER NOT NULL,   -- cumulative
        pv_wh       INTEGER NOT NULL,   -- cumulative
        power_w     INTEGER NOT NULL,   -- + import / - export
        flags       INTEGER NOT NULL,
        raw         BLOB    NOT NULL,   -- the COSE_Sign1 exactly as received
        received_at INTEGER NOT NULL,   -- gateway clock, unix ms
        PRIMARY KEY (device_id, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS readings_by_time ON readings (time)",
)


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the gateway's pragmas (WAL, synchronous=FULL, FKs on)."""
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=30, isolation_level=None)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def ensure_schema(conn: sqlite3.Connection, part: str, statements: Iterable[str]) -> None:
    """Create ``part``'s tables if missing (idempotent, in one transaction).

    A part already recorded is left alone without writing, so read-only
    connections (``gateway status``) can construct the same objects."""
    try:
        if conn.execute("SELECT 1 FROM schema_parts WHERE part = ?", (part,)).fetchone():
            return
    except sqlite3.OperationalError:  # no schema_parts yet
        pass
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_parts (part TEXT PRIMARY KEY, created_at TEXT "
                     "DEFAULT CURRENT_TIMESTAMP)")
        for stmt in statements:
            conn.execute(stmt)
        conn.execute("INSERT OR IGNORE INTO schema_parts (part) VALUES (?)", (part,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (writers serialise up front, no upgrade deadlock) ... ``COMMIT``;
    ``ROLLBACK`` on any exception, which propagates."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def open_gateway_db(path: str | Path) -> sqlite3.Connection:
    """The database with the shared tables in place."""
    conn = connect(path)
    ensure_schema(conn, "readings", READINGS_SCHEMA)
    return conn
