"""Server-side sessions in the gateway's database.

The cookie holds a random 256-bit token; the table holds only its SHA-256, so
a copy of the database does not let anyone take over a session. Each session
carries its CSRF token (synchronizer pattern) and a stage:

- ``anon``: a signed-out visitor who was shown a form (sign-in, sign-up);
- ``mfa``: the password was right and the account's TOTP code is awaited;
- ``full``: signed in.

Every change of stage creates a new session and deletes the old one
(rotation: a token known before sign-in is worthless after it). A session
ends ``idle_s`` after its last request or ``absolute_s`` after it began.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass

from gateway.db import ensure_schema

ANON, MFA, FULL = "anon", "mfa", "full"
LAST_SEEN_GRANULARITY_S = 30  # last_seen is written at most this often per session

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS web_sessions (
        token_hash BLOB    PRIMARY KEY,       -- SHA-256 of the cookie's token
        account_id INTEGER REFERENCES web_accounts (id) ON DELETE CASCADE,
        stage      TEXT    NOT NULL CHECK (stage IN ('anon', 'mfa', 'full')),
        csrf       TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS web_sessions_by_account ON web_sessions (account_id)",
)


@dataclass(frozen=True)
class Session:
    token: str          # the cookie value (never stored)
    account_id: int | None
    stage: str
    csrf: str
    created_at: int


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Sessions:
    def __init__(self, conn: sqlite3.Connection, *, idle_s: int, absolute_s: int, anon_s: int) -> None:
        self.conn = conn
        self.idle_s, self.absolute_s, self.anon_s = idle_s, absolute_s, anon_s
        ensure_schema(conn, "web_sessions", SCHEMA)

    def create(self, now: int, *, account_id: int | None = None, stage: str = ANON) -> Session:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        self.conn.execute("INSERT INTO web_sessions VALUES (?, ?, ?, ?, ?, ?)",
                          (_hash(token), account_id, stage, csrf, now, now))
        return Session(token, account_id, stage, csrf, now)

    def get(self, token: str | None, now: int) -> Session | None:
        """The live session of ``token``, touching its idle timer; expired ones are deleted."""
        if not token or len(token) > 100:
            return None
        h = _hash(token)
        row = self.conn.execute("SELECT account_id, stage, csrf, created_at, last_seen FROM web_sessions "
                                "WHERE token_hash = ?", (h,)).fetchone()
        if row is None:
            return None
        account_id, stage, csrf, created_at, last_seen = row
        idle = self.anon_s if stage == ANON else self.idle_s
        absolute = self.anon_s if stage == ANON else self.absolute_s
        if now - last_seen > idle or now - created_at > absolute:
            self.conn.execute("DELETE FROM web_sessions WHERE token_hash = ?", (h,))
            return None
        if now - last_seen >= LAST_SEEN_GRANULARITY_S:
            self.conn.execute("UPDATE web_sessions SET last_seen = ? WHERE token_hash = ?", (now, h))
        return Session(token, account_id, stage, csrf, created_at)

    def rotate(self, old: Session | None, now: int, *, account_id: int | None, stage: str) -> Session:
        """A new session replacing ``old`` (deleted)."""
        if old is not None:
            self.delete(old.token)
        return self.create(now, account_id=account_id, stage=stage)

    def delete(self, token: str) -> None:
        self.conn.execute("DELETE FROM web_sessions WHERE token_hash = ?", (_hash(token),))

    def delete_account(self, account_id: int) -> None:
        self.conn.execute("DELETE FROM web_sessions WHERE account_id = ?", (account_id,))

    def purge(self, now: int) -> int:
        """Drop expired sessions; returns how many."""
        cur = self.conn.execute(
            "DELETE FROM web_sessions WHERE (stage = 'anon' AND last_seen < ?) OR last_seen < ? OR created_at < ?",
            (now - self.anon_s, now - self.idle_s, now - self.absolute_s))
        return cur.rowcount
