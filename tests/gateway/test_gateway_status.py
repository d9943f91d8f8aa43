"""`metanoia gateway status`: what the operator sees comes from what was durably stored."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as paho
import pytest

from bench.signed_readings import SigningDevice, wrap
from gateway.aggregator.ingest import IngestConfig, IngestService, keys_for
from gateway.cli import main as cli_main
from gateway.db import connect, open_gateway_db
from gateway.devices import DeviceRegistry
from hil.broker import Mosquitto

GRID = "st1"


@pytest.fixture(scope="module")
def broker():
    with Mosquitto() as b:
        yield b


def _wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_status_shows_devices_readings_rejections_and_the_latest_interval(broker, tmp_path, capsys):
    db = tmp_path / "gw.db"
    a, b, silent, gone = (SigningDevice.generate() for _ in range(4))
    conn = open_gateway_db(db)
    reg = DeviceRegistry(conn)
    for name, d in (("101", a), ("102", b), ("103", silent), ("104", gone)):
        reg.add({"device_id": d.device_id.hex(), "public_key": d.public_key.hex(), "grid": GRID,
                 "profile": "sdm630", "name": name}, claim_code=f"code-{name}")
    reg.revoke(gone.device_id, "meter replaced")
    conn.close()
    cfg = IngestConfig(str(db), GRID, broker.host, broker.port, workers=0, client_id="gw-status",
                       derive_every_s=0.2)
    svc = IngestService(cfg, keys_for(cfg)).start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pubs")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        t0 = (int(time.time()) // 900) * 900 - 3600  # an hour ago, on an interval boundary
        for dev, step in ((a, 40), (b, 10)):
            msgs = [dev.reading(s, t0 + 300 * (s - 1), 10_000 + step * s) for s in range(1, 14)]
            pub.publish(f"metanoia/{GRID}/{dev.device_id.hex()}/tele", wrap(msgs), qos=1).wait_for_publish(5)
        pub.publish(f"metanoia/{GRID}/{a.device_id.hex()}/state", b"online", qos=1, retain=True)
        pub.publish(f"metanoia/{GRID}/{a.device_id.hex()}/tele", b"\xff\x00garbage", qos=1).wait_for_publish(5)
        forged = gone.reading(1, t0, 1)  # a revoked device's reading
        pub.publish(f"metanoia/{GRID}/{gone.device_id.hex()}/tele", forged, qos=1).wait_for_publish(5)
        reader = connect(db, readonly=True)
        _wait(lambda: reader.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 26
              and reader.execute("SELECT COUNT(*) FROM evidence_roots").fetchone()[0] >= 3)
        reader.close()
        time.sleep(0.5)
    finally:
        pub.loop_stop()
        svc.stop()
    assert cli_main(["gateway", "status", "--db", str(db), "--grid", GRID, "--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["devices_total"] == 4 and s["readings_stored"] == 26
    devs = s["devices"]
    da, dsilent, dgone = devs[a.device_id.hex()], devs[silent.device_id.hex()], devs[gone.device_id.hex()]
    assert da["state"] == "online" and da["online"] and da["acked"] == 13 and da["gap"] == 0
    assert da["last_reading"]["seq"] == 13 and da["last_reading"]["import_wh"] == 10_000 + 40 * 13
    assert dsilent["state"] == "never_seen" and not dsilent["online"] and dsilent["last_reading"] is None
    assert dgone["registry"] == "revoked" and not dgone["online"]
    assert s["rejections"].get("revoked_device") == 1 and s["rejected"] >= 2
    assert sum(v for k, v in s["rejections"].items() if k not in ("revoked_device",)) >= 1  # the garbage
    li = s["latest_interval"]
    # The latest closed interval: 15 minutes = 3 spans of 5 minutes for each device.
    assert li is not None and li["closed"] and li["devices"] == 2 and li["reporting"] == 2
    assert li["import_wh"] == 3 * 40 + 3 * 10
    assert s["evidence_roots"] >= 3 and s["db_bytes"] > 0
    # The human-readable form names the devices and the reasons.
    assert cli_main(["gateway", "status", "--db", str(db), "--grid", GRID]) == 0
    out = capsys.readouterr().out
    assert "revoked" in out and "revoked_device 1" in out and "2/4 devices" not in out


def test_status_of_a_missing_database_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["gateway", "status", "--db", str(tmp_path / "none.db")]) == 2
    assert "no database" in capsys.readouterr().err
