"""An in-memory telemetry collector: verify, dedupe by seq, acknowledge.

It speaks the device protocol exactly (seqs start at 1; ack 0 = nothing) (``tele`` in, ``ack`` = highest
contiguous seq as one CBOR uint, retained, QoS 1) but keeps readings only in
memory, so it acknowledges before anything is durable. It serves the firmware
tests and the demo; the SQLite aggregator, which stores first and acks after
an fsync, is the production path.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import cbor2
import paho.mqtt.client as paho

from gateway.telemetry.decode import RejectionCounter, TelemetryError, decode_message, load_public_key, verify
from gateway.telemetry.format import Reading

log = logging.getLogger(__name__)


@dataclass
class DeviceLog:
    readings: dict[int, Reading] = field(default_factory=dict)
    contiguous: int = 0      # highest seq with every seq from 1 to it received (0 = none)
    duplicates: int = 0
    messages: int = 0


class Collector:
    """Subscribes to ``metanoia/{grid}/+/tele`` for devices whose keys it was given."""

    def __init__(self, host: str, port: int, grid: str, keys: dict[bytes, bytes | str] | None = None,
                 first_seq: int = 1) -> None:
        self.host, self.port, self.grid = host, port, grid
        self._keys = {d: load_public_key(k) for d, k in (keys or {}).items()}
        self.first_seq = first_seq
        self.devices: dict[bytes, DeviceLog] = defaultdict(DeviceLog)
        self.rejected = RejectionCounter()
        self.unknown_device = 0
        self.topic_mismatch = 0
        self.lock = threading.Lock()
        self.ack_enabled = True
        # A persistent session: the broker queues QoS 1 telemetry while we reconnect.
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"collector-{grid}",
                                   clean_session=False)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._connected = threading.Event()

    def add_device(self, device_id: bytes, public_key: bytes | str) -> None:
        with self.lock:
            self._keys[device_id] = load_public_key(public_key)

    def _on_connect(self, client: paho.Client, *_a: object) -> None:
        client.subscribe(f"metanoia/{self.grid}/+/tele", qos=1)
        self._connected.set()

    def start(self) -> "Collector":
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("collector could not connect to the broker")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        try:
            topic_id = bytes.fromhex(parts[2])
        except ValueError:
            self.topic_mismatch += 1
            return
        key = self._keys.get(topic_id)
        if key is None:
            self.unknown_device += 1
            return
        try:
            sign1s = decode_message(msg.payload)
        except TelemetryError as e:
            self.rejected.record(e)
            return
        with self.lock:
            dev = self.devices[topic_id]
            dev.messages += 1
            for s in sign1s:
                if s.kid != topic_id:
                    self.topic_mismatch += 1
                    continue
                try:
                    r = verify(s, key)
                except TelemetryError as e:
                    self.rejected.record(e)
                    continue
                if r.seq in dev.readings:
                    dev.duplicates += 1
                    continue
                dev.readings[r.seq] = r
            nxt = max(dev.contiguous + 1, self.first_seq)
            while nxt in dev.readings:
                nxt += 1
            dev.contiguous = nxt - 1
            ack = dev.contiguous
        if self.ack_enabled and ack >= self.first_seq:
            client.publish(f"metanoia/{self.grid}/{parts[2]}/ack", cbor2.dumps(ack), qos=1, retain=True)

    def seqs(self, device_id: bytes) -> list[int]:
        with self.lock:
            return sorted(self.devices[device_id].readings)

    def total(self) -> int:
        with self.lock:
            return sum(len(d.readings) for d in self.devices.values())
