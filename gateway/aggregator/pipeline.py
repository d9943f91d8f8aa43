"""The ingest's decisions, without MQTT: route, verify (via ``Verifier``), check, store, ack.

``Ingestor.submit(messages)`` routes (topic, payload, received ms) messages: a
bad topic, unknown or revoked device is counted here; the rest go to the
verifier in chunks. ``Ingestor.complete(jobs)`` takes the verified chunks in
order, applies the stateful checks (duplicates, clocks, counters: ``checks``),
writes everything in one transaction (``store``) and returns the acks to
publish. One thread only (it owns the SQLite connection). The MQTT side is
``gateway.aggregator.ingest.IngestService``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.aggregator.checks import ClockPolicy, check_clock, check_counters
from gateway.aggregator.device_state import StateError, parse_state
from gateway.aggregator.keys import REVOKED, KeySource
from gateway.aggregator.store import DeviceState, QuarantineRow, ReadingRow, ReadingStore, StateRow
from gateway.aggregator.verify_pool import Verifier, WorkItem
from gateway.telemetry.format import FLAG_CLOCK_UNSYNCED

log = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")
_CHUNK_BYTES = 32 * 1024      # payload bytes per verifier task (~240 readings)
_LOG_EVERY_S = 10.0           # at most one warning per rejection reason per this many seconds


@dataclass
class Job:
    """Messages sent to the verifier together: (device id, received at ms) per message."""

    meta: list[tuple[bytes, int]]
    future: Any


def parse_topic(topic: str, grid: str) -> tuple[bytes, str] | None:
    """(device id, kind) for ``metanoia/GRID/DEVICE/KIND``, or None when it is not one of ours."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "metanoia" or parts[1] != grid:
        return None
    dev = parts[2]
    if len(dev) != 18 or not _HEX.issuperset(dev):
        return None
    return bytes.fromhex(dev), parts[3]


