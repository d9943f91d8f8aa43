"""Keeps the derived tables current: interval energy and evidence roots.

Runs beside the ingest on its own connection, off the ack path: acks wait
only for the readings' commit, never for derivations. Everything here is
recomputable from ``readings``, so a crash between a batch and its
derivation loses nothing: the next pass folds in whatever is new.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from gateway.aggregator.intervals import INTERVAL_S, IntervalEngine, registry_columns
from gateway.db import connect
from gateway.evidence.roots import EvidenceStore

log = logging.getLogger(__name__)


class Deriver:
    """One pass: fold new readings into intervals, root every closed interval.

    An interval is closed for evidence once every reporting device of the grid
    has a reading past its end by ``grace_s`` (device time, so it works on an
    accelerated clock too). A device whose newest reading is more than
    ``offline_after_s`` behind the grid's newest is not waited for; if its
    readings for a rooted interval arrive later, the root gets a new version.
    """

    def __init__(self, conn: sqlite3.Connection, grid: str, *, interval_s: int = INTERVAL_S,
                 grace_s: int = 60, offline_after_s: int = 3600) -> None:
        self.offline_after_s = offline_after_s
        self.conn = conn
        self.grid = grid
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.intervals = IntervalEngine(conn, interval_s=interval_s)
        self.evidence = EvidenceStore(conn, interval_s=interval_s)
        self._seen_received = 0  # readings.received_at already considered for late re-rooting

    def pass_once(self) -> tuple[int, int]:
        """(intervals written, roots written or re-versioned)."""
        devices = [bytes(r[0]) for r in self.conn.execute("SELECT DISTINCT device_id FROM readings")]
        written = self.intervals.update(devices)
        if "grid" not in registry_columns(self.conn):
            return written, 0
        rooted = 0
        per_device = [(t, rx) for t, rx in self.conn.execute(
            "SELECT MAX(r.time), MAX(r.received_at) FROM readings r JOIN devices d ON d.device_id = r.device_id "
            "WHERE d.grid = ? AND r.time > 0 GROUP BY r.device_id", (self.grid,))]
        if not per_device:
            return written, 0
        newest = max(t for t, _ in per_device)
        received = max(rx for _, rx in per_device)
        waited_for = [t for t, _ in per_device if t >= newest - self.offline_after_s]
        closed_before = min(waited_for) - self.grace_s
        late = {s for (s,) in self.conn.execute(
            "SELECT DISTINCT (r.time / ?) * ? FROM readings r JOIN devices d ON d.device_id = r.device_id "
            "WHERE d.grid = ? AND r.received_at > ? AND r.time > 0",
            (self.interval_s, self.interval_s, self.grid, self._seen_received))}
        unrooted = {s for (s,) in self.conn.execute(
            "SELECT DISTINCT e.start FROM interval_energy e JOIN devices d ON d.device_id = e.device_id "
            "WHERE d.grid = ? AND e.interval_s = ? AND NOT EXISTS (SELECT 1 FROM evidence_roots r WHERE "
            "r.grid = ? AND r.interval_s = e.interval_s AND r.start = e.start)",
            (self.grid, self.interval_s, self.grid))}
        for start in sorted(late | unrooted):
            if start + self.interval_s > closed_before:
                continue
            before = self.evidence.latest(self.grid, start)
            root = self.evidence.root(self.grid, start)
            rooted += before is None or before.version != root.version
        self._seen_received = int(received or 0)
        return written, rooted


class DeriverThread:
    """Runs ``Deriver.pass_once`` every ``every_s`` seconds until stopped."""

    def __init__(self, db_path: str, grid: str, every_s: float = 2.0, **kw: int) -> None:
        self.db_path, self.grid, self.every_s, self.kw = db_path, grid, every_s, kw
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.error: BaseException | None = None

    def start(self) -> DeriverThread:
        self._thread = threading.Thread(target=self._run, name="derive", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = connect(self.db_path)
        try:
            d = Deriver(conn, self.grid, **self.kw)
            while True:
                try:
                    d.pass_once()
                    self.passes += 1
                except sqlite3.OperationalError as e:  # busy beyond the timeout: try again next pass
                    log.warning("derive pass skipped: %s", e)
                if self._stop.wait(self.every_s):
                    d.pass_once()  # a last pass over what the ingest committed before stopping
                    return
        except BaseException as e:
            self.error = e
            log.exception("derive thread failed; intervals and roots will catch up on restart")
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(60)
