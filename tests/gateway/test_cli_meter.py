"""`metanoia meter read` end to end: a subprocess reading the virtual rig through
the firmware driver, its output with units, its JSON line and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hil.modbus_rig import Endpoints, RigHousehold, VirtualRig
from hil.physics import Household, ManualClock
from meter_driver.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
NOON_KST = datetime(2025, 6, 15, 12, 0, tzinfo=timezone(timedelta(hours=9))).timestamp()


@pytest.fixture(scope="module")
def rig() -> Iterator[dict[str, Endpoints]]:
    with VirtualRig([RigHousehold(Household("h1", kwp=5, seed=3), meter="sdm630", pace=False),
                     RigHousehold(Household("h2", kwp=0, seed=4), meter="sunspec")],
                    clock=ManualClock(NOON_KST)) as r:
        yield r.endpoints


def metanoia(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "meter", "read", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_reads_sdm630_over_serial_and_prints_values_with_units(rig):
    ep = rig["h1"]
    p = metanoia("--profile", "sdm630", "--serial", ep.meter_port, "--json")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(line.split()[0] == "import_wh" and line.endswith(" Wh") for line in lines[:-1] if line.strip())
    out = json.loads(lines[-1])
    keys = {pt["key"] for pt in load_profile("sdm630")["points"]}
    assert keys <= set(out["values"]) and out["values"]["backwards"] is False
    snap = ep.meter_sim.household.snapshot()
    assert abs(out["values"]["import_wh"] - snap["import_wh"]) <= 1
    assert out["units"]["power_w"] == "W" and out["counters"]["requests"] == 3


def test_reads_sunspec_inverter_and_meter_over_tcp(rig):
    host, port = rig["h1"].inverter_tcp
    p = metanoia("--profile", "sunspec", "--tcp", f"{host}:{port}", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["values"]["pv_wh"] > 0 and out["values"]["pv_power_w"] > 0
    assert out["info"]["models"] == [1, 103]
    host, port = rig["h2"].meter_tcp
    out = json.loads(metanoia("--profile", "sunspec", "--tcp", f"{host}:{port}", "--json").stdout.splitlines()[-1])
    assert out["values"]["import_wh"] > 0 and out["info"]["models"] == [1, 203]


def test_silent_unit_exits_3_with_a_timeout_message(rig):
    p = metanoia("--profile", "sdm630", "--serial", rig["h1"].meter_port, "--unit", "9", "--timeout-ms", "100")
    assert p.returncode == 3 and "timeout" in p.stderr


def test_exception_response_exits_4(rig, tmp_path):
    prof = load_profile("sdm630")
    prof["bus"]["max_regs"] = 80                       # more than the meter accepts
    f = tmp_path / "greedy.json"
    f.write_text(json.dumps(prof))
    p = metanoia("--profile", str(f), "--serial", rig["h1"].meter_port)
    assert p.returncode == 4 and "ILLEGAL DATA VALUE" in p.stderr


def test_crc_errors_exit_5(rig):
    ep = rig["h1"]
    ep.link.corrupt_frames = 100
    try:
        p = metanoia("--profile", "sdm630", "--serial", ep.meter_port, "--timeout-ms", "200")
    finally:
        ep.link.corrupt_frames = 0
    assert p.returncode == 5 and "CRC" in p.stderr


def test_bad_arguments_exit_2():
    assert metanoia("--profile", "nope", "--tcp", "127.0.0.1:1").returncode == 2
    assert metanoia("--profile", "sdm630", "--tcp", "no-port").returncode == 2
