"""The ingest service through a real Mosquitto: hostile publishers while good devices keep
flowing; acks retained and only after the commit; online/offline; the CLI's entry points."""

from __future__ import annotations

import random
import threading
import time

import cbor2
import paho.mqtt.client as paho
import pytest

from bench.signed_readings import SigningDevice, wrap
from gateway.aggregator.ingest import IngestConfig, IngestService
from gateway.aggregator.keys import REVOKED, DictKeySource
from gateway.aggregator.store import ReadingStore
from gateway.cli import main as cli_main
from gateway.db import connect
from hil.broker import Mosquitto

GRID = "svc"


@pytest.fixture(scope="module")
def broker():
    with Mosquitto() as b:
        yield b


class Watcher:
    """A paho client that publishes like devices and records acks."""

    def __init__(self, broker: Mosquitto, name: str) -> None:
        self.acks: dict[str, int] = {}
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name)
        self.c.on_message = self._on_message
        self.c.connect(broker.host, broker.port)
        self.c.subscribe(f"metanoia/{GRID}/+/ack", 1)
        self.c.loop_start()

    def _on_message(self, _c, _u, m) -> None:
        with self.lock:
            self.acks[m.topic.split("/")[2]] = cbor2.loads(m.payload)

    def ack(self, dev: SigningDevice) -> int:
        with self.lock:
            return self.acks.get(dev.device_id.hex(), 0)

    def publish(self, dev_hex: str, payload: bytes, kind: str = "tele", retain: bool = False) -> None:
        self.c.publish(f"metanoia/{GRID}/{dev_hex}/{kind}", payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait_until(cond, timeout: float = 60.0) -> bool:  # an upper bound for loaded CI machines, not a budget
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _why_no_acks(svc: IngestService, pub: Watcher, sent: dict[bytes, list[bytes]], broker: Mosquitto) -> str:
    """What the service, the publisher and the broker say when the good devices' acks never came."""
    ing = svc.ingestor
    with pub.lock:
        acks = dict(pub.acks)
    try:
        tail = (broker.dir / "mosquitto.log").read_text(errors="replace").splitlines()[-15:]
    except OSError as e:
        tail = [repr(e)]
    return (f"connected={svc.connected.is_set()} error={svc.error!r} stored={ing.stored if ing else None} "
            f"inbox={svc.inbox.qsize()} sent={ {d.hex()[:8]: len(m) for d, m in sent.items()} } acks={acks} "
            f"publisher_connected={pub.c.is_connected()} broker_alive={broker.proc is not None and broker.proc.poll() is None}"
            "\nbroker log:\n" + "\n".join(tail))


def test_hostile_input_is_rejected_and_counted_while_good_devices_keep_flowing(broker, tmp_path):
    now = int(time.time())
    goods = [SigningDevice.generate() for _ in range(2)]
    victim, revoked, stranger = SigningDevice.generate(), SigningDevice.generate(), SigningDevice.generate()
    keys = DictKeySource({d.device_id: d.public_key for d in goods + [victim]})
    keys.set(revoked.device_id, REVOKED)
    db = tmp_path / "gw.db"
    svc = IngestService(IngestConfig(str(db), GRID, broker.host, broker.port, workers=1,
                                     client_id="gw-hostile"), keys).start()
    good_pub, evil = Watcher(broker, "good-devices"), Watcher(broker, "attacker")
    stop = threading.Event()
    sent: dict[bytes, list[bytes]] = {d.device_id: [] for d in goods}

    def stream() -> None:  # good devices: one reading every few ms, each waits for nothing
        seq = 0
        while not stop.is_set():
            seq += 1
            for d in goods:
                m = d.reading(seq, now, 1000 + seq, 0, 0, 100, 0)
                sent[d.device_id].append(m)
                good_pub.publish(d.device_id.hex(), m)
            time.sleep(0.005)

    # acks count from seq 1 up, and this stream never resends: it starts once the service has its
    # subscriptions (a reading published before that reached nobody, and the acks stayed at 0)
    assert wait_until(svc.connected.is_set)
    t = threading.Thread(target=stream)
    t.start()
    try:
        assert wait_until(lambda: all(good_pub.ack(d) >= 5 for d in goods)), \
            _why_no_acks(svc, good_pub, sent, broker)
        v = victim.device_id.hex()
        rng = random.Random(7)
        genuine = [victim.reading(s, now, 500 + s, 0, 0, 1, 0) for s in range(1, 5)]
        forged = bytearray(genuine[0])
        forged[-5] ^= 0x40
        attacks: list[tuple[str, bytes, str]] = [
            (v, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))), "garbage")
            for _ in range(20)] + [
            (v, b"\x98\x40" + b"\x00" * 20000, "oversize"),
            (v, b"\xd1" + genuine[0][1:], "not_sign1_tag"),
            (v, b"\xd2\x84\x43\xa1\x01\x27" + genuine[0][6:], "alg_not_es256"),
            (v, bytes(forged), "bad_signature"),
            (v, goods[0].reading(99, now, 1, 1, 1, 1, 0), "topic_mismatch"),
            (stranger.device_id.hex(), stranger.reading(1, now), "unknown_device"),
            (revoked.device_id.hex(), revoked.reading(1, now), "revoked_device"),
            ("not-hex-at-all", genuine[0], "bad_topic"),
            (v, victim.reading(5, now + 86400, 600, 0, 0, 1, 0), "clock_future"),
        ]
        for dev_hex, payload, _why in attacks:
            evil.publish(dev_hex, payload)
        # the victim's genuine readings with a hole at 3, then replays of everything
        evil.publish(v, wrap([genuine[0], genuine[1], genuine[3]]))
        assert wait_until(lambda: evil.ack(victim) == 2)
        for m in genuine[:2] + genuine[3:]:
            evil.publish(v, m)
        evil.publish(v, genuine[2])  # the hole fills: the ack moves over 4 and the quarantined 5
        assert wait_until(lambda: evil.ack(victim) == 5)
        n_before = {d.device_id: good_pub.ack(d) for d in goods}
        assert wait_until(lambda: all(good_pub.ack(d) >= n_before[d.device_id] + 20 for d in goods))
        assert svc.error is None and svc._thread is not None and svc._thread.is_alive()
    finally:
        stop.set()
        t.join()
    try:
        assert wait_until(lambda: all(good_pub.ack(d) == len(sent[d.device_id]) for d in goods))
    finally:
        svc.stop()
        good_pub.close()
        evil.close()

    store = ReadingStore.open(db)
    counts = store.counters()
    for _dev, _payload, why in attacks:
        if why != "garbage":
            assert counts.get(why, 0) >= 1, (why, counts)
    garbage_reasons = {"not_cbor", "trailing_data", "not_sign1_tag", "bad_structure", "oversize", "bad_payload",
                       "bad_kid", "bad_protected_header", "bad_unprotected_header", "empty_batch",
                       "bad_signature_length", "alg_not_es256", "kid_mismatch", "batch_too_large"}
    decoder_rejections = sum(counts.get(r, 0) for r in garbage_reasons)
    assert decoder_rejections == 20 + 3  # the random bytes + oversize, wrong tag, wrong alg
    assert counts["duplicate"] == 3 and "internal_error" not in counts
    rows = store.conn.execute("SELECT device_id, seq, raw FROM readings").fetchall()
    victim_rows = sorted((s, bytes(r)) for d, s, r in rows if bytes(d) == victim.device_id)
    assert victim_rows == [(s + 1, m) for s, m in enumerate(genuine)]  # nothing bad stored
    assert {bytes(d) for d, _s, _r in rows} == {victim.device_id} | {d.device_id for d in goods}
    for d in goods:  # every good reading stored once, byte for byte
        mine = sorted((s, bytes(r)) for dd, s, r in rows if bytes(dd) == d.device_id)
        assert mine == [(i + 1, m) for i, m in enumerate(sent[d.device_id])]
    assert store.conn.execute("SELECT seq, reason FROM ingest_quarantine").fetchall() == [(5, "clock_future")]
    store.close()


