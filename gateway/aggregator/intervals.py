"""Interval energy: per device and interval, from the cumulative counters (docs/intervals.md).

The rules in short (the doc has them in full, precisely enough to recompute):

- Intervals are ``interval_s`` long (default 900) and aligned to the unix epoch,
  so they are UTC-aligned; KST (UTC+9) is a whole number of hours off UTC, so
  they are also KST quarter hours.
- A reading is *timed* when ``time != 0`` and the clock-unsynced flag (0x04) is
  clear. Two chains per device: **grid** (import, export; skips readings flagged
  meter error 0x01, whose counters are only repeated) and **pv** (skips readings
  flagged inverter error 0x02). Along a chain, in seq order, a counter's *step* is
  ``new - old`` when not negative; a decrease (a meter reset or swap, flagged 0x10
  or not) is a step of 0 that starts a new baseline and is recorded in
  ``counter_resets``. The chain's cumulative energy is the sum of its steps.
- *Anchors* are a chain's timed readings; an anchor timed earlier than the previous
  anchor is moved to the previous anchor's time. Between consecutive anchors the
  energy is spread linearly in time: the cumulative energy at a boundary ``x`` is
  ``K_j + floor((K_j+1 - K_j) * (x - T_j) / (T_j+1 - T_j))`` for the last anchor
  ``j`` with ``T_j < x``; an interval's energy is ``cum(end) - cum(start)``. So
  intervals add up to the chain's energy exactly, no Wh made or lost by rounding.
  Energy of untimed readings is inside the steps and lands in the span between the
  timed readings around it; energy before the first anchor lands at the first
  anchor's instant; energy after the last anchor waits for the next one.
- An interval is ``estimated`` when a span touching it is longer than ``max_gap_s``,
  contains a skipped (error) reading or a counter reset, had its anchor time moved,
  or is the first anchor's instant after readings without time.

``IntervalEngine(conn).update(device_ids)`` after each committed batch recomputes
only what the new readings touch (from each chain's last open interval on);
``recompute()`` rebuilds everything and gives the same rows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.db import ensure_schema
from gateway.telemetry.format import (FLAG_CLOCK_UNSYNCED, FLAG_COUNTER_BACKWARDS, FLAG_INVERTER_ERROR,
                                      FLAG_METER_ERROR)

log = logging.getLogger(__name__)

INTERVAL_S = 900          # 15 minutes
MAX_GAP_S = 300           # 5 x the firmware's default 60 s cadence

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS interval_energy (
        device_id  BLOB    NOT NULL,
        interval_s INTEGER NOT NULL,
        start      INTEGER NOT NULL,     -- unix s, a multiple of interval_s (UTC-aligned)
        import_wh  INTEGER NOT NULL,
        export_wh  INTEGER NOT NULL,
        pv_wh      INTEGER NOT NULL,
        net_wh     INTEGER NOT NULL,     -- import_wh - export_wh
        readings   INTEGER NOT NULL,     -- timed readings with time in [start, start + interval_s)
        estimated  INTEGER NOT NULL,     -- est_grid OR est_pv
        est_grid   INTEGER NOT NULL,
        est_pv     INTEGER NOT NULL,
        PRIMARY KEY (device_id, interval_s, start)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS interval_energy_by_start ON interval_energy (interval_s, start)",
    """CREATE TABLE IF NOT EXISTS interval_state (
        device_id  BLOB    NOT NULL,
        interval_s INTEGER NOT NULL,
        last_seq   INTEGER NOT NULL,     -- highest seq folded in
        readings   INTEGER NOT NULL,     -- readings folded in (a gap filled later => full recompute)
        grid_until INTEGER,              -- time of the grid chain's last anchor: energy known up to here
        pv_until   INTEGER,
        state      TEXT    NOT NULL,     -- the chains' carry-over (JSON)
        PRIMARY KEY (device_id, interval_s)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS counter_resets (
        device_id BLOB    NOT NULL,
        seq       INTEGER NOT NULL,      -- the reading whose counter was lower than its predecessor's
        counter   TEXT    NOT NULL,      -- import_wh | export_wh | pv_wh
        before    INTEGER NOT NULL,
        after     INTEGER NOT NULL,
        flagged   INTEGER NOT NULL,      -- the reading carried FLAG_COUNTER_BACKWARDS
        PRIMARY KEY (device_id, seq, counter)
    ) WITHOUT ROWID""",
)

_READING_COLS = "seq, time, import_wh, export_wh, pv_wh, flags"


class IntervalError(Exception):
    """Interval energy cannot be computed or queried as asked."""


class RegistryMissing(IntervalError):
    """The device registry (``devices`` table with grid/household) is not there."""


@dataclass(frozen=True, slots=True)
class IntervalEnergy:
    """One device's (or household's, or grid's) energy in one interval."""

    start: int
    interval_s: int
    import_wh: int
    export_wh: int
    pv_wh: int
    readings: int
    estimated: bool

    @property
    def net_wh(self) -> int:
        return self.import_wh - self.export_wh

    @property
    def end(self) -> int:
        return self.start + self.interval_s

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "interval_s": self.interval_s, "import_wh": self.import_wh,
                "export_wh": self.export_wh, "pv_wh": self.pv_wh, "net_wh": self.net_wh,
                "readings": self.readings, "estimated": self.estimated}


