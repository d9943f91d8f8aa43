"""The virtual rig: the physics moves the counters like real ones, and the
Eastron simulator enforces the meter's per-request limit and its baud rate."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from hil.modbus_rig import RigHousehold, VirtualRig, start_eastron_rtu
from hil.physics import Household, ManualClock, load_w, pv_power_w

NOON_KST = datetime(2025, 6, 15, 12, 0, tzinfo=timezone(timedelta(hours=9))).timestamp()
MIDNIGHT_KST = NOON_KST + 12 * 3600


def test_pv_is_zero_at_night_and_peaks_around_noon_scaled_by_kwp():
    assert pv_power_w(MIDNIGHT_KST, 5, seed=1) == 0
    noon = pv_power_w(NOON_KST, 5, seed=1)
    assert 2000 < noon <= 4000
    assert pv_power_w(NOON_KST, 10, seed=1) == pytest.approx(2 * noon)
    assert pv_power_w(NOON_KST - 5 * 3600, 5, seed=1) < noon      # 07:00, whatever the clouds


def test_load_has_an_evening_peak_and_is_deterministic_per_seed():
    evening = NOON_KST + 7.5 * 3600
    assert load_w(evening, 300, seed=2) > 2 * load_w(NOON_KST - 9 * 3600, 300, seed=2)
    assert load_w(evening, 300, seed=2) == load_w(evening, 300, seed=2)


def test_counters_import_at_night_export_at_noon_and_never_go_backwards():
    h = Household("h", kwp=8, base_load_w=300, seed=4)
    h.advance(MIDNIGHT_KST)
    s0 = h.snapshot()
    h.advance(MIDNIGHT_KST + 3600)
    s1 = h.snapshot()
    assert s1["import_wh"] > s0["import_wh"] and s1["export_wh"] == s0["export_wh"]
    assert s1["pv_wh"] == s0["pv_wh"]
    h2 = Household("h2", kwp=8, base_load_w=300, seed=4)
    h2.advance(NOON_KST)
    a = h2.snapshot()
    h2.advance(NOON_KST + 3600)
    b = h2.snapshot()
    assert b["export_wh"] - a["export_wh"] > 1000 and b["pv_wh"] - a["pv_wh"] > 2000
    # energy balance: PV + import = load + export over the hour (integrated load)
    h2.advance(NOON_KST)                      # earlier time: ignored, nothing goes backwards
    assert h2.snapshot()["import_wh"] == b["import_wh"]


def test_eastron_sim_refuses_requests_above_its_limit_with_exception_3():
    from meter_driver.errors import ModbusExceptionResponse
    from meter_driver.meter import open_rtu
    import machine

    port, stop, ep = start_eastron_rtu(Household("h", seed=1), "sdm630", unit=1, clock=ManualClock(NOON_KST),
                                       pace=False)
    try:
        machine.attach_uart(11, port)
        bus = open_rtu(11, "sdm630")
        assert len(bus.read_input(1, 0, 60)) == 60
        with pytest.raises(ModbusExceptionResponse) as e:
            bus.read_input(1, 0, 62)
        assert e.value.code == 3 and ep.meter_sim.refused == 1
        with pytest.raises(ModbusExceptionResponse) as e:
            bus.read_holding(1, 0x48, 2)          # energy is an input register only
        assert e.value.code == 2
        bus.uart.deinit()
    finally:
        stop()


def test_rig_serves_meter_and_inverter_per_household_and_stops_cleanly():
    clock = ManualClock(NOON_KST)
    hs = [Household("pv", kwp=5, seed=1), RigHousehold(Household("nopv", kwp=0, seed=2), meter="sdm120", unit=3),
          RigHousehold(Household("ss", kwp=3, seed=3), meter="sunspec")]
    with VirtualRig(hs, clock=clock) as rig:
        assert rig.endpoints["pv"].meter_port.startswith("/dev/pts/")
        assert rig.endpoints["pv"].inverter_tcp[1] > 0
        assert rig.endpoints["nopv"].inverter_tcp is None and rig.endpoints["nopv"].meter_unit == 3
        assert rig.endpoints["ss"].meter_tcp is not None and rig.endpoints["ss"].meter_port is None
    assert rig._loop is None
