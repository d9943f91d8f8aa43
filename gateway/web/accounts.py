"""Accounts of the web pages: homeowners (one household each) and operators.

One table in the gateway's database. A homeowner's ``household`` is empty
until the first device is paired: it becomes that device's ``name`` (the flat
number the installer typed on the provisioning record, e.g. ``101-A``), or
``h<account id>`` when the device has no usable name; every later device the
account pairs joins the same household. A household belongs to at most one
account (a UNIQUE column), so two accounts can never see each other's data.
Operators have no household and are created from the command line only.

TOTP (RFC 6238, 30 s steps, 6 digits) is enrolled with a pending secret that
becomes active once a code from it is confirmed. ``totp_last_step`` makes each
code single use: a code is accepted only for a step newer than the last one
accepted, updated with a compare-and-set so two racing requests cannot both
use one code. Recovery codes (``recovery.py``) stand in for it at sign-in;
``Account.totp_reenrol`` says one was used and TOTP must be enrolled again.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass

import pyotp

from gateway.db import ensure_schema, transaction
from gateway.web.passwords import AccountInputError, Hasher, check_password
from gateway.web.recovery import REENROL_SQL, RecoveryCodes
from gateway.web.sealing import SealError, Sealer

log = logging.getLogger(__name__)

HOMEOWNER, OPERATOR = "homeowner", "operator"
TOTP_STEP = 30
TOTP_WINDOW = 1  # steps either side accepted (clock drift of a phone)
_HOUSEHOLD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # the wallet's household ids

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS web_accounts (
        id             INTEGER PRIMARY KEY,
        login          TEXT    NOT NULL UNIQUE,   -- lower-case email or +E.164 phone
        role           TEXT    NOT NULL CHECK (role IN ('homeowner', 'operator')),
        password_hash  TEXT    NOT NULL,          -- argon2id
        household      TEXT    UNIQUE,            -- NULL until the first pairing; never for operators
        totp_secret    BLOB,                      -- sealed; NULL until enrolment is confirmed
        totp_pending   BLOB,                      -- sealed; an enrolment not yet confirmed
        totp_last_step INTEGER NOT NULL DEFAULT 0,
        created_at     INTEGER NOT NULL)""",
)