@dataclass(frozen=True, slots=True)
class GridBalance:
    """The complex in one interval: sums over the grid's devices, plus counts."""

    start: int
    interval_s: int
    import_wh: int
    export_wh: int
    pv_wh: int
    devices: int              # devices with a row for the interval
    reporting: int            # ... with at least one timed reading in it
    estimated: int            # ... whose row is estimated

    @property
    def net_wh(self) -> int:
        return self.import_wh - self.export_wh

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "interval_s": self.interval_s, "import_wh": self.import_wh,
                "export_wh": self.export_wh, "pv_wh": self.pv_wh, "net_wh": self.net_wh,
                "devices": self.devices, "reporting": self.reporting, "estimated": self.estimated}


def is_timed(time: int, flags: int) -> bool:
    """A reading has a usable time: non-zero and the unsynced flag clear (also used by evidence)."""
    return time != 0 and not flags & FLAG_CLOCK_UNSYNCED


def interval_start(t: int, interval_s: int = INTERVAL_S) -> int:
    return t - t % interval_s


# -- one chain (grid: import+export, or pv) ---------------------------------------------------

@dataclass
class _Chain:
    """A chain's carry-over between batches; ``feed`` folds readings in, seq order."""

    counters: tuple[str, ...]
    skip_flag: int
    last_raw: list[int] | None = None     # counters of the chain's last reading
    k: list[int] = field(default_factory=list)        # cumulative energy at the last reading
    anchor_t: int | None = None           # the last anchor (time, cumulative)
    anchor_k: list[int] = field(default_factory=list)
    open_start: int | None = None         # the interval holding the last anchor ...
    open_cum: list[int] = field(default_factory=list)  # ... cum at its start, final
    open_est: bool = False                # ... estimated so far
    pending_est: bool = False             # the next span is estimated

    def to_json(self) -> dict[str, Any]:
        return {"last_raw": self.last_raw, "k": self.k, "anchor_t": self.anchor_t, "anchor_k": self.anchor_k,
                "open_start": self.open_start, "open_cum": self.open_cum, "open_est": self.open_est,
                "pending_est": self.pending_est}

    @classmethod
    def from_json(cls, counters: tuple[str, ...], skip_flag: int, d: Mapping[str, Any]) -> _Chain:
        return cls(counters, skip_flag, d["last_raw"], list(d["k"]), d["anchor_t"], list(d["anchor_k"]),
                   d["open_start"], list(d["open_cum"]), bool(d["open_est"]), bool(d["pending_est"]))

    def feed(self, rows: list[tuple[int, ...]], device_id: bytes, interval_s: int, max_gap_s: int,
             resets: list[tuple[Any, ...]]) -> dict[int, tuple[list[int], bool]]:
        """Fold readings in; return {interval start: (energies, estimated)} for every interval
        from this chain's previous open interval to its new one (those and only those change)."""
        n = len(self.counters)
        idx = [_COUNTER_INDEX[c] for c in self.counters]
        times: list[int] = []
        ks: list[list[int]] = []
        span_est: list[bool] = []     # span_est[i]: the span ending at new anchor i
        if self.anchor_t is not None:
            times.append(self.anchor_t)
            ks.append(self.anchor_k)
            span_est.append(False)
        had_anchor = self.anchor_t is not None
        for row in rows:
            seq, t, flags = row[0], row[1], row[5]
            if flags & self.skip_flag:
                self.pending_est = True
                continue
            vals = [row[i] for i in idx]
            if self.last_raw is None:
                self.k = [0] * n
            else:
                for j in range(n):
                    d = vals[j] - self.last_raw[j]
                    if d < 0:
                        resets.append((device_id, seq, self.counters[j], self.last_raw[j], vals[j],
                                       int(bool(flags & FLAG_COUNTER_BACKWARDS))))
                        self.pending_est = True
                        d = 0
                    self.k[j] += d
            self.last_raw = vals
            if not is_timed(t, flags):
                if self.anchor_t is None:
                    self.pending_est = True   # its energy will sit at the first anchor's instant
                continue
            est = self.pending_est
            if self.anchor_t is not None:
                if t < self.anchor_t:
                    t, est = self.anchor_t, True
                elif t - self.anchor_t > max_gap_s:
                    est = True
            times.append(t)
            ks.append(list(self.k))
            span_est.append(est)
            self.anchor_t, self.anchor_k, self.pending_est = t, list(self.k), False
        if len(times) == (1 if had_anchor else 0):
            return {}
        # Boundaries from the old open interval (or the first anchor's) to the new last one.
        if had_anchor:
            assert self.open_start is not None
            s0, cum0, est0 = self.open_start, self.open_cum, self.open_est
        else:
            s0, cum0, est0 = interval_start(times[0], interval_s), [0] * n, False
        s_last = interval_start(times[-1], interval_s)
        est_starts: set[int] = {s0} if est0 else set()
        first_new = 1 if had_anchor else 0
        for i in range(first_new, len(times)):
            if not span_est[i]:
                continue
            if i == 0 or times[i - 1] == times[i]:
                est_starts.add(interval_start(times[i], interval_s))
            else:
                a = interval_start(times[i - 1], interval_s)
                b = interval_start(times[i] - 1, interval_s)
                est_starts.update(range(a, b + 1, interval_s))
        out: dict[int, tuple[list[int], bool]] = {}
        cs = cum0
        for s in range(s0, s_last + interval_s, interval_s):
            ce = _cum(times, ks, s + interval_s, n)
            out[s] = ([e - b for e, b in zip(ce, cs)], s in est_starts)
            if s == s_last:
                self.open_start, self.open_cum, self.open_est = s, cs, s in est_starts
            cs = ce
        return out


