"""Nothing lost, nothing doubled: the real firmware (Device on a NOR flash model) streams to
the gateway (``python -m gateway.cli gateway run``, a separate process) through Mosquitto
while the gateway is killed with SIGKILL at random moments, Mosquitto restarts and a device
reboots mid-backlog. Afterwards every reading each device produced is stored exactly once,
byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device import config
from device.loop import Device
from gateway.aggregator.intervals import IntervalEngine
from hil.broker import Mosquitto
from hil.nor_flash import NorFlash
from secure_sign.software import SoftwareSigner
from storage.ring_buffer import RingBuffer
from umqtt.simple import MQTTClient

GRID = "nl1"
N_DEVICES = 3
ROOT = Path(__file__).resolve().parents[2]


class Meter:
    def __init__(self) -> None:
        self.imp, self.exp = 50_000, 1_000

    def read(self) -> dict:
        self.imp += 3
        self.exp += 1
        return {"import_wh": self.imp, "export_wh": self.exp, "power_w": 360, "backwards": False}


class DeviceMQTT(MQTTClient):
    """The host shim runs paho's loop, which reconnects on its own after a broker restart;
    micropython-lib's umqtt.simple never does (the device notices and reconnects, re-subscribing).
    A silent paho reconnect would leave the device "connected" with no ``ack`` subscription, so
    here it is refused: the device sees the connection drop, as on an ESP32."""

    def _on_connect(self, c, u, flags, reason_code, props=None):  # type: ignore[no-untyped-def]
        if c is self._client:  # paho's automatic reconnect of an established client
            return
        super()._on_connect(c, u, flags, reason_code, props)


def identity(i: int) -> tuple[bytes, bytes]:
    return hashlib.sha256(b"nothing-lost %d" % i).digest(), bytes([0xE0 + i]) + b"\x11" * 8


class Fleet:
    """Devices running the firmware loop; every reading they commit to flash is recorded."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.flash = [NorFlash(32) for _ in range(N_DEVICES)]
        self.meters = [Meter() for _ in range(N_DEVICES)]
        self.produced: dict[bytes, dict[int, bytes]] = {identity(i)[1]: {} for i in range(N_DEVICES)}
        self.devices = [self.boot(i) for i in range(N_DEVICES)]

    def boot(self, i: int) -> Device:
        key, did = identity(i)
        cfg = config.merge(config.DEFAULTS, {"grid": GRID, "batch_max": 8, "window": 32, "ack_timeout_s": 1,
                                             "reconnect_max_s": 1})
        mqtt = DeviceMQTT(did.hex(), self.broker.host, port=self.broker.port, keepalive=10)
        mqtt.timeout = 3.0
        dev = Device(cfg, SoftwareSigner(key, did), RingBuffer(self.flash[i]), self.meters[i], mqtt=mqtt,
                     clock=lambda: int(time.time()))
        dev._next_connect = dev.ticks_ms()
        append, produced = dev.ring.append, self.produced[did]

        def recording_append(seq: int, payload: bytes) -> None:
            append(seq, payload)
            produced[seq] = bytes(payload)
        dev.ring.append = recording_append  # type: ignore[method-assign]
        return dev

    def reboot(self, i: int) -> None:
        old = self.devices[i]
        try:
            old.mqtt._client.loop_stop()  # power cut: no DISCONNECT, the socket just goes away
            old.mqtt._client.socket().close()
        except Exception:
            pass
        self.devices[i] = self.boot(i)

    def pump(self, seconds: float, sample: bool = True, every: float = 0.02) -> None:
        end = time.monotonic() + seconds
        next_sample = 0.0
        while time.monotonic() < end:
            if sample and time.monotonic() >= next_sample:
                for d in self.devices:
                    d.sample()
                next_sample = time.monotonic() + every
            for d in self.devices:
                d.service()
            time.sleep(0.003)

    def drained(self) -> bool:
        return all(d.acked == d.ring.next_seq - 1 for d in self.devices)


