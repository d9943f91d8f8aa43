"""The gateway's wallet service: household secp256k1 keys, encrypted at rest, and
the only code that signs for a household.

Layout of a wallet directory (0700; every file 0600)::

    wallet.json            master KDF salt and cost, and a check value (no secret)
    keys/<household>.json  one Ethereum keystore v3 file per household
    wallet.db              policies, homeowner orders, the spend ledger (or ``db=``)

Key protection (docs/wallet.md has the full argument): the operator's master
secret (env ``METANOIA_WALLET_SECRET`` or a 0600 file) is stretched once with
scrypt into a 32-byte master key. Each household's keystore passphrase is
``HMAC-SHA256(master key, household)`` in hex: 256 bits, so its keystore uses a
light scrypt cost; the strong cost sits on the master secret, and on exports
(protected by the homeowner's own passphrase). Records that grant spending
(policies, homeowner orders) carry a MAC under a key derived from the master
key, so a database writer without the master secret cannot loosen them.

Every signature is authorised first (``wallet_policy.py``) and recorded in the
spend ledger in the same SQLite transaction, before it is returned. Unlocked
keys stay in this process's memory (``key_ttl``: None = until ``lock()``), as the
quote latency budget leaves no room for scrypt per quote.
"""

from __future__ import annotations

import ctypes
import hashlib
import heapq
import hmac
import json
import logging
import os
import re
import resource
import secrets
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from gateway.fsutil import replace_durably
from gateway import db as gdb
from gateway.validator.crypto import ZERO_ADDRESS, address_of, sign_digest, to_checksum
from gateway.validator.errors import DecodeError
from gateway.validator.order import Domain, Order, order_signer
from gateway.validator.tx import Cancel, Fill, Reclaim, Transfer, Tx, sign_tx as _sign_tx

from . import keystore
from .intent import Intent
from .wallet_policy import (AUTHORISATION_USED, BAD_ORDER_SIGNATURE, NOT_ALLOWED, TAMPERED,
                            UNKNOWN_AUTHORISATION, WRONG_CHAIN, WRONG_MAKER, WRONG_SENDER, WRONG_TAKER,
                            Authorisation, ByHomeowner, ByPolicy, Exposure, ManualOrder, Policy, Spend,
                            SpendRefused, WalletError, check_manual, check_policy, check_time)

log = logging.getLogger(__name__)

__all__ = ["Wallet", "WalletKdf", "WalletError", "SpendRefused", "Policy", "ManualOrder", "ByPolicy",
           "ByHomeowner", "load_master_secret", "harden_process"]

SECRET_ENV = "METANOIA_WALLET_SECRET"
MIN_SECRET_BYTES = 16
MAX_WH = 10 ** 12
KST = 9 * 3600
QUOTE_KEEP_S = 600  # expired, unfilled sell quotes stay in the ledger this long

# wallet reason codes (spend refusals are in wallet_policy.py)
WRONG_MASTER_SECRET = "wrong_master_secret"
WEAK_MASTER_SECRET = "weak_master_secret"
NO_MASTER_SECRET = "no_master_secret"
WEAK_PASSPHRASE = "weak_passphrase"
INSECURE_FILE = "insecure_file"
BAD_HOUSEHOLD = "bad_household"
UNKNOWN_HOUSEHOLD = "unknown_household"
EXISTS = "exists"
CORRUPT = "corrupt_wallet"
NOT_EXPIRED = "not_expired"
UNKNOWN_SPEND = "unknown_spend"

