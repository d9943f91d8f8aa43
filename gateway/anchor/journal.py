"""The relayer's journal: what it signed for the main chain, committed before it is sent.

One row per (registry, height), written with ``synchronous=FULL`` (gateway/db.py) *before* the signed
main-chain transaction leaves the process. A relayer killed at any point finds, on restart, either no
row (nothing was sent: it starts over, and the registry's ``latest`` tells it where) or a ``signed``
row whose exact bytes it sends again (same hash, same account nonce: the main chain can mine it at most
once) and follows to a receipt. It starts no new height while a row is ``signed``, so no height is ever
submitted twice by this relayer; the registry refuses non-increasing heights from anyone anyway.

States: ``signed`` -> ``anchored`` (mined, status 1) | ``reverted`` (mined, status 0: e.g. another
relayer anchored that height or a higher one first) | ``superseded`` (the account's nonce moved past
it without this tx: another process used the key). ``side`` tracks the side-chain ``checkpoint`` tx:
NULL (not asked), ``submitted`` (in the chain client's outbox, which sends it exactly once).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway import db

from .errors import AnchorError

SIGNED, ANCHORED, REVERTED, SUPERSEDED = "signed", "anchored", "reverted", "superseded"
JOURNAL_IN_USE = "journal_in_use"
SIDE_SUBMITTED = "submitted"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS anchor_journal (
        registry    BLOB    NOT NULL,   -- 20-byte registry address
        height      INTEGER NOT NULL,   -- side-chain block height checkpointed
        block_hash  BLOB    NOT NULL,
        state_root  BLOB    NOT NULL,
        signers     INTEGER NOT NULL,   -- authority signatures in the submission
        chain_id    INTEGER NOT NULL,   -- main chain
        sender      BLOB    NOT NULL,   -- main-chain account that pays
        nonce       INTEGER NOT NULL,   -- its account nonce for this tx
        tx_hash     BLOB    NOT NULL,
        raw_tx      BLOB    NOT NULL,   -- the signed bytes, sent again verbatim after a crash
        state       TEXT    NOT NULL,   -- signed | anchored | reverted | superseded
        reason      TEXT,
        main_block  INTEGER,
        side        TEXT,               -- NULL | submitted
        created_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (registry, height)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS anchor_journal_state ON anchor_journal (state)",
)


class JournalConflict(AnchorError):
    """A height already signed or anchored by this relayer: never sign it again."""

    def __init__(self, detail: str) -> None:
        super().__init__("already_journalled", detail)


@dataclass(frozen=True)
class Entry:
    registry: bytes
    height: int
    block_hash: bytes
    state_root: bytes
    signers: int
    chain_id: int
    sender: bytes
    nonce: int
    tx_hash: bytes
    raw_tx: bytes
    state: str
    reason: str | None
    main_block: int | None
    side: str | None


_COLS = ("registry, height, block_hash, state_root, signers, chain_id, sender, nonce, tx_hash, raw_tx, state, "
         "reason, main_block, side")


def _entry(row: tuple) -> Entry:  # type: ignore[type-arg]
    r = list(row)
    for i in (0, 2, 3, 6, 8, 9):
        r[i] = bytes(r[i])
    return Entry(*r)


def _ms() -> int:
    return int(time.time() * 1000)


class Journal:
    """``lock``: hold an exclusive lock on ``PATH.lock`` for the journal's life, so that a second relayer on
    the same journal refuses to start (``journal_in_use``) instead of racing the first for nonces; the OS
    drops the lock when the holder dies, kill -9 included."""

    def __init__(self, path: str | Path, *, lock: bool = True) -> None:
        self._lock: int | None = None
        if lock:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise AnchorError(JOURNAL_IN_USE, f"another relayer holds {path}.lock") from None
            self._lock = fd
        self.conn = db.connect(path)
        db.ensure_schema(self.conn, "anchor_journal", SCHEMA)

    def close(self) -> None:
        self.conn.close()
        if self._lock is not None:
            os.close(self._lock)     # closing the descriptor releases the lock
            self._lock = None

    def record(self, e: Entry) -> None:
        """Durably record a signed submission. A height journalled before may be tried again only if that
        attempt failed (reverted, superseded); otherwise ``JournalConflict``."""
        now = _ms()
        with db.transaction(self.conn) as c:
            row = c.execute("SELECT state FROM anchor_journal WHERE registry = ? AND height = ?",
                            (e.registry, e.height)).fetchone()
            if row is not None:
                if row[0] not in (REVERTED, SUPERSEDED):
                    raise JournalConflict(f"height {e.height} is already {row[0]}")
                c.execute("DELETE FROM anchor_journal WHERE registry = ? AND height = ?", (e.registry, e.height))
            c.execute(f"INSERT INTO anchor_journal ({_COLS}, created_ms, updated_ms) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (e.registry, e.height, e.block_hash, e.state_root, e.signers, e.chain_id, e.sender, e.nonce,
                       e.tx_hash, e.raw_tx, e.state, e.reason, e.main_block, e.side, now, now))

    def settle(self, registry: bytes, height: int, state: str, *, reason: str | None = None,
               main_block: int | None = None) -> None:
        with db.transaction(self.conn) as c:
            c.execute("UPDATE anchor_journal SET state = ?, reason = ?, main_block = ?, updated_ms = ? "
                      "WHERE registry = ? AND height = ?", (state, reason, main_block, _ms(), registry, height))

    def mark_side(self, registry: bytes, height: int, side: str) -> None:
        with db.transaction(self.conn) as c:
            c.execute("UPDATE anchor_journal SET side = ?, updated_ms = ? WHERE registry = ? AND height = ?",
                      (side, _ms(), registry, height))

    def entries(self, registry: bytes, state: str | None = None) -> list[Entry]:
        q = f"SELECT {_COLS} FROM anchor_journal WHERE registry = ?"
        args: tuple[object, ...] = (registry,)
        if state is not None:
            q += " AND state = ?"
            args += (state,)
        return [_entry(r) for r in self.conn.execute(q + " ORDER BY height", args)]

    def pending(self, registry: bytes) -> list[Entry]:
        return self.entries(registry, SIGNED)

    def side_due(self, registry: bytes) -> list[Entry]:
        return [e for e in self.entries(registry, ANCHORED) if e.side is None]
