"""Settlement: one settle-batch per closed interval, from metered data, submitted exactly once.

For a grid's interval ``[start, start + interval_s)``, once it is *closed* (the deriver
stored its evidence root and ``now >= start + interval_s + grace_s``):

1. **Fills.** The union of the fill sources (``FillSource``: the gateway's records,
   ``ChainFillIndex``: the chain's blocks), each re-read from the chain
   (``chain_getEscrow``): only fills the chain holds in escrow for this grid and
   interval are settled, with the chain's maker, taker, Wh and NOIA. A fill its taker
   reclaimed after the chain's settle timeout (docs/chain.md, "Reclaim") is recorded
   as such and left out: the chain would refuse the whole batch (``fill_reclaimed``).
2. **Delivered Wh, payment, refund** from each household's metered export/import
   (``IntervalEngine.household_intervals``) by the rule of ``settlement_rule``.
3. **Plan, then submit.** The batch (as the chain client's canonical intent JSON),
   its fills and the metered figures it used are committed in one transaction
   *before* anything is sent; then ``OutboxChainClient.submit(Intent("settle:{grid}:
   {start}", authority, SettleBatch(...)))``, ``wait_final``, and the outcome is
   recorded. After a crash the stored plan is submitted again under the same key,
   byte for byte, whatever the readings say by then (see docs/settlement.md for the
   exactly-once argument).

An interval without fills is recorded as settled with nothing to submit. A fill that
lands after its interval was settled gets a further batch (part 1, 2, ...: key
``settle:{grid}:{start}:{part}``) citing the same evidence root, from the metered
energy the earlier batches left. More than 512 fills are split into parts the same
way. A rejected batch is recorded with the chain's reason; its fills are planned
again on a later pass if the chain still holds them in escrow (at most
``max_attempts`` rejections, then the interval is ``failed``). A late reading that
changes a settled interval's root is recorded in ``settlement_late``; the settlement
stands (the chain settles a fill once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from gateway.aggregator.intervals import IntervalEngine
from gateway.chain_client import FinalityTimeout, Intent, OutboxChainClient, Receipt
from gateway.chain_client.intents import intent_from_json, intent_to_json
from gateway.db import ensure_schema, transaction
from gateway.evidence.roots import EvidenceStore
from gateway.validator.order import grid_id
from gateway.validator.tx import MAX_SETTLE_ENTRIES, Settlement, SettleBatch

from .settlement_fills import (ChainFillIndex, FillRecord, FillSource, HouseholdDirectory, TradesFillSource,
                               chain_fill_state, rpc_of)
from .reclaim import mark_reclaimed
from .settlement_rule import Allocation, FillTerms, settle

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS settlement_intervals (
        grid          TEXT    NOT NULL,
        start         INTEGER NOT NULL,
        interval_s    INTEGER NOT NULL,
        state         TEXT    NOT NULL CHECK (state IN ('open', 'settled', 'failed')),
        root          BLOB,              -- evidence root cited on the chain (all batches cite the same)
        root_version  INTEGER,
        leaf_count    INTEGER,
        fills         INTEGER NOT NULL DEFAULT 0,   -- settled by this gateway (final)
        delivered_wh  INTEGER NOT NULL DEFAULT 0,
        escrow        TEXT    NOT NULL DEFAULT '0', -- decimal NOIA units
        payment       TEXT    NOT NULL DEFAULT '0',
        refund        TEXT    NOT NULL DEFAULT '0',
        reason        TEXT,
        updated_ms    INTEGER NOT NULL,
        PRIMARY KEY (grid, start)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS settlement_batches (
        grid        TEXT    NOT NULL,
        start       INTEGER NOT NULL,
        part        INTEGER NOT NULL,
        key         TEXT    NOT NULL UNIQUE,       -- the chain client's idempotency key
        intent      TEXT    NOT NULL,              -- canonical intent JSON: what is (re)submitted
        metered     TEXT    NOT NULL,              -- {household: [export_wh, import_wh]} the plan used
        state       TEXT    NOT NULL CHECK (state IN ('planned', 'final', 'rejected')),
        tx_hash     BLOB,
        height      INTEGER,
        reason      TEXT,
        entries     INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (grid, start, part)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS settlement_fills (
        fill_id          BLOB    NOT NULL CHECK (length(fill_id) = 32),
        grid             TEXT    NOT NULL,
        start            INTEGER NOT NULL,
        part             INTEGER NOT NULL,          -- -1: found settled on the chain by someone else,
                                                    -- -2: reclaimed by its taker (settle timeout)
        maker            BLOB    NOT NULL,
        taker            BLOB    NOT NULL,
        maker_household  TEXT,
        taker_household  TEXT,
        ordered_wh       INTEGER NOT NULL,
        escrow           TEXT    NOT NULL,
        delivered_wh     INTEGER NOT NULL,
        payment          TEXT    NOT NULL,
        refund           TEXT    NOT NULL,
        state            TEXT    NOT NULL CHECK (state IN ('planned', 'final', 'rejected')),
        PRIMARY KEY (grid, start, part, fill_id)
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX IF NOT EXISTS settlement_fills_live ON settlement_fills (fill_id) WHERE state != 'rejected'",
    """CREATE TABLE IF NOT EXISTS settlement_late (
        grid           TEXT    NOT NULL,
        start          INTEGER NOT NULL,
        version        INTEGER NOT NULL,     -- the new root version, after the settlement
        leaf_count     INTEGER NOT NULL,
        root           BLOB    NOT NULL,
        cited_version  INTEGER,              -- the version the settlement cited
        noted_ms       INTEGER NOT NULL,
        PRIMARY KEY (grid, start, version)
    ) WITHOUT ROWID""",
)

FaultHook = Callable[[str], None]
FAULT_POINTS = ("planned", "submitted", "final_seen")
PART_ELSEWHERE, PART_RECLAIMED = -1, -2   # settlement_fills.part of fills this gateway did not settle


class SettlementError(Exception):
    """Base: ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class NotClosed(SettlementError):
    """The interval cannot be settled yet: ``no_root`` (not rooted) or ``in_grace`` (too recent)."""


