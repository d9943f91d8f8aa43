"""Interval energy from cumulative counters (gateway/aggregator/intervals.py, docs/intervals.md).

Expected values are worked out by hand in the comments, from the rules in the doc.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.aggregator.intervals import IntervalEngine, RegistryMissing, interval_start
from gateway.db import open_gateway_db
from gateway.devices import DeviceRegistry

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z = 09:00 KST, a multiple of 900
L = 900
DEV = bytes.fromhex("0123a1b2c3d4e5f6ee")
DEV2 = bytes.fromhex("0123000000000002ee")
METER_ERR, INV_ERR, UNSYNCED, BACKWARDS = 0x01, 0x02, 0x04, 0x10


def db(tmp_path: Path, name: str = "g.db") -> sqlite3.Connection:
    return open_gateway_db(tmp_path / name)


def put(conn: sqlite3.Connection, dev: bytes, seq: int, t: int, imp: int, exp: int = 0, pv: int = 0,
        flags: int = 0) -> None:
    if t == 0:
        flags |= UNSYNCED
    conn.execute("INSERT INTO readings (device_id, seq, time, import_wh, export_wh, pv_wh, power_w, flags, raw, "
                 "received_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, 0)",
                 (dev, seq, t, imp, exp, pv, flags, b"raw-%d" % seq))


def rows(conn: sqlite3.Connection, dev: bytes = DEV) -> dict[int, tuple[int, int, int, int, int, bool]]:
    """{start offset from T0: (import, export, pv, net, readings, estimated)}"""
    eng = IntervalEngine(conn)
    return {e.start - T0: (e.import_wh, e.export_wh, e.pv_wh, e.net_wh, e.readings, e.estimated)
            for e in eng.device_intervals(dev)}


def test_intervals_are_utc_aligned_quarter_hours_which_are_kst_quarter_hours():
    assert interval_start(T0 + 899) == T0
    assert interval_start(T0 + 900) == T0 + 900
    # 2026-01-01T09:14:59+09:00 is in the slot that starts at 09:00 KST.
    assert interval_start(T0 + 14 * 60 + 59) == T0


def test_energy_between_two_readings_is_split_linearly_across_the_boundary(tmp_path):
    conn = db(tmp_path)
    # 100 Wh imported between T0+600 and T0+1100 (500 s). At the boundary T0+900,
    # 300 of 500 s have passed: floor(100 * 300 / 500) = 60 -> 60 | 40.
    # Export 7 Wh: floor(7 * 300 / 500) = 4 -> 4 | 3. PV 1 Wh: floor(0.6) = 0 -> 0 | 1.
    put(conn, DEV, 1, T0 + 600, 1000, 20, 300)
    put(conn, DEV, 2, T0 + 1100, 1100, 27, 301)
    IntervalEngine(conn, max_gap_s=600).update([DEV])
    assert rows(conn) == {0: (60, 4, 0, 56, 1, False), 900: (40, 3, 1, 37, 1, False)}


def test_a_gap_longer_than_max_gap_marks_every_interval_it_touches_estimated(tmp_path):
    conn = db(tmp_path)
    # Same readings, default max_gap 300 s < 500 s: both intervals estimated, energy unchanged.
    put(conn, DEV, 1, T0 + 600, 1000)
    put(conn, DEV, 2, T0 + 660, 1010)
    put(conn, DEV, 3, T0 + 2000, 1144)  # 134 Wh over 1340 s: T0+900 at 240 s -> 24; T0+1800 at 1140 s -> 114
    IntervalEngine(conn).update([DEV])
    assert rows(conn) == {0: (10 + 24, 0, 0, 34, 2, True), 900: (90, 0, 0, 90, 0, True),
                          1800: (20, 0, 0, 20, 1, True)}


def test_rounding_never_creates_or_loses_a_wh(tmp_path):
    conn = db(tmp_path)
    # 7 Wh per minute, readings at T0+870, +930, ..., so every boundary splits a
    # 7 Wh span 30/30: floor(7 * 30 / 60) = 3 before the boundary, 4 after.
    for i in range(32):
        put(conn, DEV, i + 1, T0 + 870 + 60 * i, 7 * i)
    IntervalEngine(conn).update([DEV])
    got = rows(conn)
    # [0,900): 3 | [900,1800): 4 + 14 whole spans (930..1770) x 7 + 3 = 105 |
    # [1800,2700): the same 105 | [2700,3600): 4 (the last reading is at T0+2730).
    assert [got[s][0] for s in (0, 900, 1800, 2700)] == [3, 105, 105, 4]
    assert sum(v[0] for v in got.values()) == 7 * 31


def test_an_untimed_reading_carries_counters_but_no_time(tmp_path):
    conn = db(tmp_path)
    # 100 Wh from T0+800 to T0+1000 with an unsynced reading between: the energy is
    # spread over the timed span as if it were not there: 50 | 50.
    put(conn, DEV, 1, T0 + 800, 0)
    put(conn, DEV, 2, 0, 70)
    put(conn, DEV, 3, T0 + 1000, 100)
    IntervalEngine(conn).update([DEV])
    assert rows(conn) == {0: (50, 0, 0, 50, 1, False), 900: (50, 0, 0, 50, 1, False)}


def test_energy_before_the_first_timed_reading_lands_at_its_instant_estimated(tmp_path):
    conn = db(tmp_path)
    # Boot without NTP: 10 -> 30 Wh untimed, then the first timed reading at T0+100
    # (30), then T0+160 (40): 20 Wh at the instant T0+100 plus 10 after.
    put(conn, DEV, 1, 0, 10)
    put(conn, DEV, 2, T0 + 100, 30)
    put(conn, DEV, 3, T0 + 160, 40)
    IntervalEngine(conn).update([DEV])
    assert rows(conn) == {0: (30, 0, 0, 30, 2, True)}


def test_energy_after_the_last_timed_reading_waits_for_the_next_one(tmp_path):
    conn = db(tmp_path)
    eng = IntervalEngine(conn)
    put(conn, DEV, 1, T0 + 100, 0)
    put(conn, DEV, 2, T0 + 160, 6)
    put(conn, DEV, 3, 0, 9)          # clock lost: no time, energy pending
    eng.update([DEV])
    assert rows(conn) == {0: (6, 0, 0, 6, 2, False)}
    assert eng.known_until(DEV) == T0 + 160
    put(conn, DEV, 4, T0 + 220, 12)  # 6 Wh more, 160..220
    eng.update([DEV])
    assert rows(conn) == {0: (12, 0, 0, 12, 3, False)}


def test_a_counter_going_backwards_starts_a_new_baseline_and_is_recorded(tmp_path):
    conn = db(tmp_path)
    # import 5000 -> 5010 (+10), meter swapped: 3 (flagged; step 0), then 13 (+10) = 20.
    # export counts on normally 0 -> 3. No negative energy anywhere.
    put(conn, DEV, 1, T0 + 100, 5000, 0)
    put(conn, DEV, 2, T0 + 160, 5010, 1)
    put(conn, DEV, 3, T0 + 220, 3, 2, flags=BACKWARDS)
    put(conn, DEV, 4, T0 + 280, 13, 3)
    eng = IntervalEngine(conn)
    eng.update([DEV])
    assert rows(conn) == {0: (20, 3, 0, 17, 4, True)}
    assert eng.counter_resets(DEV) == [(3, "import_wh", 5010, 3, True)]


def test_meter_error_readings_are_skipped_by_the_grid_counters_only(tmp_path):
    conn = db(tmp_path)
    # Grid: 100 at T0+60, two meter-error readings (counters 0: not trusted), 190 at
    # T0+960: 90 Wh over 900 s, T0+900 at 840 s: floor(90*840/900) = 84 | 6.
    # PV keeps its own readings: 0@60, 6@120, 12@180, 90@960: 6 + 6 + floor(78*720/780)=72
    # = 84 | 6. Grid intervals are estimated (skipped readings, gap); PV's are not
    # (its gap 180..960 is 780 s > 300: estimated too). Counts: 3 | 1.
    put(conn, DEV, 1, T0 + 60, 100, 0, 0)
    put(conn, DEV, 2, T0 + 120, 0, 0, 6, flags=METER_ERR)
    put(conn, DEV, 3, T0 + 180, 0, 0, 12, flags=METER_ERR)
    put(conn, DEV, 4, T0 + 960, 190, 0, 90)
    IntervalEngine(conn).update([DEV])
    assert rows(conn) == {0: (84, 0, 84, 84, 3, True), 900: (6, 0, 6, 6, 1, True)}
    assert IntervalEngine(conn).counter_resets(DEV) == []


def test_an_inverter_error_estimates_pv_without_touching_grid(tmp_path):
    conn = db(tmp_path)
    put(conn, DEV, 1, T0 + 0, 0, 0, 50)
    put(conn, DEV, 2, T0 + 60, 5, 0, 0, flags=INV_ERR)  # PV counter not trusted
    put(conn, DEV, 3, T0 + 120, 10, 0, 60)
    IntervalEngine(conn).update([DEV])
    (e,) = IntervalEngine(conn).device_intervals(DEV)
    assert (e.import_wh, e.pv_wh, e.estimated) == (10, 10, True)
    grid_est, pv_est = conn.execute("SELECT est_grid, est_pv FROM interval_energy").fetchone()
    assert (grid_est, pv_est) == (0, 1)


def test_a_clock_going_backwards_puts_the_energy_at_the_previous_time(tmp_path):
    conn = db(tmp_path)
    # T0+950 then T0+850: the second is moved to T0+950; its 10 Wh land in [900, 1800).
    put(conn, DEV, 1, T0 + 950, 0)
    put(conn, DEV, 2, T0 + 850, 10)
    IntervalEngine(conn).update([DEV])
    # The reading timed T0+850 still counts in [0, 900) (the evidence uses the signed time).
    assert rows(conn) == {900: (10, 0, 0, 10, 1, True), 0: (0, 0, 0, 0, 1, False)}


def test_incremental_update_touches_only_the_open_interval_onward(tmp_path):
    conn = db(tmp_path)
    eng = IntervalEngine(conn)
    for i in range(20):
        put(conn, DEV, i + 1, T0 + 60 * i, 10 * i)
        put(conn, DEV2, i + 1, T0 + 60 * i, 10 * i)
    eng.update([DEV, DEV2])
    # Mark a closed interval and the other device; an incremental update must not rewrite them.
    conn.execute("UPDATE interval_energy SET readings = 99 WHERE start = ? AND device_id = ?", (T0, DEV))
    conn.execute("UPDATE interval_energy SET readings = 77 WHERE device_id = ?", (DEV2,))
    put(conn, DEV, 21, T0 + 1200, 200)
    assert eng.update([DEV]) == 1  # only the open interval [900, 1800) is written
    assert conn.execute("SELECT readings FROM interval_energy WHERE start = ? AND device_id = ?",
                        (T0, DEV)).fetchone() == (99,)
    assert {r[0] for r in conn.execute("SELECT readings FROM interval_energy WHERE device_id = ?", (DEV2,))} == {77}
    assert rows(conn)[900][0] == 200 - 150


def test_a_late_reading_below_the_folded_seq_triggers_a_full_recompute(tmp_path):
    conn = db(tmp_path)
    eng = IntervalEngine(conn)
    # 0 @100, 100 @1000: floor(100 * 800 / 900) = 88 | 12.
    put(conn, DEV, 1, T0 + 100, 0)
    put(conn, DEV, 3, T0 + 1000, 100)
    eng.update([DEV])
    assert rows(conn) == {0: (88, 0, 0, 88, 1, True), 900: (12, 0, 0, 12, 1, True)}
    # seq 2 arrives late: 50 @150. [0,900): 50 + floor(50 * 750 / 850) = 94 | 6.
    put(conn, DEV, 2, T0 + 150, 50)
    eng.update([DEV])
    assert rows(conn) == {0: (94, 0, 0, 94, 2, True), 900: (6, 0, 0, 6, 1, True)}
    put(conn, DEV, 4, T0 + 1100, 0)             # a reset, flagged by nobody
    put(conn, DEV, 5, T0 + 1200, 7)
    eng.update_stored([(DEV, 4), (DEV, 5)])
    assert eng.counter_resets(DEV) == [(4, "import_wh", 100, 0, False)]
    assert sum(r[0] for r in rows(conn).values()) == 107


# -- incremental == full, and exact totals, over random histories --------------------------------

reading_st = st.tuples(
    st.integers(0, 400),                                 # seconds since previous reading
    st.integers(0, 60), st.integers(0, 40), st.integers(0, 30),   # increments
    st.sampled_from([0, 0, 0, 0, METER_ERR, INV_ERR, UNSYNCED, BACKWARDS]),
)


def _history(spec: list[tuple[int, int, int, int, int]]) -> list[tuple[int, int, int, int, int, int]]:
    t, imp, exp, pv, out = T0 + 123, 1000, 500, 100, []
    for seq, (dt, di, de, dp, fl) in enumerate(spec, start=1):
        t += dt
        imp, exp, pv = imp + di, exp + de, pv + dp
        if fl == BACKWARDS:
            imp = di  # the meter was swapped: a new, lower counter
        out.append((seq, 0 if fl == UNSYNCED else t, imp, exp, pv, fl))
    return out


def _table(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT * FROM interval_energy ORDER BY device_id, start").fetchall()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.lists(reading_st, min_size=1, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=6),
       late=st.lists(st.integers(1, 40), max_size=3))
def test_incremental_updates_equal_a_full_recompute(tmp_path_factory, spec, cuts, late):
    tmp = tmp_path_factory.mktemp("inc")
    hist = _history(spec)
    a, b = db(tmp, "a.db"), db(tmp, "b.db")
    inc = IntervalEngine(a)
    held = {s for s in late if s <= len(hist)}           # arrive out of order, at the end
    bounds = sorted({0, len(hist), *[c for c in cuts if c <= len(hist)]})
    for lo, hi in zip(bounds, bounds[1:]):
        batch = [r for r in hist[lo:hi] if r[0] not in held]
        for r in batch:
            put(a, DEV, *r)
        inc.update_stored([(DEV, r[0]) for r in batch]) if lo % 2 else inc.update([DEV])
    for r in hist:
        if r[0] in held:
            put(a, DEV, *r)
    inc.update_stored([(DEV, s) for s in held])
    for r in hist:
        put(b, DEV, *r)
    full = IntervalEngine(b)
    full.recompute()
    assert _table(a) == _table(b)
    assert inc.counter_resets(DEV) == full.counter_resets(DEV)
    # Exactness: per counter, the intervals sum to the chain's non-negative steps up to its
    # last timed, trusted reading.
    for col, skip in ((2, METER_ERR), (4, INV_ERR)):
        chain = [r for r in hist if not r[5] & skip]
        timed = [i for i, r in enumerate(chain) if r[1] != 0]
        want = 0
        if timed:
            upto = chain[: timed[-1] + 1]
            want = sum(max(0, y[col] - x[col]) for x, y in zip(upto, upto[1:]))
        got = sum(r[0 if col == 2 else 2] for r in rows(b).values())
        assert got == want
    assert all(v >= 0 for r in rows(b).values() for v in r[:3])


# -- household view and the complex's balance ----------------------------------------------------

def _register(reg: DeviceRegistry, dev: bytes, grid: str, household: str | None) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    xy = key.x.to_bytes(32, "big") + key.y.to_bytes(32, "big")
    code = "claim-" + dev.hex()
    reg.add({"device_id": dev.hex(), "public_key": xy.hex(), "claim_hash": hashlib.sha256(code.encode()).hexdigest(),
             "profile": "sdm630", "grid": grid})
    if household:
        reg.pair(dev, household, code)


def test_household_view_and_grid_balance(tmp_path):
    conn = db(tmp_path)
    dev3 = bytes.fromhex("0123000000000003ee")
    eng = IntervalEngine(conn)
    with pytest.raises(RegistryMissing):
        eng.balance("g1")
    reg = DeviceRegistry(conn)
    _register(reg, DEV, "g1", "101-1204")
    _register(reg, DEV2, "g1", None)          # not paired yet: in the balance, in no household
    _register(reg, dev3, "g2", "201-0101")
    # DEV: imports 30 in [0,900); DEV2: exports 40, PV 50, one interval estimated (gap 800 s).
    put(conn, DEV, 1, T0 + 100, 0)
    put(conn, DEV, 2, T0 + 160, 30)
    put(conn, DEV2, 1, T0 + 0, 0, 0, 0)
    put(conn, DEV2, 2, T0 + 800, 0, 40, 50)
    put(conn, dev3, 1, T0 + 10, 0)
    put(conn, dev3, 2, T0 + 20, 999)
    eng.update([DEV, DEV2, dev3])
    (b,) = eng.balance("g1")
    assert (b.start, b.import_wh, b.export_wh, b.pv_wh, b.net_wh) == (T0, 30, 40, 50, -10)
    assert (b.devices, b.reporting, b.estimated) == (2, 2, 1)
    (h,) = eng.household_intervals("101-1204")
    assert (h.import_wh, h.export_wh, h.readings) == (30, 0, 2)
    assert eng.households("g1") == ["101-1204"]
    assert eng.balance("g3") == []
