"""The device loop against a real Mosquitto: sign, commit to flash, publish,
drop only what the gateway acknowledged; outages, broker restarts and reboots
lose nothing and duplicate nothing in storage."""

from __future__ import annotations

import json
import time

import pytest

from device import config
from device.loop import Device, decode_ack
from device.version import RELEASE
from device.version import VERSION as FW_VERSION
from gateway.aggregator.collector import Collector
from hil.broker import Mosquitto
from hil.nor_flash import NorFlash
from secure_sign.software import SoftwareSigner
from storage.ring_buffer import RingBuffer
from telemetry.cose import FLAG_METER_ERROR, FLAG_OFFLINE, FLAG_SOFTWARE_KEY
from umqtt.simple import MQTTClient

KEY = bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
DEVICE_ID = bytes.fromhex("0123456789abcdef01")


class CountingMeter:
    """A scripted grid meter source (the Modbus path has its own tests)."""

    def __init__(self) -> None:
        self.imp = 1000
        self.exp = 0
        self.fail = False

    def read(self) -> dict:
        if self.fail:
            raise OSError("meter silent")
        self.imp += 7
        self.exp += 3
        return {"import_wh": self.imp, "export_wh": self.exp, "power_w": 420, "backwards": False}


@pytest.fixture
def broker():
    with Mosquitto() as b:
        yield b


def make_device(broker, flash, meter=None, **over) -> Device:
    cfg = config.merge(config.DEFAULTS, {"grid": "t1", "batch_max": 8, "window": 32, **over})
    signer = SoftwareSigner(KEY, DEVICE_ID)
    mqtt = MQTTClient(DEVICE_ID.hex(), broker.host, port=broker.port, keepalive=10)
    mqtt.timeout = 3.0
    return Device(cfg, signer, RingBuffer(flash), meter or CountingMeter(), mqtt=mqtt,
                  clock=lambda: int(time.time()))


def collector_for(broker) -> Collector:
    signer = SoftwareSigner(KEY, DEVICE_ID)
    return Collector(broker.host, broker.port, "t1", {DEVICE_ID: signer.public_key}).start()


