"""``metanoia bench quote`` on a tiny run: the JSON line's shape, and every answer verified (no time budget)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_short_bench_quote_run_reports_the_fixed_shape_and_verifies_every_answer() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "quote", "--seconds", "2", "--rate", "100"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    last = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("bench", "value", "unit", "goal", "bound", "ratio", "p50_ms", "rps", "errors", "requests"):
        assert key in last, key
    assert (last["bench"], last["unit"], last["goal"]) == ("quote", "ms", 10.0)
    assert last["requests"] == 200 and last["errors"] == 0 and last["verified"] == 200 and last["valid"] is True
    assert last["value"] > 0 and last["bound"] > 0 and abs(last["ratio"] - last["value"] / last["bound"]) < 0.1 + 0.01 * last["ratio"]
    assert last["p50_ms"] <= last["value"] <= last["max_ms"] and last["rps"] > 50
    assert last["peer_service_p99_ms"] is not None  # the peer process reported its own service time on exit
