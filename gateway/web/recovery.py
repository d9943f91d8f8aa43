"""TOTP recovery codes: ten single-use codes that stand in for the authenticator at sign-in.

Shown once, when TOTP is enrolled (or when the homeowner makes a new set with a
fresh TOTP code); the database keeps only their hashes. Each code is 16
symbols of Crockford base32 (``7KQ2-M9XD-4T8P-ZR3C``: no I, L, O, U to
misread; typed in any case, with or without the hyphens): 80 bits from
``secrets``.

Why SHA-256 and not argon2: a slow hash protects low-entropy secrets (a
password) from guessing after the database leaks. 80 random bits cannot be
guessed offline even at a trillion SHA-256 a second (~2^80 / 10^12 s = 38,000
years), so argon2 would add nothing there, while checking a typed code
against ten argon2 hashes would cost ~1 s of CPU per attempt (a cheap way to
load the gateway). SHA-256 also lets the lookup be one indexed query. The
hash input carries the account id, so equal hashes never link accounts.

A used code stays in the table with ``used_at``: while the current set has a
used code, the account signed in without its authenticator and must enrol
TOTP again before anything that needs a code (spending, key export, password
change, a new set). Enrolling issues a new set, which clears that.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3

from gateway.db import ensure_schema, transaction
from gateway.installer.claim import ALPHABET

COUNT = 10
SYMBOLS = 16
GROUP = 4
BITS = SYMBOLS * 5
_TYPOS = str.maketrans({"O": "0", "I": "1", "L": "1"})

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS web_recovery_codes (
        account_id INTEGER NOT NULL REFERENCES web_accounts (id) ON DELETE CASCADE,
        code_hash  BLOB    NOT NULL,   -- SHA-256 of 'recovery:<account id>:<code as printed>'
        used_at    INTEGER,            -- NULL until used
        PRIMARY KEY (account_id, code_hash)) WITHOUT ROWID""",
)


def new_code() -> str:
    s = "".join(secrets.choice(ALPHABET) for _ in range(SYMBOLS))
    return "-".join(s[i:i + GROUP] for i in range(0, SYMBOLS, GROUP))


def canonical(typed: str) -> str | None:
    """The printed form of a typed code (Crockford's decoding rules), or None if it cannot be one."""
    s = typed.upper().translate(_TYPOS).replace("-", "").replace(" ", "")
    if len(s) != SYMBOLS or any(ch not in ALPHABET for ch in s):
        return None
    return "-".join(s[i:i + GROUP] for i in range(0, SYMBOLS, GROUP))


def _hash(account_id: int, code: str) -> bytes:
    return hashlib.sha256(b"recovery:%d:%s" % (account_id, code.encode())).digest()


class RecoveryCodes:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        ensure_schema(conn, "web_recovery_codes", SCHEMA)

    def issue(self, account_id: int) -> list[str]:
        """A new set for ``account_id`` (the old one, used or not, stops working). Returns the codes:
        the caller shows them once; only hashes are kept."""
        codes = [new_code() for _ in range(COUNT)]
        with transaction(self.conn):
            self.conn.execute("DELETE FROM web_recovery_codes WHERE account_id = ?", (account_id,))
            self.conn.executemany("INSERT INTO web_recovery_codes (account_id, code_hash) VALUES (?, ?)",
                                  [(account_id, _hash(account_id, c)) for c in codes])
        return codes

    def use(self, account_id: int, typed: str, now: int) -> str:
        """``ok`` (and the code is used up, race-free), ``used`` or ``bad_code``."""
        code = canonical(typed)
        if code is None:
            return "bad_code"
        h = _hash(account_id, code)
        cur = self.conn.execute("UPDATE web_recovery_codes SET used_at = ? WHERE account_id = ? AND code_hash = ? "
                                "AND used_at IS NULL", (now, account_id, h))
        if cur.rowcount == 1:
            return "ok"
        row = self.conn.execute("SELECT 1 FROM web_recovery_codes WHERE account_id = ? AND code_hash = ?",
                                (account_id, h)).fetchone()
        return "used" if row else "bad_code"

    def remaining(self, account_id: int) -> int:
        row = self.conn.execute("SELECT count(*) FROM web_recovery_codes WHERE account_id = ? AND used_at IS NULL",
                                (account_id,)).fetchone()
        return int(row[0])

    def forget(self, account_id: int) -> None:
        self.conn.execute("DELETE FROM web_recovery_codes WHERE account_id = ?", (account_id,))


# for Account rows: the account signed in with a recovery code and has not enrolled TOTP again since
REENROL_SQL = ("EXISTS (SELECT 1 FROM web_recovery_codes r WHERE r.account_id = web_accounts.id "
               "AND r.used_at IS NOT NULL)")
