"""SunSpec: discovery at each base address, the model chain, scale factors,
"not implemented" values, and the profile checked against pysunspec2's models."""

from __future__ import annotations

import json
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sunspec2

from hil.modbus_rig import start_sunspec_tcp
from hil.physics import Household, ManualClock
from meter_driver.errors import ModbusExceptionResponse, SunSpecError
from meter_driver.meter import Meter, open_tcp
from meter_driver.profile import load_profile
from meter_driver.sunspec import SunSpecReader, decode_point

NOON_KST = datetime(2025, 6, 15, 12, 0, tzinfo=timezone(timedelta(hours=9))).timestamp()


@pytest.mark.parametrize("base", [40000, 0, 50000])
def test_discovers_suns_at_each_base_and_walks_the_chain(base):
    h = Household("h", kwp=5, seed=9)
    (host, port), stop, sim = start_sunspec_tcp(h, base=base, clock=ManualClock(NOON_KST), with_meter=True)
    try:
        meter = Meter(open_tcp(host, "sunspec", port=port), "sunspec")
        info = meter.info()
        assert info["sunspec_base"] == base and info["models"] == [1, 103, 203]
        assert info["manufacturer"] == "Metanoia Sim" and info["serial"] == "SIM000009"
        r = meter.read()
        snap = h.snapshot()
        assert r["pv_wh"] == round(snap["pv_wh"]) and r["pv_power_w"] == round(snap["pv_w"]) > 0
        assert r["import_wh"] == round(snap["import_wh"]) and r["export_wh"] == round(snap["export_wh"])
        assert r["power_w"] == round(snap["grid_w"])
        assert r["pv_frequency_hz"] == pytest.approx(60.0, abs=0.05)
        meter.bus.close()
    finally:
        stop()


def test_scale_factors_are_applied():
    h = Household("h", kwp=5, seed=9)
    clock = ManualClock(NOON_KST)
    (host, port), stop, sim = start_sunspec_tcp(h, clock=clock, scale={"WH_SF": 2, "W_SF": 1, "V_SF": -2})
    try:
        meter = Meter(open_tcp(host, "sunspec", port=port), "sunspec")
        r = meter.read()
        snap = h.snapshot()
        assert r["pv_wh"] % 100 == 0 and abs(r["pv_wh"] - snap["pv_wh"]) <= 50
        assert r["pv_power_w"] % 10 == 0 and abs(r["pv_power_w"] - snap["pv_w"]) <= 5
        assert r["pv_voltage_v"] == pytest.approx(230, abs=3)
        clock.advance(1800)
        r2 = meter.read()
        assert r2["pv_wh"] > r["pv_wh"] and not r2["backwards"]
        meter.bus.close()
    finally:
        stop()


def test_not_implemented_points_read_as_none():
    (host, port), stop, sim = start_sunspec_tcp(Household("h", kwp=5, seed=9), clock=ManualClock(NOON_KST),
                                                with_meter=True)
    try:
        meter = Meter(open_tcp(host, "sunspec", port=port), "sunspec")
        r = meter.read()
        assert r["pv_temp_c"] is None                    # TmpCab 0x8000 with Tmp_SF 0x8000
        assert r["power_l2_w"] is None and r["power_l3_w"] is None
        assert meter.info()["options"] is None           # empty string
        assert meter.counters()["not_implemented"] >= 4
        meter.bus.close()
    finally:
        stop()


class RegisterBus:
    """An in-memory Modbus slave for reader unit tests: address -> value, unmapped = exception 2."""

    def __init__(self, regs: dict[int, int], max_regs: int = 125) -> None:
        self.regs = regs
        self.max_regs = max_regs
        self.reads: list[tuple[int, int]] = []
        self.stats: dict[str, int] = {}

    def read_raw(self, unit, fc, address, count):
        self.reads.append((address, count))
        assert count <= self.max_regs
        try:
            return memoryview(struct.pack(f">{count}H", *(self.regs[a] for a in range(address, address + count))))
        except KeyError:
            raise ModbusExceptionResponse(2, fc) from None


def image(base: int, models: list[tuple[int, list[int]]], end: bool = True) -> dict[int, int]:
    regs = [0x5375, 0x6E53]
    for mid, body in models:
        regs += [mid, len(body)] + body
    if end:
        regs += [0xFFFF, 0]
    return {base + i: v for i, v in enumerate(regs)}