class AccountError(Exception):
    """``reason``: login_taken, household_taken, no_household, not_enrolled, ..."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Account:
    id: int
    login: str
    role: str
    household: str | None
    totp_enabled: bool
    totp_reenrol: bool = False   # signed in with a recovery code since TOTP was last enrolled

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR


_COLS = f"id, login, role, household, totp_secret IS NOT NULL, {REENROL_SQL}"
_NCOLS = 6


def _account(row: tuple) -> Account:
    return Account(int(row[0]), row[1], row[2], row[3], bool(row[4]), bool(row[5]))


class Accounts:
    def __init__(self, conn: sqlite3.Connection, hasher: Hasher, sealer: Sealer) -> None:
        self.conn = conn
        self.hasher = hasher
        self.sealer = sealer
        ensure_schema(conn, "web_accounts", SCHEMA)
        self.recovery = RecoveryCodes(conn)

    def get(self, account_id: int) -> Account | None:
        row = self.conn.execute(f"SELECT {_COLS} FROM web_accounts WHERE id = ?", (account_id,)).fetchone()
        return _account(row) if row else None

    def by_login(self, login: str) -> Account | None:
        row = self.conn.execute(f"SELECT {_COLS} FROM web_accounts WHERE login = ?", (login,)).fetchone()
        return _account(row) if row else None

    def create(self, login: str, password: str, role: str, now: int, password_hash: str | None = None) -> Account:
        """A new account (``login`` already normalised); ``AccountError('login_taken')`` if it exists.
        ``password_hash``: computed by the caller off the event loop (argon2 takes ~0.1 s)."""
        if role not in (HOMEOWNER, OPERATOR):
            raise ValueError(f"role must be {HOMEOWNER} or {OPERATOR}")
        check_password(password, login)
        try:
            cur = self.conn.execute(
                "INSERT INTO web_accounts (login, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                (login, role, password_hash or self.hasher.hash(password), now))
        except sqlite3.IntegrityError:
            raise AccountError("login_taken", "An account with this email or phone number exists.") from None
        log.info("web account created id=%s role=%s", cur.lastrowid, role)
        account = self.get(int(cur.lastrowid or 0))
        assert account is not None
        return account

    def password_hash(self, login: str) -> tuple[Account | None, str | None]:
        row = self.conn.execute(f"SELECT {_COLS}, password_hash FROM web_accounts WHERE login = ?",
                                (login,)).fetchone()
        return (_account(row), row[_NCOLS]) if row else (None, None)

    def set_password_hash(self, account_id: int, password_hash: str) -> None:
        self.conn.execute("UPDATE web_accounts SET password_hash = ? WHERE id = ?", (password_hash, account_id))

    # ---- household ----------------------------------------------------------------------

    def household_for_pairing(self, account: Account, device_name: str | None) -> str:
        """The household a device paired by ``account`` joins, assigned now if the account has none.
        Call inside the pairing transaction (the assignment and the pairing commit together)."""
        if account.is_operator:
            raise AccountError("operator", "Operators do not pair devices.")
        row = self.conn.execute("SELECT household FROM web_accounts WHERE id = ?", (account.id,)).fetchone()
        if row and row[0]:
            return str(row[0])
        name = (device_name or "").strip()
        household = name if _HOUSEHOLD.match(name) else f"h{account.id}"
        try:
            self.conn.execute("UPDATE web_accounts SET household = ? WHERE id = ? AND household IS NULL",
                              (household, account.id))
        except sqlite3.IntegrityError:
            raise AccountError("household_taken", f"Flat {household} is already paired to another account; "
                                                  "sign in with that account to add this meter.") from None
        log.info("web account id=%s is household %s", account.id, household)
        return household

    def link_household(self, account: Account, household: str) -> None:
        """Give a homeowner account an existing household (an operator's act, from the command line:
        households whose meters were paired outside the web pages, e.g. by ``metanoia demo``)."""
        if account.is_operator:
            raise AccountError("operator", "Operators have no household.")
        if not _HOUSEHOLD.match(household):
            raise AccountError("bad_household", "A household id is 1-64 of [A-Za-z0-9._-].")
        try:
            cur = self.conn.execute("UPDATE web_accounts SET household = ? WHERE id = ? AND household IS NULL",
                                    (household, account.id))
        except sqlite3.IntegrityError:
            raise AccountError("household_taken", f"Household {household} belongs to another account.") from None
        if cur.rowcount != 1:
            raise AccountError("has_household", f"{account.login} already has household {account.household}.")
        log.info("web account id=%s linked to household %s", account.id, household)

    # ---- TOTP ---------------------------------------------------------------------------

    def _bound(self, account_id: int) -> bytes:
        return b"totp:%d" % account_id

    def reset_totp(self, account: Account) -> None:
        """Forget the account's TOTP secret (a lost phone; an operator's act after checking who asks).
        Its recovery codes go with it. The caller also ends the account's sessions."""
        with transaction(self.conn):
            self.conn.execute("UPDATE web_accounts SET totp_secret = NULL, totp_pending = NULL WHERE id = ?",
                              (account.id,))
            self.recovery.forget(account.id)
        log.warning("web account id=%s: TOTP reset", account.id)

    def start_enrolment(self, account: Account) -> str:
        """A fresh pending TOTP secret (base32) for ``account``; replaces any earlier pending one."""
        secret = pyotp.random_base32()
        self.conn.execute("UPDATE web_accounts SET totp_pending = ? WHERE id = ?",
                          (self.sealer.seal(secret.encode(), self._bound(account.id)), account.id))
        return secret

    def pending_secret(self, account: Account) -> str | None:
        row = self.conn.execute("SELECT totp_pending FROM web_accounts WHERE id = ?", (account.id,)).fetchone()
        if not row or row[0] is None:
            return None
        return self.sealer.open(bytes(row[0]), self._bound(account.id)).decode()

    def confirm_enrolment(self, account: Account, code: str, now: float) -> str:
        """Activate the pending secret if ``code`` is one of its current codes: ok, bad_code, no_pending.
        On ``ok`` the caller issues a new set of recovery codes (which also ends a required re-enrolment)."""
        with transaction(self.conn):
            secret = self.pending_secret(account)
            if secret is None:
                return "no_pending"
            step = _matching_step(secret, code, now)
            if step is None:
                return "bad_code"
            self.conn.execute("UPDATE web_accounts SET totp_secret = totp_pending, totp_pending = NULL, "
                              "totp_last_step = ? WHERE id = ?", (step, account.id))
        log.info("web account id=%s enrolled TOTP", account.id)
        return "ok"

    def check_totp(self, account: Account, code: str, now: float) -> str:
        """``ok`` (and the code is used up), ``bad_code``, ``replayed`` or ``not_enrolled``."""
        row = self.conn.execute("SELECT totp_secret, totp_last_step FROM web_accounts WHERE id = ?",
                                (account.id,)).fetchone()
        if not row or row[0] is None:
            return "not_enrolled"
        try:
            secret = self.sealer.open(bytes(row[0]), self._bound(account.id)).decode()
        except SealError:
            log.error("web account id=%s: TOTP secret does not open", account.id)
            return "bad_code"
        step = _matching_step(secret, code, now)
        if step is None:
            return "bad_code"
        cur = self.conn.execute("UPDATE web_accounts SET totp_last_step = ? WHERE id = ? AND totp_last_step < ?",
                                (step, account.id, step))
        return "ok" if cur.rowcount == 1 else "replayed"


def _matching_step(secret: str, code: str, now: float) -> int | None:
    """The step within the window whose code is ``code`` (compared in constant time), or None."""
    code = (code or "").strip().replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret, interval=TOTP_STEP)
    current = int(now // TOTP_STEP)
    found = None
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        if pyotp.utils.strings_equal(totp.at(step * TOTP_STEP), code):
            found = step
    return found


def require_household(account: Account) -> str:
    if account.household is None:
        raise AccountError("no_household", "Pair your meter first.")
    return account.household


__all__ = ["Account", "Accounts", "AccountError", "AccountInputError", "HOMEOWNER", "OPERATOR"]