@dataclass(frozen=True)
class SettlementConfig:
    grid: str                   # the grid's name (devices.grid); on the chain: grid_id(grid)
    interval_s: int = 900
    grace_s: int = 120          # after the interval's end, on the gateway clock
    wait_final_s: float = 30.0  # per batch, per pass (a timeout leaves it for the next pass)
    max_attempts: int = 5       # rejected batches per interval before it is 'failed'


@dataclass(frozen=True)
class BatchInfo:
    part: int
    key: str
    state: str
    entries: int
    tx_hash: bytes | None
    height: int | None
    reason: str | None


@dataclass(frozen=True)
class IntervalResult:
    grid: str
    start: int
    state: str                  # open | settled | failed | not_closed
    fills: int
    delivered_wh: int
    escrow: int
    payment: int
    refund: int
    batches: tuple[BatchInfo, ...]
    root: bytes | None = None
    root_version: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"grid": self.grid, "start": self.start, "state": self.state, "fills": self.fills,
                "delivered_wh": self.delivered_wh, "escrow": str(self.escrow), "payment": str(self.payment),
                "refund": str(self.refund), "root": None if self.root is None else self.root.hex(),
                "root_version": self.root_version, "reason": self.reason,
                "batches": [{"part": b.part, "key": b.key, "state": b.state, "entries": b.entries,
                             "tx_hash": None if b.tx_hash is None else "0x" + b.tx_hash.hex(), "height": b.height,
                             "reason": b.reason} for b in self.batches]}


def _ms() -> int:
    return int(time.time() * 1000)


