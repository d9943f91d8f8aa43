"""The registry's ABI as data (gateway/anchor/registry.py) equals the compiled contract's, so it cannot drift."""

from __future__ import annotations

from typing import Any

import gateway.evm.compile as evm_compile
from gateway.anchor.registry import FUNCTIONS, SUBMITTED_EVENT, selector


def _canonical(inp: dict[str, Any]) -> str:
    t = inp["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_canonical(c) for c in inp["components"]) + ")" + t[len("tuple"):]
    return t


def test_function_and_event_signatures_match_the_compiled_abi() -> None:
    abi = evm_compile.compile_contracts()["CheckpointRegistry"]["abi"]
    funcs = {e["name"]: e for e in abi if e["type"] == "function"}
    for name, (sig, returns) in FUNCTIONS.items():
        f = funcs[name]
        assert sig == f"{name}({','.join(_canonical(i) for i in f['inputs'])})"
        assert returns == tuple(_canonical(o) for o in f["outputs"])
        assert len(selector(name)) == 4
    (ev,) = [e for e in abi if e["type"] == "event" and e["name"] == "CheckpointSubmitted"]
    assert SUBMITTED_EVENT == f"CheckpointSubmitted({','.join(_canonical(i) for i in ev['inputs'])})"
    assert ev["inputs"][0]["name"] == "height" and ev["inputs"][0]["indexed"]   # the verifier reads topic 1
