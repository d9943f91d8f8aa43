"""Device state through a real Mosquitto: the retained JSON ``state`` message with the firmware version,
the last will when a device dies, the old plain ``online``/``offline``, hostile payloads counted as
``bad_state`` while telemetry keeps flowing, and a gateway restart that re-reads retained states."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.signed_readings import SigningDevice
from gateway.aggregator.device_state import StateError, parse_state, read_states
from gateway.aggregator.ingest import IngestConfig, IngestService
from gateway.aggregator.keys import DictKeySource
from gateway.cli import main as cli_main
from gateway.db import connect
from gateway.status import gateway_status
from hil.broker import Mosquitto
from tests.gateway.test_ingest_service import Watcher, wait_until

GRID = "svc"

# A device process: connects with the contract's last will, says it is online, then waits to be killed.
DEVICE = r"""
import sys, time, paho.mqtt.client as paho
host, port, dev, fw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dev-" + dev)
topic = f"metanoia/svc/{dev}/state"
c.will_set(topic, b'{"state":"offline"}', qos=1, retain=True)
c.connect(host, port, keepalive=60)
c.loop_start()
c.publish(topic, ('{"state":"online","fw":"%s"}' % fw).encode(), qos=1, retain=True).wait_for_publish(10)
print("ready", flush=True)
time.sleep(600)
"""

HOSTILE = [
    b"\xff\xfe", b"on", b"ONLINE", b"online ", b"x" * 300, b"[1]", b'"online"', b"null",
    b'{"state":"online"}',                                   # online without fw
    b'{"state":"up","fw":"1.0"}', b'{"state":1,"fw":"1.0"}',
    b'{"state":"online","fw":"1.0","extra":true}',
    b'{"state":"online","state":"offline","fw":"1.0"}',      # duplicate key
    b'{"state":"online","fw":"bad fw!"}', b'{"state":"online","fw":""}', b'{"state":"online","fw":7}',
    b'{"state":"online","fw":NaN}', b"[" * 200 + b"]" * 200,
]


@pytest.fixture(scope="module")
def broker():
    with Mosquitto() as b:
        yield b


def test_parse_state_accepts_the_contract_and_the_old_plain_format_only() -> None:
    assert parse_state(b'{"state":"online","fw":"1.4.0"}') == parse_state(b'{"fw":"1.4.0","state":"online"}')
    m = parse_state(b'{"state":"online","fw":"1.4.0+esp32"}')
    assert m is not None and (m.state, m.fw, m.format) == ("online", "1.4.0+esp32", "json")
    m = parse_state(b'{"state":"offline"}')
    assert m is not None and (m.state, m.fw, m.format) == ("offline", None, "json")
    for plain in (b"online", b"offline"):
        m = parse_state(plain)
        assert m is not None and (m.state, m.fw, m.format) == (plain.decode(), None, "plain")
    assert parse_state(b"") is None        # a cleared retained message says nothing
    for bad in HOSTILE:
        with pytest.raises(StateError) as e:
            parse_state(bad)
        assert e.value.reason == "bad_state"


def _state(db, dev: SigningDevice):
    conn = connect(db, readonly=True)
    try:
        return read_states(conn).get(dev.device_id)
    finally:
        conn.close()


def test_state_fw_last_will_and_hostile_payloads_through_mosquitto(broker, tmp_path, capsys) -> None:
    a, b, old = SigningDevice.generate(), SigningDevice.generate(), SigningDevice.generate()
    keys = DictKeySource({d.device_id: d.public_key for d in (a, b, old)})
    db = tmp_path / "gw.db"
    cfg = IngestConfig(str(db), GRID, broker.host, broker.port, workers=0, client_id="gw-state")
    svc = IngestService(cfg, keys).start()
    pub = Watcher(broker, "state-pub")
    proc = subprocess.Popen([sys.executable, "-c", DEVICE, broker.host, str(broker.port), a.device_id.hex(), "1.4.0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert wait_until(svc.connected.is_set)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert wait_until(lambda: (s := _state(db, a)) is not None and s.state == "online")
        s = _state(db, a)
        assert s is not None and (s.fw, s.format) == ("1.4.0", "json")
        online_since = s.since_ms
        # hostile state payloads from b while a's telemetry flows: each counted, every reading acked
        now = int(time.time())
        for i, bad in enumerate(HOSTILE):
            pub.publish(b.device_id.hex(), bad, kind="state")
            pub.publish(a.device_id.hex(), a.reading(i + 1, now, 10 * i, 0, 0, 100, 0))
        assert wait_until(lambda: pub.ack(a) == len(HOSTILE))
        conn = connect(db, readonly=True)
        assert wait_until(lambda: dict(conn.execute(
            "SELECT name, count FROM ingest_counters WHERE device_id = ?", (b.device_id,)).fetchall())
            == {"bad_state": len(HOSTILE)})
        assert _state(db, b) is None                       # nothing recorded for b
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == len(HOSTILE)
        # old firmware: plain "online", no version
        pub.publish(old.device_id.hex(), b"online", kind="state", retain=True)
        assert wait_until(lambda: (s := _state(db, old)) is not None and s.state == "online")
        s = _state(db, old)
        assert s is not None and (s.fw, s.format) == (None, "plain")
        # a kills -9: the broker publishes its last will; the version stays, since moves
        proc.kill()
        proc.wait()
        assert wait_until(lambda: (s := _state(db, a)) is not None and s.state == "offline")
        s = _state(db, a)
        assert s is not None and s.fw == "1.4.0" and s.since_ms >= online_since and s.format == "json"
        offline_since = s.since_ms
        status = gateway_status(conn, db)
        da = status["devices"][a.device_id.hex()]
        assert (da["state"], da["fw"], da["online"]) == ("offline", "1.4.0", False)
        assert status["rejections"]["bad_state"] == len(HOSTILE)
        conn.close()
        assert cli_main(["gateway", "status", "--db", str(db)]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(a.device_id.hex()))
        assert line.split()[1:4] == ["-", "offline", "1.4.0"]       # name, state, firmware
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        svc.stop()
    # a restarted gateway gets the retained states again: the state and its since stay as they were
    svc = IngestService(IngestConfig(str(db), GRID, broker.host, broker.port, workers=0, client_id="gw-state-2"),
                        keys).start()
    try:
        assert wait_until(lambda: (s := _state(db, a)) is not None and s.seen_at_ms > offline_since)
        s = _state(db, a)
        assert s is not None and (s.state, s.fw, s.since_ms) == ("offline", "1.4.0", offline_since)
    finally:
        svc.stop()
        pub.close()


def test_the_real_firmware_reports_its_version_and_its_will_marks_it_offline(broker, tmp_path) -> None:
    """The firmware's own loop (on CPython against the virtual rig) says online with its version; a dropped
    connection (no DISCONNECT, as a power cut) makes the broker publish its will."""
    from firmware.device.version import VERSION
    from gateway.aggregator.ingest import keys_for
    from gateway.db import open_gateway_db
    from gateway.devices import DeviceRegistry
    from hil.device_sim import build_device, wait_for
    from hil.modbus_rig import RigHousehold, VirtualRig
    from hil.physics import Household, ManualClock

    clock = ManualClock(time.time())
    db = tmp_path / "gw.db"
    with VirtualRig([RigHousehold(Household("fw-1", kwp=3.0, seed=7), meter="sdm630", pace=False)],
                    clock=clock) as rig:
        d = build_device("fw-1", rig.endpoints["fw-1"], tmp_path / "fw-1", clock, grid=GRID,
                         mqtt=(broker.host, broker.port))
        conn = open_gateway_db(db)
        DeviceRegistry(conn).add(d.identity() | {"profile": "sdm630"}, claim_code="claim-fw-1")
        conn.close()
        cfg = IngestConfig(str(db), GRID, broker.host, broker.port, workers=0, client_id="gw-fw")
        svc = IngestService(cfg, keys_for(cfg)).start()
        try:
            assert wait_until(svc.connected.is_set)
            clock.advance(60)
            d.device.sample()
            d.device.service()
            assert wait_for(lambda: d.device.acked >= 1, [d], timeout=60)
            assert wait_until(lambda: (s := _state(db, d)) is not None and s.state == "online")
            s = _state(db, d)
            assert s is not None and (s.fw, s.format) == (VERSION, "json")
            d.device.mqtt.close()
            assert wait_until(lambda: (s := _state(db, d)) is not None and s.state == "offline")
            s = _state(db, d)
            assert s is not None and s.fw == VERSION
        finally:
            svc.stop()

_JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
                        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
                            st.sampled_from(["state", "fw", "x", ""]) | st.text(max_size=5), kids, max_size=4),
                        max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | _JSONISH.map(lambda d: json.dumps(d).encode()))
def test_parse_state_never_raises_anything_but_state_error(payload: bytes) -> None:
    try:
        m = parse_state(payload)
    except StateError as e:
        assert e.reason == "bad_state"
        return
    assert m is None or (m.state in ("online", "offline") and (m.fw is None or 1 <= len(m.fw) <= 64))
