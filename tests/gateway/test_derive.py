"""The deriver keeps interval energy and evidence roots current from stored readings,
off the ack path, and catches up after a restart."""

from __future__ import annotations

from bench.signed_readings import SigningDevice
from gateway.aggregator.derive import Deriver
from gateway.db import open_gateway_db
from gateway.devices import DeviceRegistry
from gateway.evidence.merkle import leaf_hash, root_of

T0 = 1_780_000_200
START = (T0 // 900) * 900


def _db(tmp_path, devices):
    conn = open_gateway_db(tmp_path / "g.db")
    reg = DeviceRegistry(conn)
    for d in devices:
        reg.add({"device_id": d.device_id.hex(), "public_key": d.public_key.hex(), "grid": "g1",
                 "profile": "sdm630"}, claim_code="claim-" + d.device_id.hex())
    return conn


def _store(conn, dev, seq, t, imp, exp=0, pv=0, received=1):
    raw = dev.reading(seq, t, imp, exp, pv, 100, 0)
    conn.execute("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?)",
                 (dev.device_id, seq, t, imp, exp, pv, 100, 0, raw, received))
    return raw


def test_intervals_and_roots_follow_the_stored_readings(tmp_path):
    a, b = SigningDevice.generate(b"\x01" * 9), SigningDevice.generate(b"\x02" * 9)
    conn = _db(tmp_path, [a, b])
    raws = {}
    for i in range(8):  # a reading every 5 minutes from START: 35 minutes
        t = START + 300 * i
        raws[(a.device_id, i + 1)] = _store(conn, a, i + 1, t, 1000 + 50 * i, received=10 + i)
        raws[(b.device_id, i + 1)] = _store(conn, b, i + 1, t, 2000, exp=500 + 30 * i, received=10 + i)
    d = Deriver(conn, "g1")
    written, rooted = d.pass_once()
    assert written > 0
    # Newest reading at START+2100: intervals [START, +900) and [+900, +1800) are closed, the third is open.
    assert rooted == 2
    rows = conn.execute("SELECT start, import_wh, export_wh FROM interval_energy WHERE device_id = ? "
                        "ORDER BY start", (a.device_id,)).fetchall()
    assert [r[0] for r in rows][:2] == [START, START + 900]
    assert rows[0][1] == 150 and rows[1][1] == 150  # 50 Wh per 5 minutes, 3 spans per interval
    # The first root is the RFC 6962 root over both devices' readings in it, device id then seq.
    leaves = [leaf_hash(raws[(dev.device_id, s)]) for dev in (a, b) for s in (1, 2, 3)]
    (root,) = conn.execute("SELECT root FROM evidence_roots WHERE grid='g1' AND start=?", (START,)).fetchall()
    assert bytes(root[0]) == root_of(leaves)
    # Nothing new: a second pass writes no roots.
    assert d.pass_once()[1] == 0


def test_a_late_reading_makes_a_new_root_version(tmp_path):
    a = SigningDevice.generate(b"\x03" * 9)
    conn = _db(tmp_path, [a])
    for i, s in enumerate((1, 2, 4, 5, 6, 7, 8)):  # seq 3 (START+600) missing
        t = START + 300 * (s - 1)
        _store(conn, a, s, t, 1000 + 10 * s, received=100 + i)
    d = Deriver(conn, "g1")
    d.pass_once()
    v1 = conn.execute("SELECT version, leaf_count FROM evidence_roots WHERE start=?", (START,)).fetchall()
    assert v1 == [(1, 2)]
    _store(conn, a, 3, START + 600, 1030, received=500)
    assert d.pass_once()[1] == 1
    versions = conn.execute("SELECT version, leaf_count FROM evidence_roots WHERE start=? ORDER BY version",
                            (START,)).fetchall()
    assert versions == [(1, 2), (2, 3)]


def test_a_restarted_deriver_catches_up_and_equals_a_full_recompute(tmp_path):
    a = SigningDevice.generate(b"\x04" * 9)
    conn = _db(tmp_path, [a])
    for s in range(1, 6):
        _store(conn, a, s, START + 300 * (s - 1), 1000 + 7 * s, received=s)
    Deriver(conn, "g1").pass_once()
    for s in range(6, 12):  # stored while no deriver ran
        _store(conn, a, s, START + 300 * (s - 1), 1000 + 7 * s, received=s)
    Deriver(conn, "g1").pass_once()
    incremental = conn.execute("SELECT start, import_wh, estimated FROM interval_energy ORDER BY start").fetchall()
    from gateway.aggregator.intervals import IntervalEngine

    IntervalEngine(conn).recompute()
    assert conn.execute("SELECT start, import_wh, estimated FROM interval_energy ORDER BY start").fetchall() == incremental
    assert sum(r[1] for r in incremental) == 7 * 10  # last - first, not a Wh more or less