class Gateway:
    def __init__(self, tmp: Path, broker: Mosquitto) -> None:
        self.db = tmp / "gateway.db"
        self.keys = tmp / "keys.json"
        self.log = tmp / "gateway.log"
        pubs = {}
        for i in range(N_DEVICES):
            key, did = identity(i)
            pubs[did.hex()] = bytes(SoftwareSigner(key, did).public_key).hex()
        self.keys.write_text(json.dumps(pubs))
        self.broker = broker
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "-v", "gateway", "run", "--db", str(self.db), "--grid", GRID,
             "--broker", f"{self.broker.host}:{self.broker.port}", "--keys", str(self.keys), "--workers", "2"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))

    def kill9(self) -> list[int]:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        workers = children(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return workers

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def broker(tmp_path):
    with Mosquitto() as b:
        yield b


def test_kill9_broker_restart_and_reboot_lose_nothing_and_double_nothing(tmp_path, broker):
    rng = random.Random(int(os.environ.get("INGEST_KILL_SEED", "20260101")))
    fleet = Fleet(broker)
    gw = Gateway(tmp_path, broker)
    gw.start()
    try:
        fleet.pump(1.5)
        killed_workers: list[int] = []
        for _ in range(3):  # SIGKILL at a random moment while the devices stream, then restart
            fleet.pump(rng.uniform(0.2, 1.0))
            killed_workers += gw.kill9()
            fleet.pump(rng.uniform(0.1, 0.5))
            gw.start()
        assert len(killed_workers) >= 3  # the verify workers existed...
        deadline = time.monotonic() + 5
        while any(alive(p) for p in killed_workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in killed_workers)  # ...and died with their gateway

        fleet.pump(1.0)
        broker.restart()  # Mosquitto restarts mid-stream (persistence on)
        fleet.pump(1.5)

        gw.kill9()  # a backlog builds up on the devices' flash...
        fleet.pump(0.6)
        fleet.reboot(0)  # ...and device 0 reboots in the middle of it
        gw.start()
        fleet.pump(1.0)
        assert fleet.devices[0].ring.next_seq > 1

        deadline = time.monotonic() + 30
        while not fleet.drained() and time.monotonic() < deadline:
            fleet.pump(0.2, sample=False)
        assert fleet.drained(), "\n".join([f"acked {d.acked} next {d.ring.next_seq} connected {d.connected} "
                                            f"{d.counters}" for d in fleet.devices] + [gw.log.read_text()[-3000:]])
        assert gw.stop() == 0, gw.log.read_text()[-3000:]
    finally:
        if gw.proc and gw.proc.poll() is None:
            gw.proc.kill()
        for d in fleet.devices:
            try:
                d.mqtt.disconnect()
            except Exception:
                pass

    conn = sqlite3.connect(gw.db)
    total = 0
    for did, produced in fleet.produced.items():
        rows = conn.execute("SELECT seq, raw, import_wh, export_wh FROM readings WHERE device_id = ? "
                            "ORDER BY seq", (did,)).fetchall()
        seqs = [r[0] for r in rows]
        assert seqs == list(range(1, len(produced) + 1)) == sorted(produced)  # every one, once
        assert all(bytes(r[1]) == produced[r[0]] for r in rows)                # byte for byte
        # The interval energy the gateway derived across its kills equals the counters' difference.
        ivs = IntervalEngine(conn).device_intervals(did)
        assert ivs, "the gateway derived no intervals"
        assert sum(i.import_wh for i in ivs) == rows[-1][2] - rows[0][2]
        assert sum(i.export_wh for i in ivs) == rows[-1][3] - rows[0][3]
        acked = conn.execute("SELECT acked FROM ingest_devices WHERE device_id = ?", (did,)).fetchone()[0]
        assert acked == len(produced)
        total += len(rows)
    # ...and matches a full recompute from the stored readings, row for row.
    derived = conn.execute("SELECT * FROM interval_energy ORDER BY device_id, start").fetchall()
    IntervalEngine(conn).recompute()
    assert conn.execute("SELECT * FROM interval_energy ORDER BY device_id, start").fetchall() == derived
    counters = dict(conn.execute("SELECT name, SUM(count) FROM ingest_counters GROUP BY name"))
    assert set(counters) <= {"duplicate"}, counters       # resends were duplicates, nothing rejected
    assert conn.execute("SELECT COUNT(*) FROM ingest_quarantine").fetchone()[0] == 0
    assert total > 300
