"""Per-interval evidence roots over a grid's stored readings, and inclusion proofs (docs/evidence.md).

The leaves of (grid, interval) are the grid's stored readings with a usable time
(``time != 0`` and flag 0x04 clear) in ``[start, start + interval_s)``, ordered by
device id (bytes) then seq; leaf = SHA-256(0x00 || raw COSE_Sign1). Roots are kept
per (grid, interval_s, start) in ``evidence_roots`` with a version and the leaf
count: when late readings change a root, a new version is added and the old one
stays, so a settlement that cited (root, version, leaf count) can still be checked.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.aggregator.intervals import INTERVAL_S, grid_device_ids, interval_start, is_timed, registry_columns
from gateway.db import ensure_schema
from gateway.telemetry import TelemetryError, decode_message

from . import merkle

log = logging.getLogger(__name__)

PROOF_FORMAT = "metanoia-evidence-proof/1"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS evidence_roots (
        grid        TEXT    NOT NULL,
        interval_s  INTEGER NOT NULL,
        start       INTEGER NOT NULL,    -- unix s, multiple of interval_s
        version     INTEGER NOT NULL,    -- 1, 2, ... a new one when late readings change the root
        leaf_count  INTEGER NOT NULL,
        root        BLOB    NOT NULL,    -- 32 bytes
        computed_at INTEGER NOT NULL,    -- gateway clock, unix ms
        PRIMARY KEY (grid, interval_s, start, version)
    ) WITHOUT ROWID""",
)


class EvidenceError(Exception):
    """Evidence cannot be produced as asked; ``reason`` is a short code."""

    def __init__(self, message: str, reason: str = "evidence") -> None:
        super().__init__(message)
        self.reason = reason


class ProofFormatError(EvidenceError, ValueError):
    """A proof document that is not a well-formed proof."""


@dataclass(frozen=True, slots=True)
class Root:
    grid: str
    start: int
    interval_s: int
    version: int
    leaf_count: int
    root: bytes

    def to_json(self) -> dict[str, Any]:
        return {"grid": self.grid, "interval_start": self.start, "interval_s": self.interval_s,
                "interval_iso": iso(self.start), "version": self.version, "leaf_count": self.leaf_count,
                "root": self.root.hex()}


@dataclass(frozen=True, slots=True)
class Proof:
    """Everything a third party needs to check one reading against one root."""

    grid: str
    interval_start: int
    interval_s: int
    device_id: bytes
    seq: int
    leaf_index: int
    leaf_count: int
    path: tuple[bytes, ...]
    root: bytes
    root_version: int
    reading: bytes            # the raw COSE_Sign1

    def to_json(self) -> dict[str, Any]:
        return {"format": PROOF_FORMAT, "grid": self.grid, "interval_start": self.interval_start,
                "interval_s": self.interval_s, "interval_iso": iso(self.interval_start),
                "device_id": self.device_id.hex(), "seq": self.seq, "leaf_index": self.leaf_index,
                "leaf_count": self.leaf_count, "path": [p.hex() for p in self.path], "root": self.root.hex(),
                "root_version": self.root_version, "reading_hex": self.reading.hex()}

    @classmethod
    def from_json(cls, doc: Any) -> Proof:
        if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
            raise ProofFormatError(f"not a {PROOF_FORMAT} document", "bad_proof")
        try:
            path = tuple(_hex(p, 32) for p in doc["path"])
            proof = cls(grid=_str(doc["grid"]), interval_start=_int(doc["interval_start"]),
                        interval_s=_int(doc["interval_s"]), device_id=_hex(doc["device_id"], 9),
                        seq=_int(doc["seq"]), leaf_index=_int(doc["leaf_index"]),
                        leaf_count=_int(doc["leaf_count"]), path=path, root=_hex(doc["root"], 32),
                        root_version=_int(doc["root_version"]), reading=_hex(doc["reading_hex"], None))
        except (KeyError, TypeError, ValueError) as e:
            raise ProofFormatError(f"malformed proof: {e}", "bad_proof") from None
        return proof


def _hex(v: Any, size: int | None) -> bytes:
    if not isinstance(v, str):
        raise TypeError("expected a hex string")
    b = bytes.fromhex(v)
    if size is not None and len(b) != size:
        raise ValueError(f"expected {size} bytes, got {len(b)}")
    return b


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError("expected a non-negative integer")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError("expected a string")
    return v


def iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def verify(root: bytes, raw_cose: bytes, proof: Proof) -> bool:
    """True when ``raw_cose`` is leaf ``proof.leaf_index`` of the ``proof.leaf_count``-leaf
    tree whose root is ``root``, and the reading is the one the proof names (its device,
    seq, and a usable time inside the proof's interval). Needs no gateway state."""
    if not merkle.verify_inclusion(merkle.leaf_hash(raw_cose), proof.leaf_index, proof.leaf_count,
                                   proof.path, bytes(root)):
        return False
    try:
        (sign1,) = decode_message(raw_cose)
    except (TelemetryError, ValueError):
        return False
    r = sign1.reading
    return (r.device_id == proof.device_id and r.seq == proof.seq and is_timed(r.time, r.flags)
            and proof.interval_start <= r.time < proof.interval_start + proof.interval_s)