_HOUSEHOLD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS wallet_policies (
        household TEXT PRIMARY KEY, policy TEXT NOT NULL, mac BLOB NOT NULL, updated_at INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS wallet_manual_orders (
        id TEXT PRIMARY KEY, household TEXT NOT NULL, record TEXT NOT NULL, mac BLOB NOT NULL,
        used_at INTEGER, used_for BLOB)""",
    """CREATE TABLE IF NOT EXISTS wallet_spends (
        household      TEXT    NOT NULL,
        key            BLOB    NOT NULL,   -- order digest (sell, buy) or tx signing hash (transfer)
        kind           TEXT    NOT NULL,   -- sell | buy | transfer
        wh             INTEGER NOT NULL,
        noia           TEXT    NOT NULL,   -- decimal uint256
        interval_start INTEGER,
        expiry         INTEGER,
        day            INTEGER NOT NULL,   -- local day number (unix + offset) // 86400
        authorisation  TEXT    NOT NULL,   -- 'policy' or 'manual:<id>'
        signed_at      INTEGER NOT NULL,
        filled         INTEGER NOT NULL DEFAULT 0,
        released_at    INTEGER,
        PRIMARY KEY (household, key)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS wallet_spends_interval ON wallet_spends (household, kind, interval_start)",
    "CREATE INDEX IF NOT EXISTS wallet_spends_day ON wallet_spends (household, day)",
)


# a counter bumped by every write that changes sell commitments, so a process sees when
# another one signed and reloads its in-memory books
_GEN_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS wallet_gen (id INTEGER PRIMARY KEY CHECK (id = 0), gen INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO wallet_gen VALUES (0, 0)",
)


@dataclass(frozen=True)
class WalletKdf:
    """scrypt costs: ``master`` (operator secret, once per start), ``at_rest`` (household
    keystores, 256-bit passphrases), ``export`` (homeowner passphrases). Tests pass ``light()``."""

    master: keystore.ScryptParams = keystore.ScryptParams(n=1 << 17)
    at_rest: keystore.ScryptParams = keystore.LIGHT
    export: keystore.ScryptParams = keystore.STANDARD

    @classmethod
    def light(cls) -> WalletKdf:
        p = keystore.ScryptParams(n=16, r=8, p=1)
        return cls(master=p, at_rest=p, export=p)


def load_master_secret(*, env: str = SECRET_ENV, file: str | Path | None = None) -> bytes:
    """The operator's master secret from a 0600 file (if given) or the environment; never argv."""
    if file is not None:
        path = Path(file)
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise WalletError(INSECURE_FILE, f"{path} is readable by group or others (chmod 600)")
        secret = path.read_bytes().strip()
    else:
        value = os.environ.get(env)
        if value is None:
            raise WalletError(NO_MASTER_SECRET, f"set {env} or pass a secret file")
        secret = value.strip().encode("utf-8")
    if len(secret) < MIN_SECRET_BYTES:
        raise WalletError(WEAK_MASTER_SECRET, f"the master secret needs at least {MIN_SECRET_BYTES} bytes")
    return secret


def harden_process() -> None:
    """Best effort on Linux: no core dumps, not ptrace-able by other same-uid processes."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):  # pragma: no cover
        pass
    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):  # pragma: no cover
        pass


def _write_private(path: Path, data: bytes) -> None:
    """Atomic, durable write of a 0600 file."""
    replace_durably(path, data, 0o600)


@dataclass
class _Unlocked:
    key: PrivateKey
    address: bytes
    used_at: float


class _SellBook:
    """The sell commitments of one (household, interval) in memory: unexpired quotes
    (a heap by expiry) plus filled ones. Summing them in SQL costs milliseconds once
    an interval has tens of thousands of live quotes; this is O(log n) per quote.
    Mutated only while the wallet holds the database's write lock."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, bytes]] = []
        self.live: dict[bytes, int] = {}      # key -> wh, unexpired
        self.filled_live: set[bytes] = set()  # unexpired and already filled
        self.live_wh = 0
        self.filled_wh = 0                    # expired and filled

    def total(self, now: float) -> int:
        while self.heap and self.heap[0][0] <= now:
            _, key = heapq.heappop(self.heap)
            wh = self.live.pop(key)
            self.live_wh -= wh
            if key in self.filled_live:
                self.filled_live.discard(key)
                self.filled_wh += wh
        return self.live_wh + self.filled_wh

    def add(self, key: bytes, wh: int, expiry: int, filled: bool, now: float) -> None:
        if expiry > now:
            heapq.heappush(self.heap, (expiry, key))
            self.live[key] = wh
            self.live_wh += wh
            if filled:
                self.filled_live.add(key)
        elif filled:
            self.filled_wh += wh

    def fill(self, key: bytes, wh: int) -> None:
        if key in self.live:
            self.filled_live.add(key)
        else:
            self.filled_wh += wh


class Wallet:
    """Household keys in ``directory``, opened with the operator's ``master_secret``.

    ``key_ttl``: seconds an unlocked key stays in memory after its last use
    (None: until ``lock()``; the service unlocks all at start). ``sell_sync``:
    SQLite ``synchronous`` for sell-order records ("normal": survives a killed
    process, not a power cut; quotes expire within minutes) while buys and
    transfers (NOIA leaving the household) always commit with ``FULL``.
    """

    def __init__(self, directory: str | Path, master_secret: bytes, *, db: str | Path | None = None,
                 kdf: WalletKdf | None = None, key_ttl: float | None = None, sell_sync: str = "normal",
                 clock: Callable[[], float] = time.time, day_offset_s: int = KST) -> None:
        if len(master_secret) < MIN_SECRET_BYTES:
            raise WalletError(WEAK_MASTER_SECRET, f"the master secret needs at least {MIN_SECRET_BYTES} bytes")
        if sell_sync not in ("normal", "full"):
            raise ValueError("sell_sync is 'normal' or 'full'")
        self.dir = Path(directory)
        self.kdf = kdf or WalletKdf()
        self.key_ttl = key_ttl
        self.sell_sync = sell_sync.upper()
        self.clock = clock
        self.day_offset_s = day_offset_s
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.dir / "keys").mkdir(mode=0o700, exist_ok=True)
        self._master = self._open_master(master_secret)
        self._record_key = hmac.new(self._master, b"metanoia-wallet/v1/records", hashlib.sha256).digest()
        self.db_path = Path(db) if db is not None else self.dir / "wallet.db"
        self._local = threading.local()
        self._keys: dict[str, _Unlocked] = {}
        self._lock = threading.Lock()
        self._last_prune = 0.0
        self._books: dict[tuple[str, int], _SellBook] = {}
        gdb.ensure_schema(self._conn(), "wallet", _SCHEMA)
        gdb.ensure_schema(self._conn(), "wallet_gen", _GEN_SCHEMA)
        self._gen = -1
        if self.db_path.exists():
            os.chmod(self.db_path, 0o600)

    # ---- master key, files ------------------------------------------------------------

    def _open_master(self, secret: bytes) -> bytes:
        meta_path = self.dir / "wallet.json"
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                kp = meta["kdf"]
                params = keystore.ScryptParams(int(kp["n"]), int(kp["r"]), int(kp["p"]))
                salt, check = bytes.fromhex(kp["salt"]), bytes.fromhex(meta["check"])
            except (ValueError, KeyError, TypeError) as exc:
                raise WalletError(CORRUPT, f"wallet.json: {exc.__class__.__name__}") from None
            master = keystore._scrypt(secret, salt, params)
            if not hmac.compare_digest(self._check_value(master), check):
                log.warning("wallet %s: wrong master secret", self.dir)
                raise WalletError(WRONG_MASTER_SECRET, "the master secret does not open this wallet")
            return master
        salt = os.urandom(32)
        params = self.kdf.master
        master = keystore._scrypt(secret, salt, params)
        meta = {"version": 1, "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p,
                                      "salt": salt.hex()}, "check": self._check_value(master).hex()}
        _write_private(meta_path, json.dumps(meta, indent=2).encode() + b"\n")
        log.info("wallet %s: created", self.dir)
        return master

    @staticmethod
    def _check_value(master: bytes) -> bytes:
        return hmac.new(master, b"metanoia-wallet/v1/check", hashlib.sha256).digest()

    def _passphrase(self, household: str) -> str:
        return hmac.new(self._master, b"metanoia-wallet/v1/household\x00" + household.encode(),
                        hashlib.sha256).hexdigest()

    def _path(self, household: str) -> Path:
        if not isinstance(household, str) or not _HOUSEHOLD.match(household):
            raise WalletError(BAD_HOUSEHOLD, "a household id is 1-64 of [A-Za-z0-9._-], not starting with . - _")
        return self.dir / "keys" / f"{household}.json"

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = gdb.connect(self.db_path)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        self.lock()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- keys ---------------------------------------------------------------------------

    def households(self) -> list[str]:
        return sorted(p.stem for p in (self.dir / "keys").glob("*.json") if _HOUSEHOLD.match(p.stem))

    def create(self, household: str) -> bytes:
        """A fresh key for ``household`` (refused if it has one); returns its address."""
        path = self._path(household)
        if path.exists():
            raise WalletError(EXISTS, f"household {household} already has a key")
        while True:
            secret = secrets.token_bytes(32)
            try:
                key = PrivateKey(secret)
                break
            except ValueError:  # pragma: no cover - probability 2**-128
                continue
        return self._store(household, key, secret)

    def _store(self, household: str, key: PrivateKey, secret: bytes) -> bytes:
        obj = keystore.encrypt(secret, self._passphrase(household), self.kdf.at_rest)
        address = address_of(key)
        _write_private(self._path(household), json.dumps(obj).encode())
        with self._lock:
            self._keys[household] = _Unlocked(key, address, self.clock())
        log.info("wallet: key for %s stored, address %s", household, to_checksum(address))
        return address

    def address(self, household: str) -> bytes:
        with self._lock:
            unlocked = self._keys.get(household)
        if unlocked is not None:
            return unlocked.address
        path = self._path(household)
        try:
            obj = keystore.parse(path.read_bytes())
        except FileNotFoundError:
            raise WalletError(UNKNOWN_HOUSEHOLD, f"no key for {household}") from None
        addr = keystore.address_in(obj)
        if addr is None:
            return self._key(household).address
        return addr

    def _key(self, household: str) -> _Unlocked:
        now = self.clock()
        with self._lock:
            self._evict(now)
            unlocked = self._keys.get(household)
            if unlocked is not None:
                unlocked.used_at = now
                return unlocked
        path = self._path(household)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise WalletError(UNKNOWN_HOUSEHOLD, f"no key for {household}") from None
        try:
            secret = keystore.decrypt(data, self._passphrase(household))
        except keystore.KeystoreError as exc:
            raise WalletError(CORRUPT, f"keystore of {household}: {exc.reason}") from None
        key = PrivateKey(secret)
        unlocked = _Unlocked(key, address_of(key), now)
        with self._lock:
            self._keys[household] = unlocked
        log.info("wallet: unlocked %s", household)
        return unlocked

    def _evict(self, now: float) -> None:
        if self.key_ttl is None:
            return
        for h in [h for h, u in self._keys.items() if now - u.used_at > self.key_ttl]:
            del self._keys[h]
            log.debug("wallet: %s locked after %s s idle", h, self.key_ttl)

    def unlock_all(self) -> int:
        """Decrypt every household key into memory (service start); returns how many."""
        for h in self.households():
            self._key(h)
        return len(self._keys)

    def lock(self) -> None:
        """Drop every unlocked key (Python cannot wipe the memory; see docs/wallet.md)."""
        with self._lock:
            self._keys.clear()

    def export(self, household: str, export_passphrase: str,
               params: keystore.ScryptParams | None = None) -> dict[str, Any]:
        """The household's key as a keystore v3 object under the homeowner's passphrase."""
        if len(export_passphrase) < 8:
            raise WalletError(WEAK_PASSPHRASE, "an export passphrase needs at least 8 characters")
        unlocked = self._key(household)
        obj = keystore.encrypt(unlocked.key.secret, export_passphrase, params or self.kdf.export)
        log.info("wallet: exported the key of %s", household)
        return obj

    def import_keystore(self, household: str, keystore_json: str | bytes | dict[str, Any], passphrase: str) -> bytes:
        """Take a returning homeowner's key (refused if the household has another one)."""
        path = self._path(household)
        try:
            secret = keystore.decrypt(keystore_json, passphrase)
        except keystore.KeystoreError as exc:
            raise WalletError(exc.reason, exc.detail) from None
        key = PrivateKey(secret)
        if path.exists():
            if self.address(household) == address_of(key):
                return address_of(key)
            raise WalletError(EXISTS, f"household {household} already has a different key")
        log.info("wallet: imported a key for %s", household)
        return self._store(household, key, secret)

    # ---- policies and homeowner orders ----------------------------------------------------

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._record_key, data, hashlib.sha256).digest()

    def set_policy(self, household: str, policy: Policy) -> None:
        self._path(household)
        text = json.dumps(policy.to_json(), sort_keys=True)
        self._conn().execute(
            "INSERT INTO wallet_policies VALUES (?, ?, ?, ?) ON CONFLICT (household) DO UPDATE SET "
            "policy = excluded.policy, mac = excluded.mac, updated_at = excluded.updated_at",
            (household, text, self._mac(household.encode() + b"\x00" + text.encode()), int(self.clock())))
        log.info("wallet: policy of %s set: %s", household, text)

    def policy(self, household: str) -> Policy | None:
        row = self._conn().execute("SELECT policy, mac FROM wallet_policies WHERE household = ?",
                                   (household,)).fetchone()
        if row is None:
            return None
        text, mac = row
        if not hmac.compare_digest(self._mac(household.encode() + b"\x00" + text.encode()), mac):
            log.warning("wallet: policy of %s fails its MAC", household)
            raise SpendRefused(TAMPERED, f"the stored policy of {household} fails its MAC")
        return Policy.from_json(json.loads(text))

    def approve(self, household: str, kind: str, *, ttl_s: int = 3600, wh: int = 0,
                price_per_wh: int | None = None, noia: int | None = None, interval_start: int | None = None,
                to: bytes | None = None) -> ManualOrder:
        """Record a homeowner's manual order (call only from an authenticated homeowner session)."""
        self._path(household)
        now = int(self.clock())
        order = ManualOrder(id=uuid.uuid4().hex, household=household, kind=kind, expires_at=now + ttl_s,
                            created_at=now, wh=wh, price_per_wh=price_per_wh, noia=noia,
                            interval_start=interval_start, to=to)
        rec = asdict(order)
        rec["to"] = to.hex() if to else None
        self._conn().execute("INSERT INTO wallet_manual_orders (id, household, record, mac) VALUES (?, ?, ?, ?)",
                             (order.id, household, json.dumps(rec), self._mac(order.canonical())))
        log.info("wallet: homeowner order %s for %s: %s", order.id, household, kind)
        return order

    def manual_order(self, order_id: str) -> tuple[ManualOrder, int | None]:
        """(the order, when it was used or None); ``SpendRefused`` if unknown or tampered."""
        row = self._conn().execute("SELECT record, mac, used_at FROM wallet_manual_orders WHERE id = ?",
                                   (order_id,)).fetchone()
        if row is None:
            raise SpendRefused(UNKNOWN_AUTHORISATION, "no such homeowner order")
        rec = json.loads(row[0])
        rec["to"] = bytes.fromhex(rec["to"]) if rec.get("to") else None
        order = ManualOrder(**rec)
        if not hmac.compare_digest(self._mac(order.canonical()), row[1]):
            log.warning("wallet: homeowner order %s fails its MAC", order_id)
            raise SpendRefused(TAMPERED, "the stored homeowner order fails its MAC")
        return order, row[2]

    def split_approval(self, order_id: str, parts: list[int]) -> list[ManualOrder]:
        """Use an unused homeowner order up by turning it into single-use orders of ``parts`` Wh (sum <= its Wh),
        with its household, kind, price, interval and expiry, in one transaction (a mechanism that splits the
        homeowner's order among several counterparties signs one order or fill per part)."""
        order, used_at = self.manual_order(order_id)
        now = int(self.clock())
        if used_at is not None:
            raise SpendRefused(AUTHORISATION_USED, "the homeowner's order was already used")
        if order.expires_at <= now:
            raise SpendRefused("authorisation_expired", f"the homeowner's order expired at {order.expires_at}")
        if order.kind == "transfer" or not parts or min(parts) <= 0 or sum(parts) > order.wh:
            raise SpendRefused("authorisation_mismatch", f"parts {parts} do not fit the {order.wh} Wh authorised")
        children = [ManualOrder(id=uuid.uuid4().hex, household=order.household, kind=order.kind,
                                expires_at=order.expires_at, created_at=now, wh=wh, price_per_wh=order.price_per_wh,
                                noia=None if order.noia is None else order.noia * wh // order.wh,
                                interval_start=order.interval_start) for wh in parts]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute("UPDATE wallet_manual_orders SET used_at = ?, used_for = ? WHERE id = ? AND "
                               "used_at IS NULL", (now, b"split", order_id))
            if cur.rowcount != 1:
                raise SpendRefused(AUTHORISATION_USED, "the homeowner's order was already used")
            for c in children:
                rec = asdict(c)
                conn.execute("INSERT INTO wallet_manual_orders (id, household, record, mac) VALUES (?, ?, ?, ?)",
                             (c.id, c.household, json.dumps(rec), self._mac(c.canonical())))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("wallet: homeowner order %s split into %d", order_id, len(children))
        return children

    # ---- the ledger ---------------------------------------------------------------------

    def _day(self, t: float) -> int:
        return int((t + self.day_offset_s) // 86400)

    def _sync_books(self, conn: sqlite3.Connection, bump: bool) -> None:
        """Drop the books if another process changed sell commitments (caller holds ``_lock``);
        ``bump``: this transaction changes them (the caller commits)."""
        (gen,) = conn.execute("SELECT gen FROM wallet_gen WHERE id = 0").fetchone()
        if gen != self._gen:
            self._books.clear()
        if bump:
            conn.execute("UPDATE wallet_gen SET gen = gen + 1 WHERE id = 0")
            gen += 1
        self._gen = gen

    def _book(self, conn: sqlite3.Connection, household: str, interval_start: int, now: float) -> _SellBook:
        """The interval's sell book, loaded from the ledger on first use (caller holds ``_lock``)."""
        book = self._books.get((household, interval_start))
        if book is None:
            book = _SellBook()
            for key, wh, expiry, filled in conn.execute(
                    "SELECT key, wh, expiry, filled FROM wallet_spends WHERE household = ? AND kind = 'sell' AND "
                    "interval_start = ? AND released_at IS NULL AND (filled = 1 OR expiry > ?)",
                    (household, interval_start, int(now))):
                book.add(key, wh, expiry, bool(filled), now)
            self._books[(household, interval_start)] = book
        return book

    def _exposure(self, conn: sqlite3.Connection, household: str, spend: Spend, now: float) -> Exposure:
        if spend.kind == "sell":
            # a sell quote commits energy while it can be filled, or once it was filled
            assert spend.interval_start is not None
            with self._lock:
                self._sync_books(conn, bump=False)
                wh = self._book(conn, household, spend.interval_start, now).total(now)
            return Exposure(wh, 0)
        if spend.kind == "buy":
            (wh,) = conn.execute(
                "SELECT COALESCE(SUM(wh), 0) FROM wallet_spends WHERE household = ? AND kind = 'buy' AND "
                "interval_start = ? AND released_at IS NULL", (household, spend.interval_start)).fetchone()
        else:
            wh = 0
        return Exposure(wh, self._spent(conn, household, self._day(now)))

    @staticmethod
    def _spent(conn: sqlite3.Connection, household: str, day: int) -> int:
        rows = conn.execute("SELECT noia FROM wallet_spends WHERE household = ? AND day = ? AND kind != 'sell' "
                            "AND released_at IS NULL", (household, day)).fetchall()
        return sum(int(r[0]) for r in rows)

    def spent_today(self, household: str) -> int:
        """NOIA the household's buys and transfers signed today (local day) add up to."""
        return self._spent(self._conn(), household, self._day(self.clock()))

    def committed_wh(self, household: str, kind: str, interval_start: int) -> int:
        spend = Spend(kind, b"", 0, 0, interval_start, None)
        return self._exposure(self._conn(), household, spend, self.clock()).interval_wh

    def _authorise(self, household: str, spend: Spend, auth: Authorisation, sign: Callable[[], bytes]) -> bytes:
        """Check, record and sign in one transaction: nothing is signed that is not recorded."""
        now = self.clock()
        if not 0 <= spend.wh <= MAX_WH:
            raise SpendRefused(NOT_ALLOWED, f"wh must be 0..{MAX_WH}")
        conn = self._conn()
        sync = self.sell_sync if spend.kind == "sell" and isinstance(auth, ByPolicy) else "FULL"
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT released_at FROM wallet_spends WHERE household = ? AND key = ?",
                               (household, spend.key)).fetchone()
            if row is not None and row[0] is None:
                conn.execute("ROLLBACK")
                log.debug("wallet: %s %s re-signed (already recorded)", household, spend.kind)
                return sign()  # the same spend, already counted: deterministic signature
            check_time(spend, now)
            if isinstance(auth, ByHomeowner):
                manual, used_at = self.manual_order(auth.id)
                if used_at is not None:
                    raise SpendRefused(AUTHORISATION_USED, "the homeowner's order was already used")
                check_manual(manual, spend, household, now)
                conn.execute("UPDATE wallet_manual_orders SET used_at = ?, used_for = ? WHERE id = ? AND "
                             "used_at IS NULL", (int(now), spend.key, auth.id))
                how = f"manual:{auth.id}"
            elif isinstance(auth, ByPolicy):
                check_policy(self.policy(household), spend, self._exposure(conn, household, spend, now), auth)
                how = "policy"
            else:
                raise SpendRefused("no_authorisation", "no authorisation given")
            signature = sign()
            conn.execute("INSERT OR REPLACE INTO wallet_spends (household, key, kind, wh, noia, interval_start, "
                         "expiry, day, authorisation, signed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (household, spend.key, spend.kind, spend.wh, str(spend.noia), spend.interval_start,
                          spend.expiry, self._day(now), how, int(now)))
            if spend.kind == "sell":
                assert spend.interval_start is not None and spend.expiry is not None
                with self._lock:
                    self._sync_books(conn, bump=True)
                    self._book(conn, household, spend.interval_start, now).add(
                        spend.key, spend.wh, spend.expiry, False, now)
            try:
                conn.execute("COMMIT")
            except BaseException:
                with self._lock:
                    self._books.clear()
                    self._gen = -1
                raise
        except SpendRefused as exc:
            conn.execute("ROLLBACK")
            log.info("wallet: refused %s for %s: %s", spend.kind, household, exc.reason)
            raise
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("wallet: signed %s for %s: %d Wh, %d NOIA, by %s", spend.kind, household, spend.wh,
                 spend.noia, how)
        if now - self._last_prune > 60:
            self._prune(now)
        return signature

    def _prune(self, now: float) -> None:
        """Drop sell quotes that expired unfilled over ``QUOTE_KEEP_S`` ago (they commit nothing),
        and the in-memory books of intervals long past."""
        self._last_prune = now
        conn = self._conn()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("DELETE FROM wallet_spends WHERE kind = 'sell' AND filled = 0 AND expiry < ?",
                     (int(now) - QUOTE_KEEP_S,))
        with self._lock:
            for k in [k for k in self._books if k[1] < now - 2 * 86400]:
                del self._books[k]

    def confirm_fill(self, household: str, key: bytes) -> None:
        """A sell order of the household was filled on chain: it stays committed after its expiry."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT wh, interval_start, filled FROM wallet_spends WHERE household = ? AND "
                               "key = ? AND kind = 'sell'", (household, key)).fetchone()
            if row is None:
                raise WalletError(UNKNOWN_SPEND, "no such signed sell")
            if not row[2]:
                conn.execute("UPDATE wallet_spends SET filled = 1 WHERE household = ? AND key = ?", (household, key))
                with self._lock:
                    self._sync_books(conn, bump=True)
                    book = self._books.get((household, row[1]))
                    if book is not None:
                        book.fill(key, row[0])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def release(self, household: str, key: bytes) -> None:
        """A signed buy or transfer that can no longer land (expired and not on chain): uncount it."""
        conn = self._conn()
        row = conn.execute("SELECT expiry FROM wallet_spends WHERE household = ? AND key = ? AND "
                           "released_at IS NULL", (household, key)).fetchone()
        if row is None:
            raise WalletError(UNKNOWN_SPEND, "no such signed spend")
        now = self.clock()
        if row[0] is None or row[0] > now:
            raise WalletError(NOT_EXPIRED, "only an expired order's spend can be released")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE wallet_spends SET released_at = ? WHERE household = ? AND key = ?",
                         (int(now), household, key))
            with self._lock:
                self._sync_books(conn, bump=True)
                self._books.clear()  # rare: reload the books from the ledger
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("wallet: released a spend of %s", household)

    # ---- signing ----------------------------------------------------------------------

    def sign_order(self, household: str, order: Order, domain: Domain, authorisation: Authorisation) -> bytes:
        """65-byte r||s||v over the order's EIP-712 digest; the household sells ``order.wh``."""
        unlocked = self._key(household)
        if order.maker != unlocked.address:
            raise SpendRefused(WRONG_MAKER, "the order's maker is not this household")
        digest = order.digest(domain)
        spend = Spend("sell", digest, order.wh, order.noia, order.interval_start, order.expiry)
        return self._authorise(household, spend, authorisation, lambda: sign_digest(unlocked.key, digest))

    def sign_tx(self, household: str, tx: Tx, domain: Domain, authorisation: Authorisation) -> bytes:
        """The signed encoding of one of the household's chain transactions (tx.py)."""
        unlocked = self._key(household)
        if tx.sender != unlocked.address:
            raise SpendRefused(WRONG_SENDER, "the transaction's sender is not this household")
        if tx.chain_id != domain.chain_id:
            raise SpendRefused(WRONG_CHAIN, f"tx for chain {tx.chain_id}, domain is {domain.chain_id}")
        p = tx.payload
        sign: Callable[[], bytes] = lambda: _sign_tx(tx, unlocked.key)  # noqa: E731
        if isinstance(p, (Cancel, Reclaim)):  # withdraws an order / takes an escrow back: spends nothing
            log.info("wallet: signed %s for %s", "cancel" if isinstance(p, Cancel) else "reclaim", household)
            return sign()
        if isinstance(p, Fill):
            order = p.signed_order.order
            try:
                signer, digest = order_signer(p.signed_order, domain)
            except DecodeError:
                raise SpendRefused(BAD_ORDER_SIGNATURE, "the order's signature is malformed") from None
            if signer != order.maker:
                raise SpendRefused(BAD_ORDER_SIGNATURE, "the order is not signed by its maker")
            if order.taker not in (ZERO_ADDRESS, unlocked.address):
                raise SpendRefused(WRONG_TAKER, "the order is reserved for another taker")
            spend = Spend("buy", digest, order.wh, order.noia, order.interval_start, order.expiry)
        elif isinstance(p, Transfer):
            spend = Spend("transfer", tx.signing_hash(), 0, p.amount, None, None, p.to)
        else:
            raise SpendRefused(NOT_ALLOWED, "a household does not send this transaction type")
        return self._authorise(household, spend, authorisation, sign)

    def sign_intent(self, household: str, intent: Intent, domain: Domain) -> bytes:
        """Sign an indexer intent (a non-binding hint: no spend, no authorisation)."""
        unlocked = self._key(household)
        if intent.maker != unlocked.address:
            raise SpendRefused(WRONG_MAKER, "the intent's maker is not this household")
        return sign_digest(unlocked.key, intent.digest(domain))


