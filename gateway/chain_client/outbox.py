"""The persistent outbox: intents, reserved nonces and signed bytes in SQLite.

Tables (gateway/db.py connection: WAL, ``synchronous=FULL``, so a commit that
returned is on disk before anything is sent):

``chain_outbox``: one row per submission, keyed by (chain, idempotency key)::

    pending   --sign-->  signed  --send ok-->  submitted  --chain final-->  final
       |                   |                       |
       +-------------------+-----------------------+--- chain refuses ---> rejected (reason)

- ``pending``: the intent is recorded; nothing has been sent.
- ``signed``: a nonce is reserved and the signed bytes and tx hash are stored
  (one transaction). From here on the row's bytes never change, except by the
  stale-nonce rule below, and every (re)send sends exactly these bytes.
- ``submitted``: the node accepted the bytes at least once; ``height`` is set
  once the tx is seen in a block.
- ``final`` / ``rejected``: terminal. ``reason`` holds the chain's reason code.

``chain_outbox_accounts``: per (chain, address) the next nonce to reserve.
Nonces are handed out only here, inside the same transaction that stores the
signed bytes, so they are unique and gap-free across tasks and processes
(``BEGIN IMMEDIATE`` serialises writers). A partial unique index makes two
live rows with the same (sender, nonce) impossible.

``chain_outbox_attempts``: signed bytes a row had before a stale-nonce re-sign
(kept as evidence; they can never apply, see client.py).

All methods are synchronous and short: each is one SQLite transaction, so on
the asyncio loop they are atomic with respect to other tasks.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from gateway import db

from .api import FINAL, LIVE_STATES, PENDING, REJECTED, SIGNED, SUBMITTED, SignedTx, SubmissionId, SubmissionStatus
from .errors import INTENT_CONFLICT, UNKNOWN_SUBMISSION, IntentConflict, OutboxError, UnknownSubmission
from .intents import Intent, intent_from_json, intent_to_json

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chain_outbox (
        chain        TEXT    NOT NULL,   -- backend namespace, e.g. metanoia:31337
        key          TEXT    NOT NULL,   -- idempotency key = submission id
        seq          INTEGER NOT NULL,   -- recording order
        kind         TEXT    NOT NULL,   -- transfer|fill|cancel|settle|checkpoint|nonce_fill
        sender       BLOB    NOT NULL,
        intent       TEXT    NOT NULL,   -- canonical JSON (intents.py)
        state        TEXT    NOT NULL CHECK (state IN ('pending','signed','submitted','final','rejected')),
        nonce        INTEGER,            -- reserved at signing (preset for nonce fillers)
        raw          BLOB,               -- signed bytes, from 'signed' on
        tx_hash      BLOB,
        height       INTEGER,            -- block that included it
        reason       TEXT,               -- chain reason code when rejected
        detail       TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,   -- sends accepted by a node
        created_ms   INTEGER NOT NULL,
        updated_ms   INTEGER NOT NULL,
        submitted_ms INTEGER,            -- last send
        PRIMARY KEY (chain, key)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS chain_outbox_seq ON chain_outbox (chain, seq)",
    """CREATE UNIQUE INDEX IF NOT EXISTS chain_outbox_live_nonce ON chain_outbox (chain, sender, nonce)
        WHERE nonce IS NOT NULL AND state != 'rejected'""",
    "CREATE INDEX IF NOT EXISTS chain_outbox_state ON chain_outbox (chain, state)",
    "CREATE INDEX IF NOT EXISTS chain_outbox_hash ON chain_outbox (tx_hash)",
    """CREATE TABLE IF NOT EXISTS chain_outbox_accounts (
        chain      TEXT    NOT NULL,
        address    BLOB    NOT NULL,
        next_nonce INTEGER NOT NULL,
        PRIMARY KEY (chain, address)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chain_outbox_attempts (
        chain   TEXT    NOT NULL,
        key     TEXT    NOT NULL,
        nonce   INTEGER NOT NULL,
        tx_hash BLOB    NOT NULL,
        raw     BLOB    NOT NULL,
        reason  TEXT    NOT NULL,
        at_ms   INTEGER NOT NULL
    )""",
)

_COLS = "key, kind, sender, intent, state, nonce, raw, tx_hash, height, reason, detail, attempts, submitted_ms, seq"


@dataclass(frozen=True)
class OutboxRow:
    key: str
    kind: str
    sender: bytes
    intent_json: str
    state: str
    nonce: int | None
    raw: bytes | None
    tx_hash: bytes | None
    height: int | None
    reason: str | None
    detail: str | None
    attempts: int
    submitted_ms: int | None
    seq: int

    @property
    def intent(self) -> Intent:
        return intent_from_json(self.intent_json)

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def status(self) -> SubmissionStatus:
        return SubmissionStatus(SubmissionId(self.key), self.kind, self.state,  # type: ignore[arg-type]
                                self.sender, self.nonce, self.tx_hash, self.height, self.reason, self.detail,
                                self.attempts)


def _row(t: tuple) -> OutboxRow:  # type: ignore[type-arg]
    key, kind, sender, intent, state, nonce, raw, h, height, reason, detail, attempts, sub_ms, seq = t
    return OutboxRow(key, kind, bytes(sender), intent, state, nonce, None if raw is None else bytes(raw),
                     None if h is None else bytes(h), height, reason, detail, attempts, sub_ms, seq)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Outbox:
    """The outbox of one chain (``chain`` namespaces rows, so several backends can share a file)."""

    def __init__(self, path: str | Path, chain: str) -> None:
        self.path = Path(path)
        self.chain = chain
        self.conn: sqlite3.Connection = db.connect(path)
        db.ensure_schema(self.conn, "chain_outbox", SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return db.transaction(self.conn)

    def _get(self, c: sqlite3.Connection, key: str) -> OutboxRow | None:
        t = c.execute(f"SELECT {_COLS} FROM chain_outbox WHERE chain = ? AND key = ?", (self.chain, key)).fetchone()
        return None if t is None else _row(t)

    # ---- reads ----

    def get(self, key: str) -> OutboxRow:
        r = self._get(self.conn, key)
        if r is None:
            raise UnknownSubmission(UNKNOWN_SUBMISSION, key)
        return r

    def find(self, key: str) -> OutboxRow | None:
        return self._get(self.conn, key)

    def live(self) -> list[OutboxRow]:
        """Rows not yet final or rejected, per sender in nonce order (unsigned last), then recording order."""
        q = (f"SELECT {_COLS} FROM chain_outbox WHERE chain = ? AND state IN (?, ?, ?) "
             "ORDER BY sender, nonce IS NULL, nonce, seq")
        return [_row(t) for t in self.conn.execute(q, (self.chain, *LIVE_STATES))]

    def all(self) -> list[OutboxRow]:
        q = f"SELECT {_COLS} FROM chain_outbox WHERE chain = ? ORDER BY seq"
        return [_row(t) for t in self.conn.execute(q, (self.chain,))]

    def at_nonce(self, sender: bytes, nonce: int) -> list[OutboxRow]:
        q = f"SELECT {_COLS} FROM chain_outbox WHERE chain = ? AND sender = ? AND nonce = ? ORDER BY seq"
        return [_row(t) for t in self.conn.execute(q, (self.chain, sender, nonce))]

    def next_nonce(self, address: bytes) -> int | None:
        t = self.conn.execute("SELECT next_nonce FROM chain_outbox_accounts WHERE chain = ? AND address = ?",
                              (self.chain, address)).fetchone()
        return None if t is None else int(t[0])

    def attempts(self, key: str) -> list[tuple[int, bytes, str]]:
        q = "SELECT nonce, tx_hash, reason FROM chain_outbox_attempts WHERE chain = ? AND key = ? ORDER BY at_ms"
        return [(n, bytes(h), r) for n, h, r in self.conn.execute(q, (self.chain, key))]

    # ---- transitions (one transaction each) ----

    def record(self, intent: Intent, *, nonce: int | None = None) -> tuple[OutboxRow, bool]:
        """Record ``intent`` as pending (or find it): (row, newly recorded).

        The same key with a different intent raises ``IntentConflict``.
        ``nonce`` presets the nonce (nonce fillers only).
        """
        text = intent_to_json(intent)
        with self._tx() as c:
            old = self._get(c, intent.key)
            if old is not None:
                if old.intent_json != text:
                    raise IntentConflict(INTENT_CONFLICT, f"key {intent.key!r} already records another intent")
                return old, False
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM chain_outbox WHERE chain = ?",
                            (self.chain,)).fetchone()[0]
            now = _now_ms()
            c.execute("INSERT INTO chain_outbox (chain, key, seq, kind, sender, intent, state, nonce, created_ms, "
                      "updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (self.chain, intent.key, seq, intent.kind, intent.sender, text, PENDING, nonce, now, now))
            row = self._get(c, intent.key)
        assert row is not None
        return row, True

    def ensure_account(self, address: bytes, chain_nonce: int) -> int:
        """Start nonce management for ``address`` at the chain's nonce (no-op if already managed)."""
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO chain_outbox_accounts (chain, address, next_nonce) VALUES (?, ?, ?)",
                      (self.chain, address, chain_nonce))
            return int(c.execute("SELECT next_nonce FROM chain_outbox_accounts WHERE chain = ? AND address = ?",
                                 (self.chain, address)).fetchone()[0])

    def sign(self, key: str, build: Callable[[int], SignedTx]) -> OutboxRow:
        """pending -> signed: reserve the account's next nonce (unless preset) and store the signed bytes.

        ``build(nonce)`` must be deterministic. A row past pending is returned unchanged.
        """
        with self._tx() as c:
            row = self._get(c, key)
            if row is None:
                raise UnknownSubmission(UNKNOWN_SUBMISSION, key)
            if row.state != PENDING:
                return row
            nonce = row.nonce
            if nonce is None:
                t = c.execute("SELECT next_nonce FROM chain_outbox_accounts WHERE chain = ? AND address = ?",
                              (self.chain, row.sender)).fetchone()
                if t is None:
                    raise OutboxError("account_not_managed", f"0x{row.sender.hex()} has no nonce record")
                nonce = int(t[0])
                c.execute("UPDATE chain_outbox_accounts SET next_nonce = ? WHERE chain = ? AND address = ?",
                          (nonce + 1, self.chain, row.sender))
            stx = build(nonce)
            c.execute("UPDATE chain_outbox SET state = ?, nonce = ?, raw = ?, tx_hash = ?, updated_ms = ? "
                      "WHERE chain = ? AND key = ?", (SIGNED, nonce, stx.raw, stx.tx_hash, _now_ms(), self.chain, key))
            new = self._get(c, key)
        assert new is not None
        return new

    def mark_submitted(self, key: str) -> OutboxRow:
        """signed -> submitted (or one more accepted send of a submitted row)."""
        with self._tx() as c:
            now = _now_ms()
            c.execute("UPDATE chain_outbox SET state = CASE WHEN state = ? THEN ? ELSE state END, "
                      "attempts = attempts + 1, submitted_ms = ?, updated_ms = ? "
                      "WHERE chain = ? AND key = ? AND state IN (?, ?)",
                      (SIGNED, SUBMITTED, now, now, self.chain, key, SIGNED, SUBMITTED))
            row = self._get(c, key)
        assert row is not None
        return row

    def mark_included(self, key: str, height: int | None) -> None:
        with self._tx() as c:
            c.execute("UPDATE chain_outbox SET state = ?, height = ?, updated_ms = ? WHERE chain = ? AND key = ? "
                      "AND state IN (?, ?)", (SUBMITTED, height, _now_ms(), self.chain, key, SIGNED, SUBMITTED))

    def mark_final(self, key: str, height: int | None, *, superseded: Sequence[str] = ()) -> None:
        """-> final. ``superseded``: live rows with the same (sender, nonce) that can now never apply."""
        with self._tx() as c:
            now = _now_ms()
            for other in superseded:
                c.execute("UPDATE chain_outbox SET state = ?, reason = 'superseded', detail = ?, updated_ms = ? "
                          "WHERE chain = ? AND key = ? AND state != ?",
                          (REJECTED, f"nonce used by {key}", now, self.chain, other, FINAL))
            c.execute("UPDATE chain_outbox SET state = ?, height = COALESCE(?, height), updated_ms = ? "
                      "WHERE chain = ? AND key = ?", (FINAL, height, now, self.chain, key))

    def mark_rejected(self, key: str, reason: str, detail: str = "", *, filler: Intent | None = None) -> None:
        """-> rejected with the chain's reason; ``filler`` (a NonceFill intent) takes over the freed nonce."""
        with self._tx() as c:
            row = self._get(c, key)
            if row is None:
                raise UnknownSubmission(UNKNOWN_SUBMISSION, key)
            now = _now_ms()
            c.execute("UPDATE chain_outbox SET state = ?, reason = ?, detail = ?, updated_ms = ? "
                      "WHERE chain = ? AND key = ?", (REJECTED, reason, detail, now, self.chain, key))
            if filler is not None and row.nonce is not None and self._get(c, filler.key) is None:
                seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM chain_outbox WHERE chain = ?",
                                (self.chain,)).fetchone()[0]
                c.execute("INSERT INTO chain_outbox (chain, key, seq, kind, sender, intent, state, nonce, "
                          "created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (self.chain, filler.key, seq, filler.kind, filler.sender, intent_to_json(filler),
                           PENDING, row.nonce, now, now))

    def resign_stale(self, key: str, chain_nonce: int, build: Callable[[int], SignedTx]) -> OutboxRow:
        """A live row whose nonce the chain consumed with a tx not in this outbox: sign it again with a
        fresh nonce (>= ``chain_nonce``); the old bytes go to chain_outbox_attempts."""
        with self._tx() as c:
            row = self._get(c, key)
            if row is None:
                raise UnknownSubmission(UNKNOWN_SUBMISSION, key)
            if not row.live or row.nonce is None or row.raw is None or row.tx_hash is None:
                return row
            t = c.execute("SELECT next_nonce FROM chain_outbox_accounts WHERE chain = ? AND address = ?",
                          (self.chain, row.sender)).fetchone()
            nonce = max(int(t[0]) if t else 0, chain_nonce)
            c.execute("INSERT OR REPLACE INTO chain_outbox_accounts (chain, address, next_nonce) VALUES (?, ?, ?)",
                      (self.chain, row.sender, nonce + 1))
            now = _now_ms()
            c.execute("INSERT INTO chain_outbox_attempts (chain, key, nonce, tx_hash, raw, reason, at_ms) "
                      "VALUES (?, ?, ?, ?, ?, 'stale_nonce', ?)", (self.chain, key, row.nonce, row.tx_hash, row.raw,
                                                                   now))
            stx = build(nonce)
            c.execute("UPDATE chain_outbox SET state = ?, nonce = ?, raw = ?, tx_hash = ?, height = NULL, "
                      "attempts = 0, submitted_ms = NULL, updated_ms = ? WHERE chain = ? AND key = ?",
                      (SIGNED, nonce, stx.raw, stx.tx_hash, now, self.chain, key))
            new = self._get(c, key)
        assert new is not None
        return new
