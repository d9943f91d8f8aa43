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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho

from gateway.aggregator.checks import ClockPolicy
from gateway.aggregator.derive import DeriverThread
from gateway.aggregator.keys import KeySource, load_keys_file
from gateway.aggregator.pipeline import Ingestor, Job, parse_topic
from gateway.aggregator.store import ReadingStore
from gateway.aggregator.verify_pool import Verifier

__all__ = ["IngestConfig", "IngestError", "IngestService", "Ingestor", "keys_for", "load_credentials",
           "parse_topic", "run_service"]

log = logging.getLogger(__name__)


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
    derive_every_s: float | None = 2.0    # interval energy + evidence roots pass; None = off


def load_credentials(path: str) -> dict[str, Any]:
    """``credentials/gateway.json`` from ``metanoia gateway broker-config``: user, password, host, port, ca_file."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("user"), str) or not isinstance(data.get("password"), str):
            raise ValueError("needs string 'user' and 'password'")
        return data
    except (OSError, ValueError) as e:
        raise IngestError("bad_credentials", f"{path}: {e}") from None

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
        self.deriver: DeriverThread | None = None
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
        self.client.on_subscribe = self._on_subscribe
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
        log.info("connected to %s:%d, subscribing to %stele and %sstate", self.cfg.host, self.cfg.port, base, base)

    def _on_subscribe(self, _c: paho.Client, _u: object, _mid: int, reasons: Any, _p: Any = None) -> None:
        # "connected" means taking readings: only once the broker has granted the subscriptions
        # (a reading published before that reaches nobody; the device resends it, being unacked)
        if any(r.is_failure for r in reasons):
            log.warning("broker refused a subscription: %s", [str(r) for r in reasons])
            return
        self.connected.set()

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: Any, reason: Any, _p: Any = None) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        self.inbox.put((msg.topic, bytes(msg.payload), int(self.clock() * 1000)))

    # lifecycle
    def start(self, timeout: float = 30.0) -> IngestService:
        self._thread = threading.Thread(target=self._run, name="ingest-pipeline", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self.error:
            raise IngestError("start_failed", repr(self.error))
        if self.cfg.derive_every_s:
            self.deriver = DeriverThread(self.cfg.db_path, self.cfg.grid, self.cfg.derive_every_s).start()
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
        if self.deriver is not None:
            self.deriver.stop()

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
        pending: deque[Job] = deque()
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
            done: list[Job] = []
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