class Settler:
    """Settles one grid's closed intervals through an ``OutboxChainClient`` signing as the complex authority.

    The client's follower must run (``async with client``) for batches to reach finality."""

    def __init__(self, conn: sqlite3.Connection, client: OutboxChainClient, authority: bytes,
                 sources: Sequence[FillSource], config: SettlementConfig, *,
                 directory: HouseholdDirectory | None = None, clock: Callable[[], float] = time.time,
                 fault: FaultHook | None = None) -> None:
        self.conn = conn
        self.client = client
        self.authority = authority
        self.sources = list(sources)
        self.config = config
        self.directory = directory
        self.clock = clock
        self.fault = fault
        self.gid = grid_id(config.grid)
        self.intervals = IntervalEngine(conn, interval_s=config.interval_s)
        self.evidence = EvidenceStore(conn, interval_s=config.interval_s)
        ensure_schema(conn, "settlement", SCHEMA)

    # ---- helpers ----

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.conn)

    def _fault(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    def key(self, start: int, part: int) -> str:
        base = f"settle:{self.config.grid}:{start}"
        return base if part == 0 else f"{base}:{part}"

    def _check_start(self, start: int) -> None:
        if start % self.config.interval_s:
            raise SettlementError("bad_interval", f"{start} is not a multiple of {self.config.interval_s}")

    def closed(self, start: int) -> None:
        """Raise ``NotClosed`` unless the interval is rooted and past its grace period."""
        if self.evidence.latest(self.config.grid, start) is None:
            raise NotClosed("no_root", f"interval {start} has no evidence root yet")
        if self.clock() < start + self.config.interval_s + self.config.grace_s:
            raise NotClosed("in_grace", f"interval {start} ends at {start + self.config.interval_s}")

    # ---- one interval ----

    async def settle_interval(self, start: int) -> IntervalResult:
        """Settle one interval (idempotent: a settled interval is only re-checked for late fills)."""
        self._check_start(start)
        rejected_now = False
        for part, text in self.conn.execute(
                "SELECT part, intent FROM settlement_batches WHERE grid = ? AND start = ? AND state = 'planned' "
                "ORDER BY part", (self.config.grid, start)).fetchall():
            rejected_now |= not await self._submit(start, part, intent_from_json(text))
        row = self.conn.execute("SELECT state FROM settlement_intervals WHERE grid = ? AND start = ?",
                                (self.config.grid, start)).fetchone()
        if row is not None and row[0] == "failed":
            return self.result(start)
        if rejected_now or self._planned(start):
            return self._finish(start)
        try:
            self.closed(start)
        except NotClosed as exc:
            if row is None:
                return IntervalResult(self.config.grid, start, "not_closed", 0, 0, 0, 0, 0, (), reason=exc.reason)
            return self.result(start)
        planned = await self._plan(start)
        if not planned and row is not None and row[0] == "settled":
            return self.result(start)  # nothing new: no write
        for part, intent in planned:
            if not await self._submit(start, part, intent):
                break
        return self._finish(start)

    def _planned(self, start: int) -> bool:
        return self.conn.execute("SELECT 1 FROM settlement_batches WHERE grid = ? AND start = ? AND state = "
                                 "'planned'", (self.config.grid, start)).fetchone() is not None

    async def _candidates(self, start: int) -> tuple[list[tuple[FillTerms, FillRecord]],
                                                     list[tuple[FillRecord, int, tuple[int, int, int]]]]:
        """Fills to settle now (with the chain's terms), and fills closed without us: (record, part,
        (delivered Wh, payment, refund)) for those settled by someone else or reclaimed by their taker."""
        known: dict[bytes, FillRecord] = {}
        for src in self.sources:
            for f in src.fills(self.gid, start):
                prev = known.get(f.fill_id)
                if prev is None or (prev.maker_household is None and f.maker_household is not None):
                    known[f.fill_id] = f
        live = {bytes(r[0]) for r in self.conn.execute(
            "SELECT fill_id FROM settlement_fills WHERE grid = ? AND start = ? AND state != 'rejected'",
            (self.config.grid, start))}
        todo: list[tuple[FillTerms, FillRecord]] = []
        elsewhere: list[tuple[FillRecord, int, tuple[int, int, int]]] = []
        for fid in sorted(set(known) - live):
            rec = known[fid]
            st = await chain_fill_state(self.client.backend, fid)
            if st.status == "settled" and st.settled is not None:
                elsewhere.append((rec, PART_ELSEWHERE, st.settled))
                continue
            if st.status == "reclaimed" and st.reclaimed is not None:
                elsewhere.append((rec, PART_RECLAIMED, (0, 0, st.reclaimed)))
                continue
            esc = st.escrow
            if st.status != "escrowed" or esc is None:
                log.info("settle %s %d: fill %s not escrowed on the chain (yet); skipped", self.config.grid, start,
                         fid.hex())
                continue
            if esc.grid != self.gid or esc.interval_start != start:
                log.warning("settle %s %d: fill %s is escrowed for another grid/interval; skipped",
                            self.config.grid, start, fid.hex())
                continue
            d = self.directory
            mh = rec.maker_household or (d.household_of(esc.maker) if d else None)
            th = rec.taker_household or (d.household_of(esc.taker) if d else None)
            rec = FillRecord(fid, esc.maker, esc.taker, esc.wh, esc.noia, mh, th)  # the chain's terms
            todo.append((FillTerms(fid, mh, th, esc.wh, esc.noia), rec))
        return todo, elsewhere

    def _metered_left(self, start: int, households: set[str]) -> dict[str, tuple[int, int]]:
        """(export, import) Wh per household, minus what earlier live batches of this interval allocated."""
        out: dict[str, tuple[int, int]] = {}
        for h in sorted(households):
            rows = self.intervals.household_intervals(h, start, start + 1)
            exp, imp = (rows[0].export_wh, rows[0].import_wh) if rows else (0, 0)
            used_exp = self.conn.execute(
                "SELECT COALESCE(SUM(delivered_wh), 0) FROM settlement_fills WHERE grid = ? AND start = ? AND "
                "state != 'rejected' AND part >= 0 AND maker_household = ?", (self.config.grid, start, h)).fetchone()[0]
            used_imp = self.conn.execute(
                "SELECT COALESCE(SUM(delivered_wh), 0) FROM settlement_fills WHERE grid = ? AND start = ? AND "
                "state != 'rejected' AND part >= 0 AND taker_household = ?", (self.config.grid, start, h)).fetchone()[0]
            out[h] = (max(0, exp - used_exp), max(0, imp - used_imp))
        return out

    async def _plan(self, start: int) -> list[tuple[int, Intent]]:
        """Build and durably record the batches for the fills not yet settled; returns (part, intent)."""
        todo, elsewhere = await self._candidates(start)
        g = self.config.grid
        households = {h for t, _ in todo for h in (t.maker_household, t.taker_household) if h is not None}
        metered = self._metered_left(start, households)
        allocs = settle([t for t, _ in todo], {h: v[0] for h, v in metered.items()},
                        {h: v[1] for h, v in metered.items()})
        recs = {r.fill_id: r for _, r in todo}
        cited = self.conn.execute("SELECT root, root_version, leaf_count FROM settlement_intervals WHERE grid = ? "
                                  "AND start = ? AND root IS NOT NULL", (g, start)).fetchone()
        if cited is not None:  # the chain holds the interval's first root: every later batch must cite it
            root, version, leaves = bytes(cited[0]), cited[1], cited[2]
        else:
            r = self.evidence.latest(g, start)
            assert r is not None  # closed() checked
            root, version, leaves = r.root, r.version, r.leaf_count
        now = _ms()
        planned: list[tuple[int, Intent]] = []
        if not allocs and not elsewhere:
            return planned
        with self._tx() as c:
            c.execute("INSERT INTO settlement_intervals (grid, start, interval_s, state, updated_ms) VALUES "
                      "(?, ?, ?, 'open', ?) ON CONFLICT (grid, start) DO UPDATE SET state = 'open', "
                      "updated_ms = excluded.updated_ms", (g, start, self.config.interval_s, now))
            for rec, where, (dwh, pay, ref) in elsewhere:
                c.execute("INSERT OR IGNORE INTO settlement_fills VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?, 'final')",
                          (rec.fill_id, g, start, where, rec.maker, rec.taker, rec.maker_household,
                           rec.taker_household, rec.wh, str(rec.noia), dwh, str(pay), str(ref)))
                log.warning("settle %s %d: fill %s was %s on the chain; left out", g, start, rec.fill_id.hex(),
                            "already settled by someone else" if where == PART_ELSEWHERE else
                            "reclaimed by its taker after the settle timeout")
                if where == PART_RECLAIMED:
                    mark_reclaimed(c, rec.fill_id)
            if allocs:
                c.execute("UPDATE settlement_intervals SET root = ?, root_version = ?, leaf_count = ? WHERE grid = ? "
                          "AND start = ?", (root, version, leaves, g, start))
                part = c.execute("SELECT COALESCE(MAX(part), -1) + 1 FROM settlement_batches WHERE grid = ? AND "
                                 "start = ?", (g, start)).fetchone()[0]
                for i in range(0, len(allocs), MAX_SETTLE_ENTRIES):
                    chunk = allocs[i:i + MAX_SETTLE_ENTRIES]
                    intent = Intent(self.key(start, part), self.authority, SettleBatch(
                        self.gid, start, root, tuple(Settlement(a.fill_id, a.delivered_wh, a.payment, a.refund)
                                                     for a in chunk)))
                    c.execute("INSERT INTO settlement_batches (grid, start, part, key, intent, metered, state, "
                              "entries, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?)",
                              (g, start, part, intent.key, intent_to_json(intent),
                               json.dumps({h: list(v) for h, v in metered.items()}, sort_keys=True), len(chunk),
                               now, now))
                    c.executemany("INSERT INTO settlement_fills VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?, 'planned')",
                                  [_fill_row(recs[a.fill_id], a, g, start, part) for a in chunk])
                    planned.append((part, intent))
                    part += 1
        if planned:
            log.info("settle %s %d: planned %d fill(s) in %d batch(es), root v%s", g, start, len(allocs),
                     len(planned), version)
            self._fault("planned")
        return planned

    async def _submit(self, start: int, part: int, intent: Intent) -> bool:
        """Submit a planned batch (same key, same bytes), follow it to finality, record it. False if rejected."""
        sid = await self.client.submit(intent)
        self._fault("submitted")
        try:
            receipt = await self.client.wait_final(sid, self.config.wait_final_s)
        except FinalityTimeout:
            log.warning("settle %s: batch %s not final within %.0f s; next pass", self.config.grid, intent.key,
                        self.config.wait_final_s)
            return True
        self._fault("final_seen")
        self._record(start, part, receipt)
        return receipt.ok

    def _record(self, start: int, part: int, r: Receipt) -> None:
        g = self.config.grid
        state = "final" if r.ok else "rejected"
        with self._tx() as c:
            c.execute("UPDATE settlement_batches SET state = ?, tx_hash = ?, height = ?, reason = ?, updated_ms = ? "
                      "WHERE grid = ? AND start = ? AND part = ? AND state = 'planned'",
                      (state, r.tx_hash, r.height, r.reason, _ms(), g, start, part))
            c.execute("UPDATE settlement_fills SET state = ? WHERE grid = ? AND start = ? AND part = ? AND "
                      "state = 'planned'", (state, g, start, part))
            if r.ok and c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trades'").fetchone():  # trades.py: settlement moves final trades on to 'settled'
                c.execute("UPDATE trades SET state = 'settled', updated_at = ? WHERE state = 'final' AND fill_id IN "
                          "(SELECT fill_id FROM settlement_fills WHERE grid = ? AND start = ? AND part = ?)",
                          (int(self.clock()), g, start, part))
        if r.ok:
            log.info("settle %s %d part %d: final at height %s, tx 0x%s", g, start, part, r.height,
                     (r.tx_hash or b"").hex())
        else:
            log.warning("settle %s %d part %d: rejected by the chain: %s", g, start, part, r.reason)

    def _finish(self, start: int) -> IntervalResult:
        """Update the interval's state and totals from its batches."""
        g = self.config.grid
        with self._tx() as c:
            planned, rejected = c.execute(
                "SELECT COALESCE(SUM(state = 'planned'), 0), COALESCE(SUM(state = 'rejected'), 0) FROM "
                "settlement_batches WHERE grid = ? AND start = ?", (g, start)).fetchone()
            n = dwh = esc = pay = ref = 0
            for d, e, p, rf in c.execute("SELECT delivered_wh, escrow, payment, refund FROM settlement_fills WHERE "
                                         "grid = ? AND start = ? AND part >= 0 AND state = 'final'", (g, start)):
                n, dwh, esc, pay, ref = n + 1, dwh + d, esc + int(e), pay + int(p), ref + int(rf)
            unplanned = c.execute(
                "SELECT COUNT(*) FROM settlement_fills f WHERE grid = ? AND start = ? AND state = 'rejected' AND NOT "
                "EXISTS (SELECT 1 FROM settlement_fills g WHERE g.fill_id = f.fill_id AND g.state != 'rejected')",
                (g, start)).fetchone()[0]
            if planned:
                state, reason = "open", None
            elif unplanned and rejected >= self.config.max_attempts:
                last = c.execute("SELECT reason FROM settlement_batches WHERE grid = ? AND start = ? AND state = "
                                 "'rejected' ORDER BY part DESC LIMIT 1", (g, start)).fetchone()
                state, reason = "failed", last[0] if last else None
            elif unplanned:
                state, reason = "open", "retry"
            else:
                state, reason = "settled", None
            c.execute("INSERT INTO settlement_intervals (grid, start, interval_s, state, fills, delivered_wh, escrow, "
                      "payment, refund, reason, updated_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (grid, start) "
                      "DO UPDATE SET state = excluded.state, fills = excluded.fills, delivered_wh = "
                      "excluded.delivered_wh, escrow = excluded.escrow, payment = excluded.payment, refund = "
                      "excluded.refund, reason = excluded.reason, updated_ms = excluded.updated_ms",
                      (g, start, self.config.interval_s, state, n, dwh, str(esc), str(pay), str(ref), reason, _ms()))
        return self.result(start)

    # ---- reading ----

    def result(self, start: int) -> IntervalResult:
        g = self.config.grid
        row = self.conn.execute("SELECT state, fills, delivered_wh, escrow, payment, refund, root, root_version, "
                                "reason FROM settlement_intervals WHERE grid = ? AND start = ?", (g, start)).fetchone()
        if row is None:
            return IntervalResult(g, start, "not_closed", 0, 0, 0, 0, 0, ())
        batches = tuple(BatchInfo(p, k, s, n, None if h is None else bytes(h), ht, r) for p, k, s, n, h, ht, r in
                        self.conn.execute("SELECT part, key, state, entries, tx_hash, height, reason FROM "
                                          "settlement_batches WHERE grid = ? AND start = ? ORDER BY part", (g, start)))
        return IntervalResult(g, start, row[0], row[1], row[2], int(row[3]), int(row[4]), int(row[5]), batches,
                              None if row[6] is None else bytes(row[6]), row[7], row[8])

    def fills(self, start: int) -> list[tuple[bytes, int, int, int, int, int, str]]:
        """(fill id, part, ordered Wh, delivered Wh, payment, refund, state) of the interval."""
        return [(bytes(f), p, o, d, int(pay), int(r), s) for f, p, o, d, pay, r, s in self.conn.execute(
            "SELECT fill_id, part, ordered_wh, delivered_wh, payment, refund, state FROM settlement_fills WHERE "
            "grid = ? AND start = ? ORDER BY part, fill_id", (self.config.grid, start))]

    def summary(self) -> dict[str, int]:
        out = {s: 0 for s in ("open", "settled", "failed")}
        for s, n in self.conn.execute("SELECT state, COUNT(*) FROM settlement_intervals WHERE grid = ? GROUP BY state",
                                      (self.config.grid,)):
            out[s] = n
        out["late_readings"] = self.conn.execute("SELECT COUNT(*) FROM settlement_late WHERE grid = ?",
                                                 (self.config.grid,)).fetchone()[0]
        return out

    # ---- the loop ----

    def pending(self) -> list[int]:
        """Intervals to look at: closed and rooted but not settled, open ones, and settled ones with new fills."""
        g, L = self.config.grid, self.config.interval_s
        horizon = int(self.clock()) - L - self.config.grace_s
        starts = {int(s) for (s,) in self.conn.execute(
            "SELECT DISTINCT r.start FROM evidence_roots r WHERE r.grid = ? AND r.interval_s = ? AND r.start <= ? "
            "AND NOT EXISTS (SELECT 1 FROM settlement_intervals s WHERE s.grid = r.grid AND s.start = r.start AND "
            "s.state IN ('settled', 'failed'))", (g, L, horizon))}
        starts |= {int(s) for (s,) in self.conn.execute(
            "SELECT start FROM settlement_intervals WHERE grid = ? AND state = 'open'", (g,))}
        for src in self.sources:  # fills (on the chain, in the trades table) that no batch of ours covers
            if isinstance(src, ChainFillIndex):
                starts |= set(src.unsettled_intervals(self.gid, horizon))
            elif isinstance(src, TradesFillSource):
                starts |= set(src.unsettled_intervals(horizon))
        failed = {int(s) for (s,) in self.conn.execute(
            "SELECT start FROM settlement_intervals WHERE grid = ? AND state = 'failed'", (g,))}
        return sorted(starts - failed)

    def note_late_readings(self) -> int:
        """Record root versions that appeared after an interval was settled (the settlement stands)."""
        g = self.config.grid
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO settlement_late (grid, start, version, leaf_count, root, cited_version, "
                "noted_ms) SELECT r.grid, r.start, r.version, r.leaf_count, r.root, s.root_version, ? FROM "
                "evidence_roots r JOIN settlement_intervals s ON s.grid = r.grid AND s.start = r.start "
                "WHERE r.grid = ? AND r.interval_s = ? AND s.state = 'settled' AND s.root_version IS NOT NULL "
                "AND r.version > s.root_version", (_ms(), g, self.config.interval_s))
            n = cur.rowcount
        if n > 0:
            log.warning("settle %s: %d root version(s) appeared after settlement (recorded in settlement_late; "
                        "settlements stand)", g, n)
        return max(n, 0)

    async def run_once(self) -> list[IntervalResult]:
        """One pass: index new chain fills, settle every pending interval, note late readings."""
        call = rpc_of(self.client.backend)
        for src in self.sources:
            if isinstance(src, ChainFillIndex) and call is not None:
                await src.sync(call)
        out = []
        for start in self.pending():
            try:
                out.append(await self.settle_interval(start))
            except NotClosed:
                continue
        self.note_late_readings()
        return out

    async def run(self, stop: asyncio.Event, every_s: float = 5.0) -> None:
        """``run_once`` every ``every_s`` seconds until ``stop`` is set; a failing pass is logged and retried."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # the loop outlives any one failure (chain down, ...)
                log.exception("settle %s: pass failed; retrying", self.config.grid)
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except asyncio.TimeoutError:
                pass


def _fill_row(rec: FillRecord, a: Allocation, grid: str, start: int, part: int) -> tuple[object, ...]:
    return (a.fill_id, grid, start, part, rec.maker, rec.taker, rec.maker_household, rec.taker_household,
            a.ordered_wh, str(a.noia), a.delivered_wh, str(a.payment), str(a.refund))


def metered_of_batch(conn: sqlite3.Connection, grid: str, start: int, part: int) -> dict[str, tuple[int, int]]:
    """The (export, import) Wh per household that a batch's plan used."""
    row = conn.execute("SELECT metered FROM settlement_batches WHERE grid = ? AND start = ? AND part = ?",
                       (grid, start, part)).fetchone()
    return {} if row is None else {h: (int(v[0]), int(v[1])) for h, v in json.loads(row[0]).items()}


def interval_rows(conn: sqlite3.Connection, grid: str, limit: int = 50) -> list[dict[str, object]]:
    """The newest ``limit`` intervals of ``settlement_intervals`` with their batches (``settle status``)."""
    ensure_schema(conn, "settlement", SCHEMA)
    out: list[dict[str, object]] = []
    for start, state, fills, dwh, esc, pay, ref, root, ver, reason in conn.execute(
            "SELECT start, state, fills, delivered_wh, escrow, payment, refund, root, root_version, reason FROM "
            "settlement_intervals WHERE grid = ? ORDER BY start DESC LIMIT ?", (grid, limit)).fetchall():
        batches = [{"part": p, "key": k, "state": st, "entries": n, "tx_hash": None if h is None else "0x" + bytes(h).hex(),
                    "height": ht, "reason": rs} for p, k, st, n, h, ht, rs in conn.execute(
            "SELECT part, key, state, entries, tx_hash, height, reason FROM settlement_batches WHERE grid = ? AND "
            "start = ? ORDER BY part", (grid, start))]
        late = [v for (v,) in conn.execute("SELECT version FROM settlement_late WHERE grid = ? AND start = ? "
                                           "ORDER BY version", (grid, start))]
        out.append({"start": start, "state": state, "fills": fills, "delivered_wh": dwh, "escrow": esc,
                    "payment": pay, "refund": ref, "root": None if root is None else bytes(root).hex(),
                    "root_version": ver, "reason": reason, "batches": batches, "late_root_versions": late})
    return out