def drive(dev: Device, until, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; device stats {dev.stats()}")
        dev.service()
        time.sleep(0.01)


def test_decode_ack_accepts_only_one_cbor_uint():
    assert decode_ack(b"\x00") == 0 and decode_ack(b"\x17") == 23
    assert decode_ack(b"\x18\x18") == 24 and decode_ack(b"\x1a\x00\x01\x00\x00") == 65536
    for bad in (b"", b"\x20", b"\x18", b"\x00\x00", b"\x1c", b"\x41\x00", b"\x1a\x00\x01"):
        with pytest.raises(ValueError):
            decode_ack(bad)


def test_readings_are_published_verified_and_acknowledged(broker):
    col = collector_for(broker)
    dev = make_device(broker, NorFlash(16))
    try:
        for _ in range(5):
            dev.sample()
            dev.service()
        drive(dev, lambda: dev.acked == 5)
        assert col.seqs(DEVICE_ID) == [1, 2, 3, 4, 5]
        assert dev.ring.pending(10, 1 << 20) == []
        r = col.devices[DEVICE_ID].readings[5]
        assert r.flags & FLAG_SOFTWARE_KEY and not r.flags & FLAG_OFFLINE
        assert r.import_wh == 1035 and r.export_wh == 15 and r.power_w == 420
    finally:
        col.stop()
        dev.mqtt.disconnect()


def test_broker_restart_backlog_drains_in_batches_exactly_once(broker):
    col = collector_for(broker)
    flash = NorFlash(16)
    dev = make_device(broker, flash, ack_timeout_s=3)
    try:
        dev.sample()
        drive(dev, lambda: dev.acked == 1)
        broker.stop()  # the collector (paho) reconnects on its own
        for _ in range(20):  # the outage: readings go to flash only
            dev.sample()
            dev.service()
        assert not dev.connected
        broker.start()
        dev._next_connect = dev.ticks_ms()  # skip the reconnect backoff
        drive(dev, lambda: dev.acked == 21, timeout=30)
        assert col.seqs(DEVICE_ID) == list(range(1, 22))
        assert col.devices[DEVICE_ID].duplicates == 0
        # Seq 2 was taken before the device noticed the outage (its publish failed).
        offline = [col.devices[DEVICE_ID].readings[s].flags & FLAG_OFFLINE for s in range(3, 22)]
        assert all(offline)
        # Several readings per MQTT message while draining the backlog.
        assert col.devices[DEVICE_ID].messages < 20
        assert dev.counters["published"] >= 21
    finally:
        col.stop()
        dev.mqtt.disconnect()


def test_reboot_mid_backlog_keeps_seq_and_delivers_everything(broker):
    flash = NorFlash(16)
    dev = make_device(broker, flash)
    for _ in range(12):  # never connected: all in flash
        dev.sample()
    assert dev.ring.next_seq == 13
    # Reboot: a new ring and device on the same flash.
    col = collector_for(broker)
    dev2 = make_device(broker, flash)
    try:
        assert dev2.ring.next_seq == 13
        drive(dev2, lambda: dev2.acked == 12)
        dev2.sample()
        drive(dev2, lambda: dev2.acked == 13)
        assert col.seqs(DEVICE_ID) == list(range(1, 14))
        assert col.devices[DEVICE_ID].duplicates == 0
    finally:
        col.stop()
        dev2.mqtt.disconnect()


def test_lost_acks_cause_a_resend_that_is_stored_once(broker):
    col = collector_for(broker)
    col.ack_enabled = False  # the gateway stores but its acks never arrive
    dev = make_device(broker, NorFlash(16), ack_timeout_s=1)
    try:
        for _ in range(3):
            dev.sample()
        drive(dev, lambda: col.total() == 3)
        t0 = time.monotonic()
        drive(dev, lambda: dev.counters["resends"] >= 1 and col.devices[DEVICE_ID].duplicates >= 3)
        assert time.monotonic() - t0 >= 0.5  # waited for the ack timeout
        assert dev.ring.pending(10, 1 << 20) != []  # nothing dropped without an ack
        col.ack_enabled = True
        dev.sample()
        drive(dev, lambda: dev.acked == 4)
        assert col.seqs(DEVICE_ID) == [1, 2, 3, 4]
    finally:
        col.stop()
        dev.mqtt.disconnect()


def test_an_ack_beyond_what_was_sent_is_refused_and_counted(broker):
    dev = make_device(broker, NorFlash(16))
    dev.sample()
    dev.on_message(dev.t_ack, b"\x18\x63")  # 99: never produced
    dev.on_message(dev.t_ack, b"\xff")
    assert dev.counters["bad_acks"] == 2
    assert [s for s, _ in dev.ring.pending(10, 1 << 20)] == [1]


def test_a_silent_meter_flags_the_reading_and_the_loop_goes_on(broker):
    meter = CountingMeter()
    col = collector_for(broker)
    dev = make_device(broker, NorFlash(16), meter=meter)
    try:
        dev.sample()
        meter.fail = True
        dev.sample()
        meter.fail = False
        dev.sample()
        drive(dev, lambda: dev.acked == 3)
        rs = col.devices[DEVICE_ID].readings
        assert rs[2].flags & FLAG_METER_ERROR and not rs[1].flags & FLAG_METER_ERROR
        assert rs[2].import_wh == rs[1].import_wh  # last known counters, flagged
        assert dev.counters["meter_errors"] == 1
    finally:
        col.stop()
        dev.mqtt.disconnect()


def test_cmd_changes_runtime_settings_and_bad_commands_are_counted(broker):
    dev = make_device(broker, NorFlash(16))
    dev.on_message(dev.t_cmd, b'{"interval_s": 15}')
    assert dev.cfg["interval_s"] == 15
    for bad in (b"nope", b'{"wdt_ms": 1}', b'{"interval_s": -1}', b'{"batch_max": 1000}'):
        dev.on_message(dev.t_cmd, bad)
    assert dev.counters["bad_cmds"] == 4 and dev.cfg["interval_s"] == 15


def test_idle_device_pings_the_broker_within_its_keepalive(broker):
    ticks = [0]
    dev = make_device(broker, NorFlash(16), mqtt={"keepalive": 4})
    dev.ticks_ms = lambda: ticks[0]
    dev._next_connect = 0
    try:
        drive(dev, lambda: dev.connected)
        dev.service()
        assert dev.counters["pings"] == 0
        ticks[0] += 2100  # past half the keepalive with nothing to send
        dev.service()
        assert dev.counters["pings"] == 1 and dev.connected
        dev.service()
        assert dev.counters["pings"] == 1
    finally:
        dev.mqtt.disconnect()


def test_last_will_marks_the_device_offline(broker):
    import paho.mqtt.client as paho

    dev = make_device(broker, NorFlash(16))
    states: list[bytes] = []
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda _c, _u, m: states.append(bytes(m.payload))
    watcher.connect(broker.host, broker.port)
    watcher.loop_start()
    watcher.subscribe(dev.t_state.decode(), 1)
    try:
        online = ('{"state":"online","fw":"%s"}' % FW_VERSION).encode()
        drive(dev, lambda: dev.connected and online in states)
        dev.mqtt.close()  # the device vanishes without a DISCONNECT
        deadline = time.monotonic() + 25
        while b'{"state":"offline"}' not in states and time.monotonic() < deadline:
            time.sleep(0.1)
        assert states[-1] == b'{"state":"offline"}'
        assert json.loads(online) == {"state": "online", "fw": RELEASE + "+src"}
    finally:
        watcher.loop_stop()


def test_after_a_broker_restart_the_device_resubscribes_and_gets_acks_again(broker):
    """The host umqtt shim must not let paho silently revive a session without the
    device's subscriptions (real umqtt never reconnects by itself)."""
    col = collector_for(broker)
    dev = make_device(broker, NorFlash(16))
    try:
        dev.sample()
        drive(dev, lambda: dev.acked == 1)
        broker.restart()
        time.sleep(1.5)  # long enough for paho's own reconnect, had it been allowed
        dev.sample()
        deadline = time.monotonic() + 20
        while dev.acked < 2 and time.monotonic() < deadline:
            dev.service()
            if not dev.connected:
                dev._next_connect = dev.ticks_ms()
            time.sleep(0.01)
        assert dev.acked == 2 and dev.counters["connects"] >= 2
    finally:
        col.stop()
        dev.mqtt.disconnect()