class Ingestor:
    """Verify, check, store, compute acks: the ingest without MQTT (one thread)."""

    def __init__(self, store: ReadingStore, keys: KeySource, verifier: Verifier, grid: str,
                 policy: ClockPolicy | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = keys
        self.verifier = verifier
        self.grid = grid
        self.policy = policy or ClockPolicy()
        self.clock = clock
        self.devices: dict[bytes, DeviceState] = {}
        self._counts: Counter[tuple[str, bytes]] = Counter()
        self._states: list[StateRow] = []
        self._last_log: dict[str, float] = {}
        self._closure_id = store.last_closure_id()
        self.stored = 0   # readings stored by this process (for logs and the bench)

    # -- step 2: dispatch ------------------------------------------------------------------

    def submit(self, messages: list[tuple[str, bytes, int]]) -> list[Job]:
        """Route (topic, payload, received ms) messages: rejections are counted here, the rest
        go to the verifier in chunks. Returns the jobs in order."""
        jobs: list[Job] = []
        items: list[WorkItem] = []
        meta: list[tuple[bytes, int]] = []
        size = 0
        for topic, payload, received in messages:
            parsed = parse_topic(topic, self.grid)
            if parsed is None:
                self._reject("bad_topic", b"", f"topic {topic[:120]!r}")
                continue
            device_id, kind = parsed
            if kind == "state":
                self._on_state(device_id, payload, received)
                continue
            if kind != "tele":
                continue
            key = self.keys.key_for(device_id)
            if key is None:
                self._reject("unknown_device", b"", device_id.hex())
                continue
            if key is REVOKED:
                self._reject("revoked_device", device_id, device_id.hex())
                continue
            assert isinstance(key, bytes)
            items.append((device_id, key, payload))
            meta.append((device_id, received))
            size += len(payload)
            if size >= _CHUNK_BYTES:
                jobs.append(Job(meta, self.verifier.submit(items)))
                items, meta, size = [], [], 0
        if items:
            jobs.append(Job(meta, self.verifier.submit(items)))
        return jobs

    def _on_state(self, device_id: bytes, payload: bytes, received: int) -> None:
        """Record a known device's retained state (device_state.py); a bad payload is counted, never raised."""
        if self.keys.key_for(device_id) is None:
            return  # not ours: no per-device rows for ids nobody provisioned
        try:
            msg = parse_state(payload)
        except StateError as e:
            self._reject(e.reason, device_id, f"{device_id.hex()} state: {e.detail}")
            return
        if msg is not None:
            self._states.append((device_id, msg.state, msg.fw, msg.format, received))

    def _reject(self, reason: str, device_id: bytes, detail: str) -> None:
        self._counts[(reason, device_id)] += 1
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e9) >= _LOG_EVERY_S:
            self._last_log[reason] = now
            log.warning("rejected %s (%s); more %s within %.0f s are logged at debug level",
                        reason, detail, reason, _LOG_EVERY_S)
        else:
            log.debug("rejected %s (%s)", reason, detail)

    def _device(self, device_id: bytes) -> DeviceState:
        st = self.devices.get(device_id)
        if st is None:
            st = self.devices[device_id] = self.store.load_device(device_id)
        return st

    # -- step 3: checks, one transaction, acks ----------------------------------------------

    @property
    def has_pending(self) -> bool:
        return bool(self._counts or self._states)

    def complete(self, jobs: list[Job]) -> dict[bytes, int]:
        """Apply the checks to verified jobs (in order), commit, return {device: ack} to publish."""
        now = self.clock()
        now_ms = int(now * 1000)
        rows: list[ReadingRow] = []
        quarantine: list[QuarantineRow] = []
        batch_raw: dict[tuple[bytes, int], bytes] = {}
        batch_rows: dict[bytes, dict[int, tuple[tuple[int, int, int], int]]] = {}
        touched: dict[bytes, DeviceState] = {}
        counts = self._counts
        for job in jobs:
            for (device_id, received), (mreason, mdetail, outcomes) in zip(job.meta, job.future.result()):
                if mreason is not None:
                    self._reject(mreason, device_id, f"{device_id.hex()}: {mdetail}")
                    continue
                st = self._device(device_id)
                for reason, detail, seq, t, imp, exp, pv, power, flags, raw in outcomes:
                    if reason is not None:
                        self._reject(reason, device_id, f"{device_id.hex()} seq {seq}: {detail}")
                        continue
                    touched[device_id] = st
                    key = (device_id, seq)
                    if st.accounted(seq) or key in batch_raw:
                        existing = batch_raw.get(key) or self.store.raw_of(device_id, seq)
                        if existing is not None:
                            counts[("duplicate" if existing == raw else "seq_conflict", device_id)] += 1
                            continue
                        # below a gap closure yet never stored: a late arrival, store it
                    counters = (imp, exp, pv)
                    why = "bad_seq" if seq == 0 else check_clock(t, flags, now, self.policy)
                    note = None
                    if why is None:
                        why, note = self._check_counters(st, batch_rows.get(device_id), seq, counters, flags)
                    batch_raw[key] = raw
                    if why is not None:
                        quarantine.append((device_id, seq, why, t, flags, raw, received))
                        self._reject(why, device_id, f"{device_id.hex()} seq {seq} quarantined")
                    else:
                        rows.append((device_id, seq, t, imp, exp, pv, power, flags, raw, received))
                        batch_rows.setdefault(device_id, {})[seq] = (counters, flags)
                        if flags & FLAG_CLOCK_UNSYNCED:
                            counts[("stored_clock_unsynced", device_id)] += 1
                        if note:
                            counts[(note, device_id)] += 1
                        if seq > st.highest:
                            st.highest, st.last_counters, st.last_time = seq, counters, t
                        st.last_received_at = received
                    st.account(seq)
        self._apply_closures(touched)
        if rows or quarantine or counts or self._states or touched:
            self.store.write_batch(rows, quarantine, counts, touched.values(), self._states, now_ms)
        self.stored += len(rows)
        self._counts = Counter()
        self._states = []
        return {d: st.contiguous for d, st in touched.items() if st.contiguous > 0}

    def _check_counters(self, st: DeviceState, batch: dict[int, tuple[tuple[int, int, int], int]] | None,
                        seq: int, counters: tuple[int, int, int], flags: int) -> tuple[str | None, str | None]:
        if seq > st.highest:  # the usual case: in order after the highest stored reading
            return check_counters(st.last_counters, counters, flags)
        lo, hi = self.store.neighbours(st.device_id, seq)
        prev = lo[:2] if lo else None
        nxt = (hi[0], hi[1], hi[2]) if hi else None
        for s, (c, f) in (batch or {}).items():  # stored in this batch, not yet in the table
            if s < seq and (prev is None or s > prev[0]):
                prev = (s, c)
            if s > seq and (nxt is None or s < nxt[0]):
                nxt = (s, c, f)
        return check_counters(prev[1] if prev else None, counters, flags,
                              nxt[1] if nxt else None, nxt[2] if nxt else 0)

    def _apply_closures(self, touched: dict[bytes, DeviceState]) -> None:
        for cid, device_id, upto in self.store.closures_after(self._closure_id):
            self._closure_id = cid
            st = self._device(device_id)
            st.floor = max(st.floor, upto)
            st.advance()
            touched[device_id] = st
            log.warning("gap closed by operator: %s up to seq %d; ack now %d", device_id.hex(), upto, st.contiguous)

    def poll_closures(self) -> dict[bytes, int]:
        """Pick up gap closures recorded by ``metanoia gateway gap close``; commit; acks to publish."""
        if self.store.last_closure_id() == self._closure_id and not self.has_pending:
            return {}
        return self.complete([])
