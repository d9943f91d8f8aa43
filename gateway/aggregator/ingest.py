"""The aggregator's ingest: verify every signed reading, store it once, then acknowledge it.

Pipeline (docs/gateway.md, "Ingest"):

1. paho's network thread puts each ``tele``/``state`` message on an in-memory
   inbox (nothing else happens on that thread);
2. the pipeline thread parses the topic, looks the device's pinned key up in a
   ``KeySource`` and sends chunks of messages to the ``Verifier`` (worker
   processes: strict decode, kid == topic id, ES256);
3. the same thread takes verified chunks back in order and ``Ingestor.complete``
   applies the stateful checks (duplicates, clocks, counters), writes readings,
   quarantined readings, counters and per-device acks in ONE transaction
   (synchronous=FULL: one fsync per batch), and only then
4. publishes each touched device's ack (retained, QoS 1): the highest seq with
   every seq from 1 up to it stored, quarantined or closed by an operator.

At-least-once in, exactly-once stored: a reading that arrives again is
acknowledged, counted as ``duplicate`` and not stored twice. Anything lost in
memory by a crash was never acknowledged, so the device sends it again.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho

from gateway.aggregator.checks import ClockPolicy, check_clock, check_counters
from gateway.aggregator.keys import REVOKED, KeySource, load_keys_file
from gateway.aggregator.store import DeviceState, QuarantineRow, ReadingRow, ReadingStore
from gateway.aggregator.verify_pool import Verifier, WorkItem
from gateway.telemetry.format import FLAG_CLOCK_UNSYNCED

log = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")
_CHUNK_BYTES = 32 * 1024      # payload bytes per verifier task (~240 readings)
_LOG_EVERY_S = 10.0           # at most one warning per rejection reason per this many seconds


class IngestError(Exception):
    """The ingest service cannot run; ``reason`` names why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class IngestConfig:
    db_path: str
    grid: str
    host: str = "127.0.0.1"
    port: int = 1883
    workers: int | None = None            # None: one per core; 0: verify in the pipeline thread
    keys_file: str | None = None          # JSON keys instead of the device registry
    client_id: str | None = None          # default metanoia-gateway-GRID (a persistent session)
    clock_policy: ClockPolicy = field(default_factory=ClockPolicy)
    max_outstanding: int = 8              # verifier tasks in flight before the pipeline waits
    keepalive: int = 30
    username: str | None = None           # broker credential (``gateway broker-config``'s gateway user)
    password: str | None = None
    ca_file: str | None = None            # TLS to the broker, verified against the complex's CA


