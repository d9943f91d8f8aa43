"""`metanoia bench ingest` runs end to end at a tiny size and reports its JSON shape
(the figure itself is measured by the bench, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ingest_small_run_stores_everything_once_and_reports_the_fields():
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "ingest", "--devices", "4", "--readings", "200",
                          "--per-message", "8"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "ingest" and result["unit"] == "readings/s" and result["goal"] == 10000
    assert result["valid"] and result["intact"] and result["duplicates"] == 0 and result["rejected"] == 0
    assert result["stored_total"] == 200 and result["readings"] == 196
    assert result["value"] > 0 and result["bound"] > 0 and result["cores"] >= 1
    assert abs(result["ratio"] - result["value"] / result["bound"]) < 0.01
    assert 0 < result["p50_ms"] <= result["p99_ms"]
