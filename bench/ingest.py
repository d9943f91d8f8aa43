"""``metanoia bench ingest``: signed readings verified and durably stored per second, through Mosquitto.

Set-up (not timed): a Mosquitto on a loopback port (``hil.broker.Mosquitto``),
a fresh gateway database, many simulated devices whose readings are signed
*before* the clock starts (``bench.signed_readings``: the firmware's exact
bytes, signed with ``cryptography``), and the gateway itself as a separate
process (``python -m gateway.cli gateway run``), as in production.

Timed: the devices publish their backlogs as CBOR arrays of ``--per-message``
readings (what the firmware does when it drains a backlog), each keeping at
most ``--window`` messages unacknowledged, like the firmware's window. The
gateway verifies, stores (one fsync per batch) and acknowledges. ``value`` is
readings stored per second from the first publish to the last ack; an ack is
only sent after the commit, so every acknowledged reading is on disk.
``p50_ms``/``p99_ms``: from publishing a message to receiving an ack covering
its last reading. Afterwards the database is checked: every reading stored
exactly once, byte for byte, and no duplicate counted.

``bound``: the raw P-256 verify rate of one core (``cryptography``, same
run) times the cores: what signature checking alone would allow.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho

NAME = "ingest"
GOAL = 10_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=200, help="simulated devices (default %(default)s)")
    p.add_argument("--readings", type=int, default=120_000, help="signed readings in all (default %(default)s)")
    p.add_argument("--per-message", type=int, default=32, help="readings per MQTT message, <= 64 (default %(default)s)")
    p.add_argument("--window", type=int, default=2, help="unacknowledged messages per device (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="gateway verify workers (default: one per core)")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def raw_verify_rate(seconds: float = 1.5) -> float:
    """P-256 ECDSA verifies per second on one core with ``cryptography`` (prepared signatures)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    algo = ec.ECDSA(hashes.SHA256())
    msgs = [os.urandom(70) for _ in range(64)]
    sigs = [key.sign(m, algo) for m in msgs]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for m, s in zip(msgs, sigs):
            pub.verify(s, m, algo)
        n += len(msgs)
    return n / (time.perf_counter() - t0)


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _nodelay(_c: Any, _u: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Fleet:
    """The devices' side: publish within each device's window, take acks, time them."""

    def __init__(self, host: str, port: int, grid: str, messages: dict[bytes, list[tuple[int, bytes]]],
                 window: int) -> None:
        self.grid = grid
        self.messages = messages          # device -> [(last seq in message, payload)]
        self.window = window
        self.next_msg = dict.fromkeys(messages, 0)
        self.acked = dict.fromkeys(messages, 0)
        self.sent_at: dict[bytes, list[float]] = {d: [0.0] * len(m) for d, m in messages.items()}
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.ready: list[bytes] = list(messages)
        self.wake = threading.Event()
        self.done = threading.Event()
        self.remaining = len(messages)
        self.t_last_ack = 0.0
        self.resend_s = 5.0               # like the firmware's ack_timeout_s: go again from the last ack
        self.resends = 0
        self.progress = dict.fromkeys(messages, time.monotonic())
        self._ack_index: dict[bytes, int] = {}
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-{os.getpid()}")
        self.client.max_inflight_messages_set(0)
        self.client.on_socket_open = _nodelay
        self.client.on_message = self._on_ack
        self.client.connect(host, port)
        self.client.subscribe(f"metanoia/{grid}/+/ack", 1)
        self.client.loop_start()
        self.topics = {d: f"metanoia/{grid}/{d.hex()}/tele" for d in messages}

    def _on_ack(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        device_id = bytes.fromhex(msg.topic.split("/")[2])
        seq = cbor2.loads(msg.payload)
        with self.lock:
            if device_id not in self.acked or seq <= self.acked[device_id]:
                return
            self.acked[device_id] = seq
            self.progress[device_id] = time.monotonic()
            msgs, sent = self.messages[device_id], self.sent_at[device_id]
            i = self._first_unacked(device_id)
            for j in range(self._ack_index.get(device_id, 0), i):
                if sent[j]:
                    self.latencies.append((now - sent[j]) * 1000)
            self._ack_index[device_id] = i
            if i == len(msgs):
                self.remaining -= 1
                self.t_last_ack = now
                if self.remaining == 0:
                    self.done.set()
            self.ready.append(device_id)
        self.wake.set()

    def _first_unacked(self, device_id: bytes) -> int:
        msgs, acked = self.messages[device_id], self.acked[device_id]
        i = self._ack_index.get(device_id, 0)
        while i < len(msgs) and msgs[i][0] <= acked:
            i += 1
        return i

    def run(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        self.progress = dict.fromkeys(self.messages, start)
        while not self.done.is_set():
            self.wake.wait(0.1)
            self.wake.clear()
            now = time.monotonic()
            with self.lock:
                ready, self.ready = self.ready, []
                for d, t in self.progress.items():
                    i = self._first_unacked(d)
                    if now - t > self.resend_s and self.next_msg[d] > i:
                        self.next_msg[d] = i
                        self.progress[d] = now
                        self.resends += 1
                        ready.append(d)
            for d in ready:
                while True:
                    with self.lock:
                        i = self.next_msg[d]
                        if i >= len(self.messages[d]) or i - self._first_unacked(d) >= self.window:
                            break
                        self.next_msg[d] = i + 1
                        self.sent_at[d][i] = time.perf_counter()
                    self.client.publish(self.topics[d], self.messages[d][i][1], qos=1)
            if time.monotonic() > deadline:
                return False
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.signed_readings import SigningDevice, wrap
    from hil.broker import Mosquitto

    if not 1 <= args.per_message <= 64:
        raise SystemExit("--per-message must be 1..64")
    n_cores = cores()
    print(f"raw P-256 verify rate on one core ({n_cores} cores)...", flush=True)
    verify_per_core = raw_verify_rate()
    print(f"  {verify_per_core:,.0f}/s", flush=True)

    per_device = max(2, args.readings // args.devices)
    total = per_device * args.devices
    print(f"signing {total:,} readings for {args.devices} devices (not timed)...", flush=True)
    devices = [SigningDevice.generate() for _ in range(args.devices)]
    now = int(time.time()) - per_device
    raw: dict[bytes, list[bytes]] = {}
    t0 = time.perf_counter()
    for d in devices:
        imp = 1_000_000
        msgs = []
        for seq in range(1, per_device + 1):
            imp += 3
            msgs.append(d.reading(seq, now + seq, imp, 1000, 500, 420, 0x08))
        raw[d.device_id] = msgs
    print(f"  signed in {time.perf_counter() - t0:.1f} s", flush=True)
    # seq 1 of each device goes alone, untimed (the gateway loads its state); the rest in arrays
    warm = {did: [(1, m[0])] for did, m in raw.items()}
    timed: dict[bytes, list[tuple[int, bytes]]] = {}
    for did, m in raw.items():
        timed[did] = [(min(i + args.per_message, per_device), wrap(m[i:i + args.per_message]))
                    for i in range(1, per_device, args.per_message)]

    grid = f"bench{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, Mosquitto(tmp) as broker:
        db = Path(tmp) / "gateway.db"
        keys = Path(tmp) / "keys.json"
        keys.write_text(json.dumps({d.device_id.hex(): d.public_key.hex() for d in devices}))
        cmd = [sys.executable, "-m", "gateway.cli", "gateway", "run", "--db", str(db), "--grid", grid,
               "--broker", f"{broker.host}:{broker.port}", "--keys", str(keys)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        gw = subprocess.Popen(cmd, stderr=open(Path(tmp) / "gateway.log", "w"))
        try:
            fleet = _Fleet(broker.host, broker.port, grid, warm, window=1)
            if not fleet.run(timeout=120):
                raise RuntimeError("gateway did not acknowledge the warm-up readings; "
                                   + (Path(tmp) / "gateway.log").read_text()[-2000:])
            fleet.close()
            print(f"gateway up; timed run: {total - args.devices:,} readings, {args.per_message} per message, "
                  f"window {args.window} messages per device", flush=True)
            fleet = _Fleet(broker.host, broker.port, grid, timed, window=args.window)
            t_start = time.perf_counter()
            ok = fleet.run(timeout=600)
            elapsed = fleet.t_last_ack - t_start
            fleet.close()
        finally:
            gw.terminate()
            gw.wait(60)
        timed_readings = total - args.devices
        value = timed_readings / elapsed if ok and elapsed > 0 else 0.0
        conn = sqlite3.connect(db)
        stored = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        dup_rows = conn.execute("SELECT COALESCE(SUM(count), 0) FROM ingest_counters WHERE name = 'duplicate'").fetchone()[0]
        rejected = conn.execute("SELECT COALESCE(SUM(count), 0) FROM ingest_counters WHERE name != 'duplicate'").fetchone()[0]
        intact = all(bytes(r) == raw[bytes(did)][s - 1]
                     for did, s, r in conn.execute("SELECT device_id, seq, raw FROM readings"))
        conn.close()
    bound = verify_per_core * n_cores
    valid = ok and stored == total and intact and rejected == 0
    print(f"stored {stored:,}/{total:,} readings; {value:,.0f} readings/s; p50 {_percentile(fleet.latencies, .5):.0f} ms, "
          f"p99 {_percentile(fleet.latencies, .99):.0f} ms", flush=True)
    return {"bench": NAME, "value": round(value), "unit": "readings/s", "goal": GOAL, "bound": round(bound),
            "ratio": round(value / bound, 3), "p50_ms": round(_percentile(fleet.latencies, .5), 1),
            "p99_ms": round(_percentile(fleet.latencies, .99), 1), "verify_per_core": round(verify_per_core),
            "cores": n_cores, "readings": timed_readings, "stored_total": stored, "duplicates": int(dup_rows),
            "rejected": int(rejected), "intact": intact, "devices": args.devices, "per_message": args.per_message,
            "window": args.window, "resends": fleet.resends, "elapsed_s": round(elapsed, 2), "valid": valid}