def inverter_body(**points: int) -> list[int]:
    body = [0xFFFF] * 50
    for name, off in (("A_SF", 4), ("V_SF", 11), ("W_SF", 13), ("Hz_SF", 15), ("WH_SF", 24),
                      ("DCW_SF", 30), ("Tmp_SF", 35)):
        body[off] = 0x8000
    body[22] = body[23] = 0
    offsets = {"W": 12, "W_SF": 13, "WH_hi": 22, "WH_lo": 23, "WH_SF": 24, "Hz": 14, "Hz_SF": 15}
    for name, value in points.items():
        body[offsets[name]] = value & 0xFFFF
    return body


def test_scale_factor_arithmetic_and_sentinels_with_an_in_memory_device():
    body = inverter_body(W=-1234, W_SF=-1, WH_hi=0x0001, WH_lo=0x0002, WH_SF=3, Hz=5999, Hz_SF=-2)
    bus = RegisterBus(image(40000, [(1, [0] * 66), (103, body)]))
    out = SunSpecReader(bus, load_profile("sunspec")).read({})
    assert out["pv_power_w"] == -123 and out["pv_wh"] == 0x00010002 * 1000
    assert out["pv_frequency_hz"] == 59.99
    assert out["pv_current_a"] is None and out["pv_state"] is None and out["pv_temp_c"] is None


def test_scale_factor_out_of_range_or_missing_makes_the_value_none():
    body = inverter_body(W=100, W_SF=11, WH_hi=0, WH_lo=5, WH_SF=0x8000)
    out = SunSpecReader(RegisterBus(image(0, [(103, body)])), load_profile("sunspec")).read({})
    assert out["pv_power_w"] is None and out["pv_wh"] is None


@pytest.mark.parametrize("ptype,raw,expected", [
    ("int16", b"\x80\x00", None), ("int16", b"\xff\xfe", -2), ("uint16", b"\xff\xff", None),
    ("enum16", b"\xff\xff", None), ("sunssf", b"\x80\x00", None), ("sunssf", b"\xff\xfe", -2),
    ("int32", b"\x80\x00\x00\x00", None), ("uint32", b"\xff\xff\xff\xff", None),
    ("bitfield32", b"\xff\xff\xff\xff", None), ("acc32", b"\x00\x00\x00\x00", 0),
    ("acc32", b"\xff\xff\xff\xff", 0xFFFFFFFF), ("float32", b"\x7f\xc0\x00\x00", None),
])
def test_not_implemented_sentinels_per_type(ptype, raw, expected):
    assert decode_point(raw, 0, ptype, len(raw) // 2) == expected


def test_no_suns_marker_anywhere_is_a_sunspec_error():
    bus = RegisterBus({40000 + i: 0 for i in range(4)})
    with pytest.raises(SunSpecError):
        SunSpecReader(bus, load_profile("sunspec")).discover()


def test_chain_without_end_marker_is_bounded():
    # model 64000 with length 0 repeated forever: a hostile or broken map
    regs = {40000: 0x5375, 40001: 0x6E53}
    regs.update({a: (64000 if a % 2 == 0 else 0) for a in range(40002, 40002 + 200)})
    with pytest.raises(SunSpecError):
        SunSpecReader(RegisterBus(regs), load_profile("sunspec")).discover()


def test_chain_ending_in_an_unmapped_address_is_accepted():
    bus = RegisterBus(image(50000, [(103, inverter_body(W=5, W_SF=0))], end=False))
    r = SunSpecReader(bus, load_profile("sunspec"))
    assert r.discover() == [(103, 50004, 50)] and r.read({})["pv_power_w"] == 5


def test_map_moving_after_discovery_triggers_rediscovery():
    body = inverter_body(W=5, W_SF=0)
    bus = RegisterBus(image(40000, [(103, body)]))
    r = SunSpecReader(bus, load_profile("sunspec"))
    assert r.read({})["pv_power_w"] == 5
    bus.regs = image(0, [(1, [0] * 66), (103, inverter_body(W=7, W_SF=0))])
    with pytest.raises(ModbusExceptionResponse):
        r.read({})
    assert r.read({})["pv_power_w"] == 7 and r.base == 0 and r.stats["discoveries"] == 2


def test_profile_points_match_pysunspec2_model_definitions():
    models_dir = Path(sunspec2.__file__).parent / "models" / "json"
    for spec in load_profile("sunspec")["models"]:
        for mid in spec["ids"]:
            group = json.loads((models_dir / f"model_{mid}.json").read_text())["group"]
            layout, off = {}, 0
            for p in group["points"]:
                layout[p["name"]] = (off - 2, p["type"], p.get("sf"))
                off += p["size"]
            assert off - 2 >= spec["length"], mid
            for p in spec["points"]:
                offset, ptype, sf = layout[p["name"]]
                assert (p["offset"], p["type"], p.get("sf")) == (offset, ptype, sf), (mid, p["name"])