def _cum(times: list[int], ks: list[list[int]], x: int, n: int) -> list[int]:
    """Cumulative energy attributed to times strictly before x."""
    j = bisect_left(times, x) - 1
    if j < 0:
        return [0] * n
    if j == len(times) - 1:
        return list(ks[j])
    t0, t1 = times[j], times[j + 1]   # t0 < x <= t1, so t1 > t0
    return [a + (b - a) * (x - t0) // (t1 - t0) for a, b in zip(ks[j], ks[j + 1])]


_COUNTER_INDEX = {"import_wh": 2, "export_wh": 3, "pv_wh": 4}
_GRID = ("import_wh", "export_wh")
_PV = ("pv_wh",)


# -- the engine -------------------------------------------------------------------------------

class IntervalEngine:
    """Keeps ``interval_energy`` up to date from ``readings`` (docs/intervals.md).

    Call ``update(device_ids)`` (or ``update_stored((device_id, seq), ...)``) after each
    committed batch. Inside an open transaction the engine writes in it; otherwise it
    commits its own.
    """

    def __init__(self, conn: sqlite3.Connection, *, interval_s: int = INTERVAL_S,
                 max_gap_s: int = MAX_GAP_S) -> None:
        if interval_s <= 0 or max_gap_s <= 0:
            raise IntervalError("interval_s and max_gap_s must be positive")
        self.conn = conn
        self.interval_s = interval_s
        self.max_gap_s = max_gap_s
        ensure_schema(conn, "intervals", SCHEMA)

    # -- updating --
    def update(self, device_ids: Iterable[bytes]) -> int:
        """Fold in the readings stored since the last update; returns intervals written.

        Readings past a device's last folded seq are folded in incrementally; if an
        older seq arrived late (the device count went up below it), that device is
        recomputed in full."""
        return self._run({bytes(d): None for d in device_ids})

    def update_stored(self, stored: Iterable[tuple[bytes, int]]) -> int:
        """Like ``update`` but told exactly which (device_id, seq) were just stored."""
        lowest: dict[bytes, int | None] = {}
        for d, seq in stored:
            d = bytes(d)
            cur = lowest.get(d)
            lowest[d] = seq if cur is None else min(cur, seq)
        return self._run(lowest)

    def recompute(self, device_ids: Iterable[bytes] | None = None) -> int:
        """Rebuild from scratch (all devices with readings when None)."""
        if device_ids is None:
            device_ids = [bytes(r[0]) for r in self.conn.execute("SELECT DISTINCT device_id FROM readings")]
        with self._tx():
            return sum(self._device(bytes(d), full=True) for d in device_ids)

    def _run(self, todo: Mapping[bytes, int | None]) -> int:
        with self._tx():
            return sum(self._device(d, lowest=s) for d, s in sorted(todo.items()))

    def _tx(self) -> _Tx:
        return _Tx(self.conn)

    def _device(self, device_id: bytes, *, full: bool = False, lowest: int | None = None) -> int:
        c = self.conn
        L = self.interval_s
        st = None if full else c.execute(
            "SELECT last_seq, readings, state FROM interval_state WHERE device_id = ? AND interval_s = ?",
            (device_id, L)).fetchone()
        if st is not None:
            last_seq, folded = st[0], st[1]
            if lowest is not None:
                late = lowest <= last_seq
            else:
                late = c.execute("SELECT count(*) FROM readings WHERE device_id = ? AND seq <= ?",
                                 (device_id, last_seq)).fetchone()[0] != folded
            if late:
                log.info("intervals: late reading below seq %d for %s: full recompute", last_seq, device_id.hex())
                st = None
        if st is None:
            c.execute("DELETE FROM interval_energy WHERE device_id = ? AND interval_s = ?", (device_id, L))
            c.execute("DELETE FROM counter_resets WHERE device_id = ?", (device_id,))
            grid, pv = _Chain(_GRID, FLAG_METER_ERROR), _Chain(_PV, FLAG_INVERTER_ERROR)
            last_seq, folded = -1, 0
        else:
            saved = json.loads(st[2])
            grid = _Chain.from_json(_GRID, FLAG_METER_ERROR, saved["grid"])
            pv = _Chain.from_json(_PV, FLAG_INVERTER_ERROR, saved["pv"])
        rows = [tuple(r) for r in c.execute(
            f"SELECT {_READING_COLS} FROM readings WHERE device_id = ? AND seq > ? ORDER BY seq",
            (device_id, last_seq))]
        if not rows:
            return 0
        resets: list[tuple[Any, ...]] = []
        g = grid.feed(rows, device_id, L, self.max_gap_s, resets)
        p = pv.feed(rows, device_id, L, self.max_gap_s, resets)
        counts: dict[int, int] = {}
        for r in rows:
            if is_timed(r[1], r[5]):
                s = interval_start(r[1], L)
                counts[s] = counts.get(s, 0) + 1
        starts = set(g) | set(p) | set(counts)
        written = 0
        if starts:
            lo = min(starts)
            existing = {s: list(v) for s, *v in c.execute(
                "SELECT start, import_wh, export_wh, pv_wh, readings, est_grid, est_pv FROM interval_energy "
                "WHERE device_id = ? AND interval_s = ? AND start >= ?", (device_id, L, lo))}
            out = []
            for s in sorted(starts):
                imp, exp, pvw, n, eg, ep = existing.get(s, [0, 0, 0, 0, 0, 0])
                if s in g:
                    (imp, exp), eg = g[s][0], int(g[s][1])
                if s in p:
                    (pvw,), ep = p[s][0], int(p[s][1])
                n += counts.get(s, 0)
                out.append((device_id, L, s, imp, exp, pvw, imp - exp, n, int(bool(eg or ep)), eg, ep))
            c.executemany("INSERT OR REPLACE INTO interval_energy (device_id, interval_s, start, import_wh, "
                          "export_wh, pv_wh, net_wh, readings, estimated, est_grid, est_pv) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", out)
            written = len(out)
        if resets:
            c.executemany("INSERT OR REPLACE INTO counter_resets (device_id, seq, counter, before, after, flagged) "
                          "VALUES (?, ?, ?, ?, ?, ?)", resets)
            for r in resets:
                log.warning("intervals: counter reset device=%s seq=%d %s %d -> %d flagged=%d",
                            device_id.hex(), r[1], r[2], r[3], r[4], r[5])
        c.execute("INSERT OR REPLACE INTO interval_state (device_id, interval_s, last_seq, readings, grid_until, "
                  "pv_until, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (device_id, L, rows[-1][0], folded + len(rows), grid.anchor_t, pv.anchor_t,
                   json.dumps({"grid": grid.to_json(), "pv": pv.to_json()})))
        return written

    # -- queries --
    def device_intervals(self, device_id: bytes, start: int | None = None,
                         end: int | None = None) -> list[IntervalEnergy]:
        """The device's intervals with start in [start, end) (all when None)."""
        return [_energy(r, self.interval_s) for r in self.conn.execute(
            "SELECT start, import_wh, export_wh, pv_wh, readings, estimated FROM interval_energy "
            "WHERE device_id = ? AND interval_s = ? AND start >= ? AND start < ? ORDER BY start",
            (bytes(device_id), self.interval_s, _lo(start), _hi(end)))]

    def household_intervals(self, household: str, start: int | None = None,
                            end: int | None = None) -> list[IntervalEnergy]:
        """Sums over the household's paired devices (a household may have one)."""
        _need_registry(self.conn, "household")
        return [_energy(r, self.interval_s) for r in self.conn.execute(
            "SELECT e.start, sum(e.import_wh), sum(e.export_wh), sum(e.pv_wh), sum(e.readings), max(e.estimated) "
            "FROM interval_energy e JOIN devices d ON d.device_id = e.device_id "
            "WHERE d.household = ? AND e.interval_s = ? AND e.start >= ? AND e.start < ? "
            "GROUP BY e.start ORDER BY e.start", (household, self.interval_s, _lo(start), _hi(end)))]

    def households(self, grid: str) -> list[str]:
        _need_registry(self.conn, "household")
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT household FROM devices WHERE grid = ? AND household IS NOT NULL ORDER BY household",
            (grid,))]

    def balance(self, grid: str, start: int | None = None, end: int | None = None) -> list[GridBalance]:
        """The complex per interval: sums over the grid's devices and counts."""
        _need_registry(self.conn, "grid")
        return [GridBalance(r[0], self.interval_s, r[1], r[2], r[3], r[4], r[5], r[6]) for r in self.conn.execute(
            "SELECT e.start, sum(e.import_wh), sum(e.export_wh), sum(e.pv_wh), count(*), "
            "sum(e.readings > 0), sum(e.estimated) "
            "FROM interval_energy e JOIN devices d ON d.device_id = e.device_id "
            "WHERE d.grid = ? AND e.interval_s = ? AND e.start >= ? AND e.start < ? "
            "GROUP BY e.start ORDER BY e.start", (grid, self.interval_s, _lo(start), _hi(end)))]

    def known_until(self, device_id: bytes) -> int | None:
        """Time of the device's last grid anchor: intervals ending at or before it are complete."""
        row = self.conn.execute("SELECT grid_until FROM interval_state WHERE device_id = ? AND interval_s = ?",
                                (bytes(device_id), self.interval_s)).fetchone()
        return None if row is None else row[0]

    def counter_resets(self, device_id: bytes) -> list[tuple[int, str, int, int, bool]]:
        """(seq, counter, before, after, flagged) of every baseline restart, seq order."""
        return [(r[0], r[1], r[2], r[3], bool(r[4])) for r in self.conn.execute(
            "SELECT seq, counter, before, after, flagged FROM counter_resets WHERE device_id = ? ORDER BY seq, counter",
            (bytes(device_id),))]


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT unless the connection is already in a transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.own = False

    def __enter__(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.own = True

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self.own:
            self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _energy(r: tuple[Any, ...], interval_s: int) -> IntervalEnergy:
    return IntervalEnergy(r[0], interval_s, r[1], r[2], r[3], r[4], bool(r[5]))


def _lo(v: int | None) -> int:
    return -(2**62) if v is None else v


def _hi(v: int | None) -> int:
    return 2**62 if v is None else v


def registry_columns(conn: sqlite3.Connection) -> set[str]:
    """Columns of the device registry's ``devices`` table (empty when there is none)."""
    return {r[1] for r in conn.execute("PRAGMA table_info(devices)")}


def _need_registry(conn: sqlite3.Connection, column: str) -> None:
    if column not in registry_columns(conn):
        raise RegistryMissing(f"no device registry with a {column!r} column (gateway/devices.py) in this database")


def grid_device_ids(conn: sqlite3.Connection, grid: str) -> list[bytes]:
    """Every device ever registered to ``grid`` (revoked ones too: their stored readings stand)."""
    _need_registry(conn, "grid")
    return sorted(bytes(r[0]) for r in conn.execute("SELECT device_id FROM devices WHERE grid = ?", (grid,)))


def iter_readings(conn: sqlite3.Connection, device_id: bytes) -> Iterator[tuple[int, ...]]:
    yield from conn.execute(f"SELECT {_READING_COLS} FROM readings WHERE device_id = ? ORDER BY seq", (device_id,))