@dataclass(frozen=True)
class HouseholdSigner:
    """The Peer's ``OrderSigner`` over the wallet: sells under the household's policy,
    with the maker agent's forecast (``forecast(interval_start) -> Wh``)."""

    wallet: Wallet
    household: str
    forecast: Callable[[int], int]

    @property
    def maker(self) -> bytes:
        return self.wallet.address(self.household)

    def sign(self, order: Order, domain: Domain) -> bytes:
        from .quote import SignerRefused
        try:
            return self.wallet.sign_order(self.household, order, domain,
                                          ByPolicy(forecast_surplus_wh=self.forecast(order.interval_start)))
        except SpendRefused as exc:
            raise SignerRefused(exc.reason, exc.detail) from None


class WalletKeyring:
    """The chain client's ``Keyring`` over the wallet's household keys (by address).

    The outbox signs a household's transaction with it (it picks the nonce, and
    re-signs with a fresh one if it must), so the spend must be authorised and
    recorded first: the agents call ``Wallet.sign_tx(..., ByPolicy())`` (or
    ``ByHomeowner``) for every fill before submitting it."""

    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet
        self._by_address: dict[bytes, str] = {}

    def key_for(self, address: bytes) -> PrivateKey:
        household = self._by_address.get(address)
        if household is None:
            self._by_address = {self.wallet.address(h): h for h in self.wallet.households()}
            household = self._by_address.get(address)
        if household is None:
            from gateway.chain_client.errors import NoKey
            raise NoKey("no_key", f"no household key for {to_checksum(address)}")
        return self.wallet._key(household).key
