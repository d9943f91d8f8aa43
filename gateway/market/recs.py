"""Renewable energy certificates (RECs) from metered PV: issue, offer, transfer, retire (docs/recs.md).

One certificate = 1 MWh (1,000,000 Wh) of metered PV generation, issued to its
producer: the household its meter device is paired with.

- **What counts**: a device's ``interval_energy.pv_wh`` in an interval that has an
  evidence root (``evidence_roots``: closed and provable) and ends at or before
  the device's last PV anchor (``interval_state.pv_until``: the interval's PV is
  known). Only paired devices count.
- **Claims**: an issuance run compares each such interval's ``pv_wh`` with what
  was already counted for it (``rec_counted``) and records the difference as a
  *claim* (``rec_claims``: device, interval, delta Wh, the root version it cites).
  A positive claim first pays the household's *debt*, the rest is *available*.
  A negative claim (late readings moved energy out of a counted interval) takes
  its Wh back from available claims (the same device and interval first, then
  newest first); what is already in certificates becomes debt, repaid by later
  generation before any new certificate. So at every moment
  ``certificates x 1,000,000 + available - debt = sum of counted Wh``, and a Wh
  of PV backs at most one certificate.
- **Certificates**: while a household's available Wh reach 1,000,000, one
  certificate takes them oldest first (``rec_backing``: which claim, interval,
  root, Wh); the sub-MWh remainder stays available for the next run.
- **Life**: ``issued`` -> ``offered`` (listed for sale) -> ``transferred`` (sold, or
  given) -> ``retired`` (final, with reason and beneficiary). Only the owner acts;
  every change is a ``rec_events`` row (who, when, from, to).

All writes of one call are one SQLite transaction (``BEGIN IMMEDIATE``), so two
concurrent issuance runs cannot count the same Wh.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from gateway.aggregator.intervals import INTERVAL_S, IntervalEngine, registry_columns
from gateway.db import ensure_schema, transaction
from gateway.evidence.roots import EvidenceStore, iso

log = logging.getLogger(__name__)

MWH = 1_000_000   # Wh per certificate
ISSUED, OFFERED, TRANSFERRED, RETIRED = "issued", "offered", "transferred", "retired"
STATES = (ISSUED, OFFERED, TRANSFERRED, RETIRED)

_HOUSEHOLD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rec_counted (
        device_id  BLOB    NOT NULL,
        interval_s INTEGER NOT NULL,
        start      INTEGER NOT NULL,
        counted_wh INTEGER NOT NULL,     -- the interval's pv_wh as last counted
        PRIMARY KEY (device_id, interval_s, start)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rec_claims (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        run          INTEGER NOT NULL,
        grid         TEXT    NOT NULL,
        household    TEXT    NOT NULL,
        device_id    BLOB    NOT NULL,
        interval_s   INTEGER NOT NULL,
        start        INTEGER NOT NULL,
        delta_wh     INTEGER NOT NULL,   -- pv_wh now - counted before (negative: late readings moved Wh out)
        counted_wh   INTEGER NOT NULL,   -- pv_wh now
        debt_paid_wh INTEGER NOT NULL,   -- of a positive delta, what repaid debt
        available_wh INTEGER NOT NULL,   -- still free to back a certificate
        root         BLOB    NOT NULL,   -- the interval's evidence root cited (latest version at the run)
        root_version INTEGER NOT NULL,
        leaf_count   INTEGER NOT NULL,
        at           INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS rec_claims_available ON rec_claims (grid, household, available_wh)",
    """CREATE TABLE IF NOT EXISTS rec_accounts (
        grid      TEXT    NOT NULL,
        household TEXT    NOT NULL,
        next_seq  INTEGER NOT NULL,
        debt_wh   INTEGER NOT NULL,
        PRIMARY KEY (grid, household)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rec_runs (
        run          INTEGER PRIMARY KEY AUTOINCREMENT,
        grid         TEXT    NOT NULL,
        by           TEXT    NOT NULL,
        at           INTEGER NOT NULL,
        claims       INTEGER NOT NULL,
        certificates INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rec_certificates (
        serial        TEXT    PRIMARY KEY,   -- grid/household/seq
        grid          TEXT    NOT NULL,
        household     TEXT    NOT NULL,      -- the producer
        seq           INTEGER NOT NULL,
        mwh           INTEGER NOT NULL,
        vintage_start INTEGER NOT NULL,      -- first backing interval's start
        vintage_end   INTEGER NOT NULL,      -- last backing interval's end
        issuer        TEXT    NOT NULL,      -- issuing gateway
        run           INTEGER NOT NULL,
        state         TEXT    NOT NULL,
        owner         TEXT    NOT NULL,
        issued_at     INTEGER NOT NULL,
        retired_at    INTEGER,
        retire_reason TEXT,
        beneficiary   TEXT,
        UNIQUE (grid, household, seq))""",
    "CREATE INDEX IF NOT EXISTS rec_certificates_owner ON rec_certificates (owner, state)",
    """CREATE TABLE IF NOT EXISTS rec_backing (
        serial       TEXT    NOT NULL,
        claim_id     INTEGER NOT NULL,
        device_id    BLOB    NOT NULL,
        interval_s   INTEGER NOT NULL,
        start        INTEGER NOT NULL,
        wh           INTEGER NOT NULL,
        root         BLOB    NOT NULL,
        root_version INTEGER NOT NULL,
        leaf_count   INTEGER NOT NULL,
        PRIMARY KEY (serial, claim_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rec_events (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        serial       TEXT    NOT NULL,
        at           INTEGER NOT NULL,
        action       TEXT    NOT NULL,      -- issue | offer | withdraw | sell | transfer | retire
        actor        TEXT    NOT NULL,
        from_owner   TEXT,
        to_owner     TEXT,
        state_before TEXT,
        state_after  TEXT    NOT NULL,
        detail       TEXT)""",
    "CREATE INDEX IF NOT EXISTS rec_events_serial ON rec_events (serial, id)",
    """CREATE TABLE IF NOT EXISTS rec_offers (
        id          TEXT    PRIMARY KEY,
        serial      TEXT    NOT NULL,
        seller      TEXT    NOT NULL,
        price_noia  TEXT    NOT NULL,       -- decimal NOIA base units for the certificate
        state       TEXT    NOT NULL,       -- open | sold | withdrawn
        buyer       TEXT,
        payment_ref TEXT,                   -- off-chain payment reference, recorded as given
        created_at  INTEGER NOT NULL,
        closed_at   INTEGER)""",
)


class RecError(Exception):
    """Base of the REC errors; ``reason`` is a short code."""

    reason = "rec_error"

    def __init__(self, detail: str = "", reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
        self.detail = detail


class BadRequest(RecError, ValueError):
    """Malformed input (owner name, price, reason). Reasons: ``bad_owner``, ``bad_request``, ``no_registry``."""

    reason = "bad_request"


class UnknownSerial(RecError, LookupError):
    reason = "unknown_serial"


class Refused(RecError):
    """A state change the certificate's state or ownership does not allow. Reasons: ``not_owner``,
    ``already_retired``, ``offered`` (withdraw the offer first), ``not_offered``, ``same_owner``,
    ``unknown_offer``."""

    reason = "refused"


class InsufficientGeneration(RecError):
    """Fewer than 1,000,000 Wh available for the household asked about."""

    reason = "insufficient_generation"


@dataclass(frozen=True, slots=True)
class Backing:
    """Part of a certificate's MWh: ``wh`` of a device's PV in one interval, citing its evidence root."""

    claim_id: int
    device_id: bytes
    interval_s: int
    start: int
    wh: int
    root: bytes
    root_version: int
    leaf_count: int

    def to_json(self) -> dict[str, Any]:
        return {"claim": self.claim_id, "device_id": self.device_id.hex(), "interval_start": self.start,
                "interval_iso": iso(self.start), "interval_s": self.interval_s, "wh": self.wh,
                "root": self.root.hex(), "root_version": self.root_version, "leaf_count": self.leaf_count}


@dataclass(frozen=True)
class Certificate:
    serial: str
    grid: str
    household: str            # producer
    seq: int
    mwh: int
    vintage_start: int
    vintage_end: int
    issuer: str
    state: str
    owner: str
    issued_at: int
    retired_at: int | None = None
    retire_reason: str | None = None
    beneficiary: str | None = None
    evidence: tuple[Backing, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"serial": self.serial, "grid": self.grid, "producer": self.household, "seq": self.seq,
                "mwh": self.mwh, "vintage_start": self.vintage_start, "vintage_end": self.vintage_end,
                "vintage": f"{iso(self.vintage_start)}/{iso(self.vintage_end)}", "issuer": self.issuer,
                "state": self.state, "owner": self.owner, "issued_at": self.issued_at,
                "retired_at": self.retired_at, "retire_reason": self.retire_reason,
                "beneficiary": self.beneficiary, "evidence": [b.to_json() for b in self.evidence]}


@dataclass(frozen=True, slots=True)
class Event:
    serial: str
    at: int
    action: str
    actor: str
    from_owner: str | None
    to_owner: str | None
    state_before: str | None
    state_after: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"serial": self.serial, "at": self.at, "action": self.action, "actor": self.actor,
                "from": self.from_owner, "to": self.to_owner, "state_before": self.state_before,
                "state_after": self.state_after, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Balance:
    """A producer's account: what is counted, certified, carried (available) and owed (debt)."""

    grid: str
    household: str
    counted_wh: int
    certificates: int
    available_wh: int
    debt_wh: int

    def to_json(self) -> dict[str, Any]:
        return {"grid": self.grid, "household": self.household, "counted_wh": self.counted_wh,
                "certificates": self.certificates, "available_wh": self.available_wh, "debt_wh": self.debt_wh}


@dataclass(frozen=True)
class IssueResult:
    run: int
    grid: str
    claims: int                         # claim rows written (intervals whose counted pv changed)
    counted_delta_wh: int               # sum of the claims' deltas
    certificates: tuple[Certificate, ...]
    balances: tuple[Balance, ...]       # of the households this run touched

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "grid": self.grid, "claims": self.claims, "counted_delta_wh": self.counted_delta_wh,
                "issued": [c.serial for c in self.certificates], "balances": [b.to_json() for b in self.balances]}


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    serial: str
    seller: str
    price_noia: int
    state: str
    buyer: str | None
    payment_ref: str | None
    created_at: int
    closed_at: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "serial": self.serial, "seller": self.seller, "price_noia": str(self.price_noia),
                "state": self.state, "buyer": self.buyer, "payment_ref": self.payment_ref,
                "created_at": self.created_at, "closed_at": self.closed_at}


def check_owner(owner: str) -> str:
    """A household name or a 0x address (lower-cased)."""
    if isinstance(owner, str) and _ADDRESS.match(owner):
        return owner.lower()
    if isinstance(owner, str) and _HOUSEHOLD.match(owner):
        return owner
    raise BadRequest(f"owner {owner!r} is neither a household name nor a 0x address", "bad_owner")


def parse_serial(serial: str) -> tuple[str, str, int]:
    """(grid, household, seq) of ``grid/household/seq``."""
    parts = serial.split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        raise UnknownSerial(f"{serial!r} is not a serial grid/household/seq")
    return parts[0], parts[1], int(parts[2])


_CERT_COLS = ("serial, grid, household, seq, mwh, vintage_start, vintage_end, issuer, state, owner, issued_at, "
              "retired_at, retire_reason, beneficiary")


class RecRegistry:
    """Certificates of one gateway database (any number of grids)."""

    def __init__(self, conn: sqlite3.Connection, *, issuer: str = "metanoia-gateway", interval_s: int = INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.issuer = issuer
        self.interval_s = interval_s
        self.clock = clock
        IntervalEngine(conn, interval_s=interval_s)   # its tables exist (empty until readings come)
        EvidenceStore(conn, interval_s=interval_s)
        ensure_schema(conn, "recs", SCHEMA)

    def _now(self) -> int:
        return int(self.clock())

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.conn)

    # ---- issuance ----

    def issue(self, grid: str, *, household: str | None = None, by: str = "operator") -> IssueResult:
        """Count new metered PV of ``grid``'s rooted intervals and issue every whole MWh.

        With ``household``: only that producer, and ``InsufficientGeneration`` (after the
        counting is committed) if it gets no certificate."""
        if "household" not in registry_columns(self.conn):
            raise BadRequest("no device registry in this database", "no_registry")
        now = self._now()
        L = self.interval_s
        with self._tx() as c:
            run = c.execute("INSERT INTO rec_runs (grid, by, at, claims, certificates) VALUES (?, ?, ?, 0, 0)",
                            (grid, by, now)).lastrowid
            assert run is not None
            sql = ("SELECT e.device_id, d.household, e.start, e.pv_wh, COALESCE(k.counted_wh, 0), "
                   "r.root, r.version, r.leaf_count "
                   "FROM interval_energy e JOIN devices d ON d.device_id = e.device_id "
                   "JOIN interval_state s ON s.device_id = e.device_id AND s.interval_s = e.interval_s "
                   "JOIN evidence_roots r ON r.grid = d.grid AND r.interval_s = e.interval_s AND r.start = e.start "
                   "AND r.version = (SELECT MAX(version) FROM evidence_roots x WHERE x.grid = r.grid AND "
                   "x.interval_s = r.interval_s AND x.start = r.start) "
                   "LEFT JOIN rec_counted k ON k.device_id = e.device_id AND k.interval_s = e.interval_s "
                   "AND k.start = e.start "
                   "WHERE d.grid = ? AND d.household IS NOT NULL AND e.interval_s = ? AND s.pv_until IS NOT NULL "
                   "AND e.start + ? <= s.pv_until AND e.pv_wh != COALESCE(k.counted_wh, 0)")
            args: list[Any] = [grid, L, L]
            if household is not None:
                sql += " AND d.household = ?"
                args.append(household)
            changes = c.execute(sql + " ORDER BY d.household, e.start, e.device_id", args).fetchall()
            touched: list[str] = []
            total = 0
            for dev, hh, start, pv, counted, root, version, leaves in changes:
                dev = bytes(dev)
                delta = pv - counted
                total += delta
                if hh not in touched:
                    touched.append(hh)
                self._claim(run, grid, hh, dev, start, delta, pv, bytes(root), version, leaves, now)
                c.execute("INSERT OR REPLACE INTO rec_counted (device_id, interval_s, start, counted_wh) "
                          "VALUES (?, ?, ?, ?)", (dev, L, start, pv))
            # every producer with a whole MWh available (earlier runs may have left some if interrupted)
            q = ("SELECT household FROM rec_claims WHERE grid = ? AND available_wh > 0 "
                 + ("AND household = ? " if household is not None else "")
                 + "GROUP BY household HAVING SUM(available_wh) >= ? ORDER BY household")
            ready = [r[0] for r in c.execute(q, (grid, household, MWH) if household is not None else (grid, MWH))]
            certs: list[Certificate] = []
            for hh in ready:
                if hh not in touched:
                    touched.append(hh)
                while (cert := self._mint(run, grid, hh, by, now)) is not None:
                    certs.append(cert)
            c.execute("UPDATE rec_runs SET claims = ?, certificates = ? WHERE run = ?", (len(changes), len(certs), run))
            balances = tuple(self.balance(grid, hh) for hh in sorted(touched))
        if certs or changes:
            log.info("recs: run %d grid=%s: %d claim(s), %+d Wh, %d certificate(s)", run, grid, len(changes), total,
                     len(certs))
        result = IssueResult(run, grid, len(changes), total, tuple(certs), balances)
        if household is not None and not certs:
            b = self.balance(grid, household)
            raise InsufficientGeneration(
                f"{household} has {b.available_wh} Wh available and {b.debt_wh} Wh of debt; a certificate "
                f"needs {MWH} Wh (the remainder is carried)")
        return result

    def _account(self, grid: str, household: str) -> tuple[int, int]:
        row = self.conn.execute("SELECT next_seq, debt_wh FROM rec_accounts WHERE grid = ? AND household = ?",
                                (grid, household)).fetchone()
        if row is None:
            self.conn.execute("INSERT INTO rec_accounts (grid, household, next_seq, debt_wh) VALUES (?, ?, 1, 0)",
                              (grid, household))
            return 1, 0
        return row[0], row[1]

    def _claim(self, run: int, grid: str, hh: str, dev: bytes, start: int, delta: int, pv: int, root: bytes,
               version: int, leaves: int, now: int) -> None:
        c = self.conn
        _seq, debt = self._account(grid, hh)
        paid = available = 0
        if delta > 0:
            paid = min(debt, delta)
            available = delta - paid
            debt -= paid
        else:
            need = -delta
            # take back from free Wh: this device and interval first, then the newest
            for cid, free in c.execute(
                    "SELECT id, available_wh FROM rec_claims WHERE grid = ? AND household = ? AND available_wh > 0 "
                    "ORDER BY (device_id = ? AND start = ?) DESC, start DESC, id DESC",
                    (grid, hh, dev, start)).fetchall():
                take = min(free, need)
                c.execute("UPDATE rec_claims SET available_wh = available_wh - ? WHERE id = ?", (take, cid))
                need -= take
                if not need:
                    break
            if need:
                log.warning("recs: %s/%s owes %d Wh: late readings moved PV already certified out of interval %d",
                            grid, hh, need, start)
            debt += need
        c.execute("UPDATE rec_accounts SET debt_wh = ? WHERE grid = ? AND household = ?", (debt, grid, hh))
        c.execute("INSERT INTO rec_claims (run, grid, household, device_id, interval_s, start, delta_wh, counted_wh, "
                  "debt_paid_wh, available_wh, root, root_version, leaf_count, at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (run, grid, hh, dev, self.interval_s, start, delta, pv, paid, available, root, version, leaves, now))

    def _mint(self, run: int, grid: str, hh: str, by: str, now: int) -> Certificate | None:
        c = self.conn
        chunks = c.execute("SELECT id, available_wh, device_id, interval_s, start, root, root_version, leaf_count "
                           "FROM rec_claims WHERE grid = ? AND household = ? AND available_wh > 0 "
                           "ORDER BY start, id", (grid, hh)).fetchall()
        if sum(ch[1] for ch in chunks) < MWH:
            return None
        seq, _debt = self._account(grid, hh)
        serial = f"{grid}/{hh}/{seq}"
        need = MWH
        backing: list[Backing] = []
        for cid, free, dev, L, start, root, version, leaves in chunks:
            take = min(free, need)
            backing.append(Backing(cid, bytes(dev), L, start, take, bytes(root), version, leaves))
            c.execute("UPDATE rec_claims SET available_wh = available_wh - ? WHERE id = ?", (take, cid))
            need -= take
            if not need:
                break
        v0 = min(b.start for b in backing)
        v1 = max(b.start + b.interval_s for b in backing)
        c.execute("INSERT INTO rec_certificates (serial, grid, household, seq, mwh, vintage_start, vintage_end, issuer, "
                  "run, state, owner, issued_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
                  (serial, grid, hh, seq, v0, v1, self.issuer, run, ISSUED, hh, now))
        c.executemany("INSERT INTO rec_backing (serial, claim_id, device_id, interval_s, start, wh, root, root_version, "
                      "leaf_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [(serial, b.claim_id, b.device_id, b.interval_s, b.start, b.wh, b.root, b.root_version,
                        b.leaf_count) for b in backing])
        c.execute("UPDATE rec_accounts SET next_seq = ? WHERE grid = ? AND household = ?", (seq + 1, grid, hh))
        self._event(serial, "issue", by, None, hh, None, ISSUED, {"run": run, "issuer": self.issuer}, now)
        log.info("recs: issued %s to %s (vintage %s..%s)", serial, hh, iso(v0), iso(v1))
        return self.get(serial)

    # ---- reading ----

    def get(self, serial: str) -> Certificate:
        row = self.conn.execute(f"SELECT {_CERT_COLS} FROM rec_certificates WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            raise UnknownSerial(f"no certificate {serial!r}")
        backing = tuple(Backing(r[0], bytes(r[1]), r[2], r[3], r[4], bytes(r[5]), r[6], r[7]) for r in self.conn.execute(
            "SELECT claim_id, device_id, interval_s, start, wh, root, root_version, leaf_count FROM rec_backing "
            "WHERE serial = ? ORDER BY start, claim_id", (serial,)))
        return Certificate(**dict(zip(_CERT_COLS.split(", "), row)), evidence=backing)

    def list(self, *, grid: str | None = None, owner: str | None = None, producer: str | None = None,  # noqa: A003
             state: str | None = None) -> list[Certificate]:
        sql, args = "SELECT serial FROM rec_certificates WHERE 1", []
        for col, v in (("grid", grid), ("owner", owner), ("household", producer), ("state", state)):
            if v is not None:
                sql += f" AND {col} = ?"
                args.append(v)
        return [self.get(r[0]) for r in self.conn.execute(sql + " ORDER BY grid, household, seq", args).fetchall()]

    def history(self, serial: str) -> builtins.list[Event]:
        self.get(serial)
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]) if r[8] else {})
                for r in self.conn.execute("SELECT serial, at, action, actor, from_owner, to_owner, state_before, "
                                           "state_after, detail FROM rec_events WHERE serial = ? ORDER BY id",
                                           (serial,))]

    def balance(self, grid: str, household: str) -> Balance:
        counted = self.conn.execute("SELECT COALESCE(SUM(delta_wh), 0), COALESCE(SUM(available_wh), 0) FROM rec_claims "
                                    "WHERE grid = ? AND household = ?", (grid, household)).fetchone()
        (n,) = self.conn.execute("SELECT COUNT(*) FROM rec_certificates WHERE grid = ? AND household = ?",
                                 (grid, household)).fetchone()
        row = self.conn.execute("SELECT debt_wh FROM rec_accounts WHERE grid = ? AND household = ?",
                                (grid, household)).fetchone()
        return Balance(grid, household, counted[0], n, counted[1], 0 if row is None else row[0])

    def audit(self, serial: str) -> builtins.list[str]:
        """What does not hold for a certificate (empty = it checks out against this database): its backing
        sums to its MWh, each cited root is a stored version of that interval's root, and each device
        belongs to the producer in the grid."""
        cert = self.get(serial)
        problems = []
        if sum(b.wh for b in cert.evidence) != cert.mwh * MWH:
            problems.append(f"backing sums to {sum(b.wh for b in cert.evidence)} Wh, not {cert.mwh * MWH}")
        for b in cert.evidence:
            row = self.conn.execute("SELECT root, leaf_count FROM evidence_roots WHERE grid = ? AND interval_s = ? "
                                    "AND start = ? AND version = ?", (cert.grid, b.interval_s, b.start,
                                                                      b.root_version)).fetchone()
            if row is None or bytes(row[0]) != b.root or row[1] != b.leaf_count:
                problems.append(f"interval {iso(b.start)}: root v{b.root_version} {b.root.hex()[:16]}... is not "
                                "the stored one")
            dev = self.conn.execute("SELECT grid, household FROM devices WHERE device_id = ?", (b.device_id,)).fetchone()
            if dev is None or tuple(dev) != (cert.grid, cert.household):
                problems.append(f"device {b.device_id.hex()} is not {cert.household}'s in {cert.grid}")
        return problems

    # ---- state changes ----

    def _event(self, serial: str, action: str, actor: str, frm: str | None, to: str | None, before: str | None,
               after: str, detail: dict[str, Any], now: int) -> None:
        self.conn.execute("INSERT INTO rec_events (serial, at, action, actor, from_owner, to_owner, state_before, "
                          "state_after, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (serial, now, action, actor, frm, to, before, after,
                           json.dumps(detail, sort_keys=True) if detail else None))

    def _owned(self, serial: str, by: str) -> Certificate:
        """The certificate, if ``by`` (already ``check_owner``-ed) may change it."""
        cert = self.get(serial)
        if cert.state == RETIRED:
            raise Refused(f"{serial} was retired at {cert.retired_at}: {cert.retire_reason}", "already_retired")
        if by != cert.owner:
            raise Refused(f"{serial} belongs to {cert.owner}, not {by}", "not_owner")
        return cert

    def _open_offer(self, serial: str) -> Offer | None:
        row = self.conn.execute(f"SELECT {_OFFER_COLS} FROM rec_offers WHERE serial = ? AND state = 'open'",
                                (serial,)).fetchone()
        return None if row is None else _offer(row)

    def _move(self, cert: Certificate, to: str, action: str, by: str, detail: dict[str, Any], now: int) -> None:
        state = ISSUED if to == cert.household else TRANSFERRED
        self.conn.execute("UPDATE rec_certificates SET owner = ?, state = ? WHERE serial = ?", (to, state, cert.serial))
        self._event(cert.serial, action, by, cert.owner, to, cert.state, state, detail, now)

    def transfer(self, serial: str, to: str, *, by: str, note: str | None = None) -> Certificate:
        """Give the certificate to another household or address (an off-chain transfer, recorded here)."""
        to = check_owner(to)
        by = check_owner(by)
        now = self._now()
        with self._tx():
            cert = self._owned(serial, by)
            if cert.state == OFFERED:
                raise Refused(f"{serial} is offered for sale: withdraw the offer first", "offered")
            if to == cert.owner:
                raise Refused(f"{serial} already belongs to {to}", "same_owner")
            self._move(cert, to, "transfer", by, {"note": note} if note else {}, now)
        log.info("recs: %s transferred %s -> %s", serial, cert.owner, to)
        return self.get(serial)

    def retire(self, serial: str, *, by: str, reason: str, beneficiary: str | None = None) -> Certificate:
        """Retire for good (claimed against a use): no later change is possible."""
        reason = (reason or "").strip()
        if not reason or len(reason) > 200:
            raise BadRequest("a retirement needs a reason (1-200 characters)")
        beneficiary = (beneficiary or "").strip() or None
        by = check_owner(by)
        now = self._now()
        with self._tx():
            cert = self._owned(serial, by)
            if cert.state == OFFERED:
                raise Refused(f"{serial} is offered for sale: withdraw the offer first", "offered")
            n = self.conn.execute("UPDATE rec_certificates SET state = ?, retired_at = ?, retire_reason = ?, "
                                  "beneficiary = ? WHERE serial = ? AND state != ?",
                                  (RETIRED, now, reason, beneficiary or cert.owner, serial, RETIRED)).rowcount
            if n != 1:
                raise Refused(f"{serial} is already retired", "already_retired")
            self._event(serial, "retire", by, cert.owner, None, cert.state, RETIRED,
                        {"reason": reason, "beneficiary": beneficiary or cert.owner}, now)
        log.info("recs: %s retired by %s (%s)", serial, by, reason)
        return self.get(serial)

    # ---- the manual-order hook: offer for sale, withdraw, sell ----

    def offer(self, serial: str, *, by: str, price_noia: int) -> Offer:
        """The owner lists the certificate for sale at ``price_noia`` (NOIA base units for the whole REC)."""
        if isinstance(price_noia, bool) or not isinstance(price_noia, int) or price_noia <= 0:
            raise BadRequest("price_noia must be a positive integer")
        by = check_owner(by)
        now = self._now()
        oid = uuid.uuid4().hex
        with self._tx():
            cert = self._owned(serial, by)
            if cert.state == OFFERED:
                raise Refused(f"{serial} is already offered", "offered")
            self.conn.execute("INSERT INTO rec_offers (id, serial, seller, price_noia, state, created_at) "
                              "VALUES (?, ?, ?, ?, 'open', ?)", (oid, serial, cert.owner, str(price_noia), now))
            self.conn.execute("UPDATE rec_certificates SET state = ? WHERE serial = ?", (OFFERED, serial))
            self._event(serial, "offer", by, cert.owner, None, cert.state, OFFERED,
                        {"offer": oid, "price_noia": str(price_noia)}, now)
        return self.get_offer(oid)

    def withdraw(self, serial: str, *, by: str) -> Certificate:
        by = check_owner(by)
        now = self._now()
        with self._tx():
            cert = self._owned(serial, by)
            o = self._open_offer(serial)
            if cert.state != OFFERED or o is None:
                raise Refused(f"{serial} is not offered", "not_offered")
            self.conn.execute("UPDATE rec_offers SET state = 'withdrawn', closed_at = ? WHERE id = ?", (now, o.id))
            state = ISSUED if cert.owner == cert.household else TRANSFERRED
            self.conn.execute("UPDATE rec_certificates SET state = ? WHERE serial = ?", (state, serial))
            self._event(serial, "withdraw", by, cert.owner, None, OFFERED, state, {"offer": o.id}, now)
        return self.get(serial)

    def sell(self, offer_id: str, buyer: str, *, payment_ref: str, by: str = "operator") -> Certificate:
        """Record the sale of an open offer: the certificate moves to ``buyer``. The NOIA payment is
        made elsewhere (off-chain for now); ``payment_ref`` records it as given."""
        buyer = check_owner(buyer)
        if not payment_ref or len(payment_ref) > 200:
            raise BadRequest("a sale needs a payment reference (1-200 characters)")
        now = self._now()
        with self._tx():
            o = self.get_offer(offer_id)
            if o.state != "open":
                raise Refused(f"offer {offer_id} is {o.state}", "not_offered")
            cert = self.get(o.serial)
            if cert.state != OFFERED or cert.owner != o.seller:
                raise Refused(f"{o.serial} is {cert.state}", "not_offered")
            if buyer == cert.owner:
                raise Refused(f"{buyer} already owns {o.serial}", "same_owner")
            self.conn.execute("UPDATE rec_offers SET state = 'sold', buyer = ?, payment_ref = ?, closed_at = ? "
                              "WHERE id = ?", (buyer, payment_ref, now, offer_id))
            self._move(cert, buyer, "sell", by, {"offer": offer_id, "price_noia": str(o.price_noia),
                                                 "payment_ref": payment_ref}, now)
        log.info("recs: %s sold %s -> %s (offer %s, payment %s)", o.serial, o.seller, buyer, offer_id, payment_ref)
        return self.get(o.serial)

    def get_offer(self, offer_id: str) -> Offer:
        row = self.conn.execute(f"SELECT {_OFFER_COLS} FROM rec_offers WHERE id = ?", (offer_id,)).fetchone()
        if row is None:
            raise Refused(f"no offer {offer_id!r}", "unknown_offer")
        return _offer(row)

    def offers(self, *, state: str | None = "open") -> builtins.list[Offer]:
        sql = f"SELECT {_OFFER_COLS} FROM rec_offers" + (" WHERE state = ?" if state else "")
        return [_offer(r) for r in self.conn.execute(sql + " ORDER BY created_at, id", (state,) if state else ())]


_OFFER_COLS = "id, serial, seller, price_noia, state, buyer, payment_ref, created_at, closed_at"


def _offer(r: tuple[Any, ...]) -> Offer:
    return Offer(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6], r[7], r[8])


__all__ = ["RecRegistry", "Certificate", "Backing", "Event", "Balance", "IssueResult", "Offer", "RecError",
           "BadRequest", "UnknownSerial", "Refused", "InsufficientGeneration", "MWH", "ISSUED", "OFFERED",
           "TRANSFERRED", "RETIRED", "check_owner", "parse_serial"]
