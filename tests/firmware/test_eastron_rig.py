"""The Eastron reader through the real RTU stack: firmware ModbusRTU -> machine.UART shim
-> pyserial -> pty pair -> pymodbus SDM630/SDM120 simulator fed by the physics model."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta, timezone

import machine
import pytest

from hil.modbus_rig import start_eastron_rtu
from hil.physics import Household, ManualClock
from meter_driver.errors import ModbusCRCError, ModbusExceptionResponse, ModbusTimeout
from meter_driver.meter import Meter, open_rtu
from meter_driver.profile import load_profile

NOON_KST = datetime(2025, 6, 15, 12, 0, tzinfo=timezone(timedelta(hours=9))).timestamp()
_uart_ids = itertools.count(20)


@pytest.fixture
def sdm630():
    clock = ManualClock(NOON_KST)
    h = Household("h", kwp=6, base_load_w=300, seed=5)
    port, stop, ep = start_eastron_rtu(h, "sdm630", unit=1, clock=clock, pace=False)
    uid = next(_uart_ids)
    machine.attach_uart(uid, port)
    bus = open_rtu(uid, "sdm630", timeout_ms=150)
    yield Meter(bus, "sdm630"), ep, clock, h
    bus.uart.deinit()
    stop()


def test_reads_every_value_split_at_the_meters_limit(sdm630):
    meter, ep, clock, h = sdm630
    r = meter.read()
    snap = h.snapshot()
    assert abs(r["import_wh"] - snap["import_wh"]) <= 1 and abs(r["export_wh"] - snap["export_wh"]) <= 1
    assert r["power_w"] == round(snap["grid_w"]) and r["power_w"] < 0          # noon: exporting
    assert r["total_wh"] == pytest.approx(r["import_wh"] + r["export_wh"], abs=2)
    assert 225 < r["voltage_l1_v"] < 235 and 49.9 < r["frequency_hz"] < 50.1
    assert ep.meter_sim.requests == [(4, 0, 54), (4, 62, 14), (4, 342, 2)]
    assert all(count <= 60 for _fc, _a, count in ep.meter_sim.requests) and ep.meter_sim.refused == 0


def test_unsplit_request_is_refused_by_the_simulated_meter(sdm630):
    meter, ep, _clock, _h = sdm630
    with pytest.raises(ModbusExceptionResponse) as e:
        meter.bus.read_raw(1, 4, 0, 76)
    assert e.value.code == 3 and ep.meter_sim.refused == 1


def test_counters_move_with_the_physics_and_backwards_is_flagged_not_hidden(sdm630):
    meter, ep, clock, h = sdm630
    r0 = meter.read()
    clock.advance(3600)
    r1 = meter.read()
    assert r1["export_wh"] - r0["export_wh"] > 500 and r1["import_wh"] >= r0["import_wh"]
    assert not r0["backwards"] and not r1["backwards"]
    with h._lock:
        h.import_wh -= 5000                     # a meter swapped for one with a lower count
    r2 = meter.read()
    assert r2["backwards"] is True and r2["import_wh"] == pytest.approx(r1["import_wh"] - 5000, abs=2)
    assert meter.counters()["backwards"] == 1


def test_line_faults_are_retried_counted_and_bounded(sdm630):
    meter, ep, _clock, _h = sdm630
    ep.link.corrupt_frames = 1
    meter.read()
    c = meter.counters()
    assert c["crc_errors"] == 1 and c["retries"] == 1
    ep.link.noise = b"\x00\xff\x42"
    meter.read()
    assert meter.counters()["retries"] == 2
    ep.link.drop = True
    t0 = time.monotonic()
    with pytest.raises(ModbusTimeout):
        meter.read()
    assert time.monotonic() - t0 < 1.5
    c = meter.counters()
    assert c["timeouts"] == 3 and c["read_errors"] == 1       # 1 try + 2 retries
    ep.link.drop = False
    ep.link.corrupt_frames = 10
    with pytest.raises(ModbusCRCError):
        meter.read()
    ep.link.corrupt_frames = 0
    assert meter.read()["import_wh"] > 0                        # the loop goes on


def test_sdm120_at_2400_baud_from_its_profile_and_silent_at_the_wrong_baud():
    clock = ManualClock(NOON_KST)
    port, stop, ep = start_eastron_rtu(Household("h", kwp=0, seed=6), "sdm120", unit=2, clock=clock, pace=True)
    try:
        assert load_profile("sdm120")["bus"]["baudrate"] == 2400
        uid = next(_uart_ids)
        machine.attach_uart(uid, port)
        bus = open_rtu(uid, "sdm120")
        assert bus.baudrate == 2400 and bus.silence_us == 14585
        t0 = time.monotonic()
        r = Meter(bus, "sdm120", unit=2).read()
        elapsed = time.monotonic() - t0
        assert r["power_w"] > 0 and r["export_wh"] == 0
        # 3 requests of 8 bytes + answers of 69, 17 and 9 bytes, 10 bits per character
        assert elapsed > (24 + 95) * 10 / 2400
        bus.uart.deinit()
        uid = next(_uart_ids)
        machine.attach_uart(uid, port)
        wrong = open_rtu(uid, "sdm120", baudrate=9600, timeout_ms=200, retries=1)
        with pytest.raises(ModbusTimeout):
            Meter(wrong, "sdm120", unit=2).read()
        assert ep.link.bytes["garbled"] > 0 and wrong.stats["timeouts"] == 2
        wrong.uart.deinit()
    finally:
        stop()