class EvidenceStore:
    """Roots and proofs over a gateway database (``readings`` + the ``devices`` registry)."""

    def __init__(self, conn: sqlite3.Connection, *, interval_s: int = INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        if interval_s <= 0:
            raise EvidenceError("interval_s must be positive", "bad_interval")
        self.conn = conn
        self.interval_s = interval_s
        self.clock = clock
        ensure_schema(conn, "evidence", SCHEMA)

    def _start(self, t: int) -> int:
        return interval_start(t, self.interval_s)

    def leaves(self, grid: str, start: int) -> list[tuple[bytes, int, bytes]]:
        """(device_id, seq, raw) of the interval's readings, in leaf order."""
        start = self._start(start)
        devices = grid_device_ids(self.conn, grid)
        out: list[tuple[bytes, int, bytes]] = []
        for d in devices:  # devices sorted by id bytes, readings by seq: the leaf order
            out.extend((d, seq, bytes(raw)) for seq, tm, flags, raw in self.conn.execute(
                "SELECT seq, time, flags, raw FROM readings WHERE device_id = ? AND time >= ? AND time < ? "
                "ORDER BY seq", (d, start, start + self.interval_s)) if is_timed(tm, flags))
        return out

    def compute(self, grid: str, start: int) -> tuple[int, bytes]:
        """(leaf count, root) of the interval as the readings stand now; stores nothing."""
        leaves = [merkle.leaf_hash(raw) for _d, _s, raw in self.leaves(grid, start)]
        return len(leaves), merkle.root_of(leaves)

    def latest(self, grid: str, start: int) -> Root | None:
        row = self.conn.execute(
            "SELECT version, leaf_count, root FROM evidence_roots WHERE grid = ? AND interval_s = ? AND start = ? "
            "ORDER BY version DESC LIMIT 1", (grid, self.interval_s, self._start(start))).fetchone()
        return None if row is None else Root(grid, self._start(start), self.interval_s, row[0], row[1], bytes(row[2]))

    def versions(self, grid: str, start: int) -> list[Root]:
        return [Root(grid, self._start(start), self.interval_s, v, n, bytes(r)) for v, n, r in self.conn.execute(
            "SELECT version, leaf_count, root FROM evidence_roots WHERE grid = ? AND interval_s = ? AND start = ? "
            "ORDER BY version", (grid, self.interval_s, self._start(start)))]

    def root(self, grid: str, start: int) -> Root:
        """The interval's root as the readings stand now, stored as a new version if it changed."""
        start = self._start(start)
        count, root = self.compute(grid, start)
        last = self.latest(grid, start)
        if last is not None and last.root == root and last.leaf_count == count:
            return last
        version = 1 if last is None else last.version + 1
        self.conn.execute("INSERT INTO evidence_roots (grid, interval_s, start, version, leaf_count, root, "
                          "computed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (grid, self.interval_s, start, version, count, root, int(self.clock() * 1000)))
        if last is not None:
            log.warning("evidence: root of grid=%s start=%d changed (v%d %d leaves -> v%d %d leaves)",
                        grid, start, last.version, last.leaf_count, version, count)
        return Root(grid, start, self.interval_s, version, count, root)

    def update_stored(self, stored: Iterable[tuple[bytes, int]]) -> list[Root]:
        """After a batch: re-root the intervals that already have a root and just got a
        (late) reading. Open intervals without a root are left for ``root()``."""
        if "grid" not in registry_columns(self.conn):
            return []
        keys: set[tuple[str, int]] = set()
        for d, seq in stored:
            row = self.conn.execute("SELECT r.time, r.flags, d.grid FROM readings r JOIN devices d "
                                    "ON d.device_id = r.device_id WHERE r.device_id = ? AND r.seq = ?",
                                    (bytes(d), seq)).fetchone()
            if row is not None and is_timed(row[0], row[1]):
                keys.add((row[2], self._start(row[0])))
        return [self.root(g, s) for g, s in sorted(keys) if self.latest(g, s) is not None]

    def prove(self, grid: str, interval: int | None, device_id: bytes, seq: int) -> Proof:
        """The inclusion proof of reading (device_id, seq) in its interval's current root."""
        device_id = bytes(device_id)
        row = self.conn.execute("SELECT time, flags FROM readings WHERE device_id = ? AND seq = ?",
                                (device_id, seq)).fetchone()
        if row is None:
            raise EvidenceError(f"no stored reading {device_id.hex()} seq {seq}", "unknown_reading")
        if not is_timed(row[0], row[1]):
            raise EvidenceError(f"reading {device_id.hex()} seq {seq} has no time (clock not synced): "
                                "it is in no interval's tree", "untimed_reading")
        start = self._start(row[0])
        if interval is not None and self._start(interval) != start:
            raise EvidenceError(f"reading {device_id.hex()} seq {seq} is in interval {iso(start)}, "
                                f"not {iso(self._start(interval))}", "wrong_interval")
        if device_id not in grid_device_ids(self.conn, grid):
            raise EvidenceError(f"device {device_id.hex()} is not registered to grid {grid}", "wrong_grid")
        leaves = self.leaves(grid, start)
        index = next(i for i, (d, s, _r) in enumerate(leaves) if d == device_id and s == seq)
        root = self.root(grid, start)
        hashes = [merkle.leaf_hash(raw) for _d, _s, raw in leaves]
        return Proof(grid=grid, interval_start=start, interval_s=self.interval_s, device_id=device_id, seq=seq,
                     leaf_index=index, leaf_count=len(leaves), path=tuple(merkle.inclusion_path(index, hashes)),
                     root=root.root, root_version=root.version, reading=leaves[index][2])


def load_proof(text: str) -> Proof:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ProofFormatError(f"proof is not JSON: {e}", "bad_proof") from None
    return Proof.from_json(doc)
