"""``metanoia bench chain --backend evm`` runs end to end on anvil and ends with the fixed JSON shape
(a short run, EVM part only: the bundled figure is bench/chain.py's own, exercised by its bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.chain_client.evm_codec import GAS

ROOT = Path(__file__).resolve().parents[2]


def test_bench_chain_evm_reports_fills_final_per_second_with_its_gas_bound() -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "chain", "--backend", "evm", "--skip-bundled",
                           "--evm-seconds", "4", "--evm-rate", "150", "--evm-takers", "30"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"bench", "value", "unit", "goal", "bound", "ratio", "backend", "block_gas_limit"} <= out.keys()
    assert (out["bench"], out["backend"], out["unit"], out["block_gas_limit"]) == ("chain", "evm", "fills/s",
                                                                                   30_000_000)
    assert out["value"] > 0 and out["final"] > 0 and out["reverted"] == 0 and out["submit_errors"] == {}
    assert 21_000 < out["gas_per_fill"] <= GAS["fill"]
    assert out["bound"] == round(30_000_000 / out["gas_per_fill"], 1)
    assert out["fills_per_block_max"] <= out["bound"] and out["ratio"] == round(out["value"] / out["bound"], 3)