def test_ack_is_retained_and_reflects_the_database_after_a_restart(broker, tmp_path):
    dev = SigningDevice.generate()
    db = tmp_path / "gw.db"
    msgs = [dev.reading(s, int(time.time()), s, 0, 0, 0, 0) for s in range(1, 4)]
    svc = IngestService(IngestConfig(str(db), GRID, broker.host, broker.port, workers=0, client_id="gw-retain"),
                        DictKeySource({dev.device_id: dev.public_key})).start()
    pub = Watcher(broker, "pub-retain")
    try:
        assert wait_until(svc.connected.is_set)
        pub.publish(dev.device_id.hex(), wrap(msgs))
        assert wait_until(lambda: pub.ack(dev) == 3)
        conn = connect(db, readonly=True)
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 3  # on disk before the ack
        conn.close()
        pub.publish(dev.device_id.hex(), b"online", kind="state", retain=True)
        assert wait_until(lambda: ReadingStore.open(db).conn.execute(
            "SELECT state FROM ingest_devices").fetchone() == ("online",))
    finally:
        svc.stop()
        pub.close()
    late = Watcher(broker, "late-device")  # a device reconnecting learns its ack at once (retained)
    try:
        assert wait_until(lambda: late.ack(dev) == 3, timeout=5)
    finally:
        late.close()