def load_credentials(path: str) -> dict[str, Any]:
    """``credentials/gateway.json`` from ``metanoia gateway broker-config``: user, password, host, port, ca_file."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("user"), str) or not isinstance(data.get("password"), str):
            raise ValueError("needs string 'user' and 'password'")
        return data
    except (OSError, ValueError) as e:
        raise IngestError("bad_credentials", f"{path}: {e}") from None


@dataclass
class _Job:
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
        self._states: list[tuple[bytes, str, int]] = []
        self._last_log: dict[str, float] = {}
        self._closure_id = store.last_closure_id()
        self.stored = 0   # readings stored by this process (for logs and the bench)

    # -- step 2: dispatch ------------------------------------------------------------------

    def submit(self, messages: list[tuple[str, bytes, int]]) -> list[_Job]:
        """Route (topic, payload, received ms) messages: rejections are counted here, the rest
        go to the verifier in chunks. Returns the jobs in order."""
        jobs: list[_Job] = []
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
                jobs.append(_Job(meta, self.verifier.submit(items)))
                items, meta, size = [], [], 0
        if items:
            jobs.append(_Job(meta, self.verifier.submit(items)))
        return jobs

    def _on_state(self, device_id: bytes, payload: bytes, received: int) -> None:
        state = bytes(payload).decode("ascii", "replace")
        if state in ("online", "offline") and self.keys.key_for(device_id) is not None:
            self._states.append((device_id, state, received))

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

    def complete(self, jobs: list[_Job]) -> dict[bytes, int]:
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


def _drain(inbox: queue.SimpleQueue[tuple[str, bytes, int]], first_timeout: float,
           limit: int = 20000) -> list[tuple[str, bytes, int]]:
    out: list[tuple[str, bytes, int]] = []
    try:
        out.append(inbox.get(timeout=first_timeout) if first_timeout > 0 else inbox.get_nowait())
        while len(out) < limit:
            out.append(inbox.get_nowait())
    except queue.Empty:
        pass
    return out


class IngestService:
    """The MQTT side and the pipeline thread around an ``Ingestor``."""

    def __init__(self, cfg: IngestConfig, keys: KeySource | Callable[[], KeySource],
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._keys = keys
        self.clock = clock
        self.inbox: queue.SimpleQueue[tuple[str, bytes, int]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.acks_published = 0
        self.ingestor: Ingestor | None = None
        self.verifier = Verifier(cfg.workers)  # before any thread starts: workers are spawned
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=cfg.client_id or f"metanoia-gateway-{cfg.grid}",
                                  clean_session=False, protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, cfg.password)
        if cfg.ca_file is not None:
            self.client.tls_set(ca_certs=cfg.ca_file)
        self.client.max_inflight_messages_set(1000)
        self.client.on_socket_open = self._on_socket_open
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.connected = threading.Event()

    # paho callbacks (network thread)
    @staticmethod
    def _on_socket_open(_c: paho.Client, _u: object, sock: Any) -> None:
        try:  # Nagle + delayed ACKs cap a QoS 1 stream at ~50 msg/s (shared NOTES)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client: paho.Client, _u: object, _flags: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        base = f"metanoia/{self.cfg.grid}/+/"
        client.subscribe([(base + "tele", 1), (base + "state", 1)])
        log.info("connected to %s:%d, subscribed to %stele and %sstate", self.cfg.host, self.cfg.port, base, base)
        self.connected.set()

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: Any, reason: Any, _p: Any = None) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        self.inbox.put((msg.topic, msg.payload, int(self.clock() * 1000)))

    # lifecycle
    def start(self, timeout: float = 30.0) -> IngestService:
        self._thread = threading.Thread(target=self._run, name="ingest-pipeline", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self.error:
            raise IngestError("start_failed", repr(self.error))
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        """Stop taking messages, finish what is in flight (store, ack), disconnect."""
        self._stop.set()
        if self._thread:
            self._thread.join(60)
        self.client.disconnect()
        self.client.loop_stop()
        self.verifier.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the service stops (by ``stop`` or a fatal error); True if it stopped."""
        return self._stop.wait(timeout)

    # the pipeline thread
    def _run(self) -> None:
        store: ReadingStore | None = None
        try:
            store = ReadingStore.open(self.cfg.db_path)
            keys: KeySource = self._keys if hasattr(self._keys, "key_for") else self._keys()  # type: ignore[operator]
            self.ingestor = Ingestor(store, keys, self.verifier, self.cfg.grid, self.cfg.clock_policy, self.clock)
            self._ready.set()
            self._loop(self.ingestor)
        except BaseException as e:
            self.error = e
            log.critical("ingest pipeline failed; nothing after the last commit was acknowledged", exc_info=True)
            self._stop.set()
            self._ready.set()
        finally:
            if store is not None:
                store.close()

    def _loop(self, ing: Ingestor) -> None:
        pending: deque[_Job] = deque()
        next_poll = time.monotonic()
        last_report, last_stored = time.monotonic(), 0
        while True:
            stopping = self._stop.is_set()
            msgs = _drain(self.inbox, 0 if (pending or stopping) else 0.05)
            if msgs:
                pending.extend(ing.submit(msgs))
            if pending and (not msgs or len(pending) >= self.cfg.max_outstanding):
                try:
                    pending[0].future.result(timeout=0.005)
                except TimeoutError:
                    pass
            done: list[_Job] = []
            while pending and pending[0].future.done():
                done.append(pending.popleft())
            now = time.monotonic()
            if done or now >= next_poll:
                acks = ing.complete(done) if done else ing.poll_closures()
                self._publish_acks(acks)
                if now >= next_poll:
                    next_poll = now + 1.0
            if now - last_report >= 60:
                log.info("stored %d readings in the last %.0f s", ing.stored - last_stored, now - last_report)
                last_report, last_stored = now, ing.stored
            if stopping and not pending and not msgs:
                if ing.has_pending:
                    self._publish_acks(ing.complete([]))
                return

    def _publish_acks(self, acks: dict[bytes, int]) -> None:
        for device_id, seq in acks.items():
            self.client.publish(f"metanoia/{self.cfg.grid}/{device_id.hex()}/ack", cbor2.dumps(seq), qos=1, retain=True)
        self.acks_published += len(acks)


def keys_for(cfg: IngestConfig) -> KeySource | Callable[[], KeySource]:
    """The key source ``gateway run`` uses: ``--keys FILE``, else the device registry."""
    if cfg.keys_file:
        return load_keys_file(cfg.keys_file)

    def registry() -> KeySource:
        from gateway.aggregator.keys import RegistryKeySource
        from gateway.db import connect

        try:
            return RegistryKeySource(connect(cfg.db_path), cfg.grid)
        except ImportError as e:
            raise IngestError("no_registry", f"the device registry is not available ({e}); pass --keys FILE") from None
    return registry


def run_service(cfg: IngestConfig) -> int:
    """``metanoia gateway run``: serve until SIGTERM/SIGINT; 0 on a clean stop, 1 on a fatal error."""
    try:
        service = IngestService(cfg, keys_for(cfg))
    except IngestError as e:
        log.error("%s", e)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing in-flight readings, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service.start()
    except IngestError as e:
        log.error("%s", e)
        service.stop()
        return 1
    log.info("gateway ingest running: grid %s, db %s, broker %s:%d, %d verify workers",
             cfg.grid, cfg.db_path, cfg.host, cfg.port, service.verifier.workers)
    while not stop.is_set() and not service.wait(0.5):
        pass
    service.stop()
    return 1 if service.error else 0