def test_gateway_run_rejects_bad_arguments(capsys):
    assert cli_main(["gateway", "run", "--db", "x.db", "--grid", "g", "--broker", "nope"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert cli_main(["gateway", "run", "--db", "x.db", "--grid", "g", "--workers", "-1"]) == 2
    assert cli_main(["gateway"]) == 2


def test_keys_come_from_the_device_registry_and_a_revocation_takes_effect(broker, tmp_path):
    from gateway.aggregator.ingest import keys_for
    from gateway.devices import DeviceRecord, DeviceRegistry

    dev, other_grid = SigningDevice.generate(), SigningDevice.generate()
    db = tmp_path / "gw.db"
    reg_conn = connect(db)
    reg = DeviceRegistry(reg_conn)
    reg.add(DeviceRecord(dev.device_id, dev.public_key, b"\x01" * 32, "sdm630", GRID))
    reg.add(DeviceRecord(other_grid.device_id, other_grid.public_key, b"\x02" * 32, "sdm630", "elsewhere"))
    cfg = IngestConfig(str(db), GRID, broker.host, broker.port, workers=0, client_id="gw-registry")
    svc = IngestService(cfg, keys_for(cfg)).start()
    pub = Watcher(broker, "pub-registry")
    now = int(time.time())
    try:
        assert wait_until(svc.connected.is_set)
        pub.publish(dev.device_id.hex(), dev.reading(1, now, 1, 0, 0, 0, 0))
        pub.publish(other_grid.device_id.hex(), other_grid.reading(1, now, 1, 0, 0, 0, 0))
        assert wait_until(lambda: pub.ack(dev) == 1)
        reg.revoke(dev.device_id, "stolen")
        time.sleep(2.1)  # the key cache's lifetime
        pub.publish(dev.device_id.hex(), dev.reading(2, now, 2, 0, 0, 0, 0))
        store = ReadingStore.open(db)
        assert wait_until(lambda: store.counters().get("revoked_device") == 1)
        assert store.counters().get("unknown_device") == 1  # registered, but for another grid
        assert store.conn.execute("SELECT seq FROM readings").fetchall() == [(1,)]
        store.close()
    finally:
        svc.stop()
        pub.close()
        reg_conn.close()


def test_gateway_run_over_tls_with_the_broker_config_credentials(tmp_path):
    """The production path: `gateway broker-config` writes the TLS broker config and the gateway's
    credential; the gateway connects with it, a device publishes with its own, the ack comes back."""
    import json
    import os
    import pwd
    import shutil
    import ssl
    import tempfile
    from pathlib import Path

    from gateway.aggregator.ingest import keys_for
    from gateway.broker import BrokerSettings, generate
    from gateway.devices import DeviceRecord, DeviceRegistry
    from hil.broker import free_port

    base = Path(tempfile.mkdtemp(prefix="metanoia-ingest-tls-"))  # the broker's user must reach it
    os.chmod(base, 0o711)
    run = base / "run"
    run.mkdir()
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("mosquitto").pw_name
        except KeyError:
            owner = "nobody"
        shutil.chown(run, owner)
    db = base / "gateway.db"
    dev = SigningDevice.generate()
    reg = DeviceRegistry(connect(db))
    reg.add(DeviceRecord(dev.device_id, dev.public_key, b"\x03" * 32, "sdm630", GRID))
    settings = BrokerSettings(grid=GRID, hostnames=("127.0.0.1",), port=free_port(), bind="127.0.0.1", owner=owner)
    generate(reg, base / "out", settings)
    reg.conn.close()
    creds = base / "out" / "credentials"
    svc = None
    with Mosquitto(run, port=settings.port, extra_conf=(base / "out" / "mosquitto.conf").read_text(),
                   default_listener=False) as broker:
        try:
            assert cli_main(["gateway", "run", "--db", str(db), "--grid", GRID, "--credentials",
                             str(base / "nope.json")]) == 2
            gw = json.loads((creds / "gateway.json").read_text())
            cfg = IngestConfig(str(db), GRID, gw["host"], gw["port"], workers=0, username=gw["user"],
                               password=gw["password"], ca_file=gw["ca_file"])
            svc = IngestService(cfg, keys_for(cfg)).start()
            assert wait_until(svc.connected.is_set)
            mine = json.loads((creds / f"{dev.device_id.hex()}.json").read_text())["mqtt"]
            acks: list[int] = []
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=dev.device_id.hex())
            c.username_pw_set(mine["user"], mine["password"])
            c.tls_set_context(ssl.create_default_context(cafile=str(base / "out" / "ca.crt")))
            c.on_message = lambda _c, _u, m: acks.append(cbor2.loads(m.payload))
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            c.subscribe(f"metanoia/{GRID}/{dev.device_id.hex()}/ack", 1)
            c.publish(f"metanoia/{GRID}/{dev.device_id.hex()}/tele",
                      wrap([dev.reading(s, int(time.time()), s, 0, 0, 0, 0) for s in (1, 2)]), qos=1)
            assert wait_until(lambda: acks and acks[-1] == 2)
            c.disconnect()
            c.loop_stop()
        finally:
            if svc is not None:
                svc.stop()
            shutil.rmtree(base, ignore_errors=True)
