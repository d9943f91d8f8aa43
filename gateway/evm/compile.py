"""Compile contracts/*.sol with the pinned solcjs from node_modules (npm ``solc``), no download.

The artefacts (ABI + creation bytecode per contract) are cached as one JSON file named by a hash of
the sources, the compiler settings and the solc version, under ``$METANOIA_EVM_BUILD`` or
``.venv/evm-build`` (never committed). ``python -m gateway.evm.compile`` compiles and prints the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
NODE_MODULES = ROOT / "node_modules"
SOURCES = ("NoiaToken.sol", "Exchange.sol", "CheckpointRegistry.sol",
           "test/ReentrantToken.sol")  # the last one for tests only
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}

# Standard JSON in on stdin, standard JSON out on stdout: solcjs's own API, no CLI quirks.
_NODE_SCRIPT = """
const solc = require(process.argv[1]);
let input = '';
process.stdin.on('data', d => input += d);
process.stdin.on('end', () => {
  process.stdout.write(JSON.stringify({version: solc.version(), output: JSON.parse(solc.compile(input))}));
});
"""


class CompileError(RuntimeError):
    pass


def solc_version() -> str:
    pkg = NODE_MODULES / "solc" / "package.json"
    if not pkg.exists():
        raise CompileError(f"{pkg} missing: run `npm install` (./dev setup)")
    return str(json.loads(pkg.read_text())["version"])


def build_dir() -> Path:
    env = os.environ.get("METANOIA_EVM_BUILD")
    return Path(env) if env else ROOT / ".venv" / "evm-build"


def _standard_input(sources: dict[str, str]) -> dict[str, Any]:
    return {"language": "Solidity", "sources": {n: {"content": c} for n, c in sources.items()},
            "settings": SETTINGS}


def compile_contracts(force: bool = False) -> dict[str, dict[str, Any]]:
    """``{contract name: {"abi": [...], "bytecode": "0x...", "deployedBytecode": "0x..."}}``."""
    sources = {n: (CONTRACTS / n).read_text() for n in SOURCES}
    version = solc_version()
    key = hashlib.sha256(json.dumps([version, SETTINGS, sorted(sources.items())]).encode()).hexdigest()[:16]
    out_path = build_dir() / f"contracts-{key}.json"
    if out_path.exists() and not force:
        return json.loads(out_path.read_text())  # type: ignore[no-any-return]
    proc = subprocess.run(["node", "-e", _NODE_SCRIPT, str(NODE_MODULES / "solc")],
                          input=json.dumps(_standard_input(sources)), capture_output=True, text=True,
                          check=False, timeout=300)
    if proc.returncode != 0:
        raise CompileError(f"solcjs failed: {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout)
    errors = [e for e in result["output"].get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    artefacts: dict[str, dict[str, Any]] = {}
    for unit in result["output"]["contracts"].values():
        for name, c in unit.items():
            artefacts[name] = {"abi": c["abi"], "bytecode": "0x" + c["evm"]["bytecode"]["object"],
                               "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
                               "solc": result["version"]}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".{os.getpid()}.tmp")   # one per process: two workers never share one
    tmp.write_text(json.dumps(artefacts))
    tmp.replace(out_path)  # atomic: parallel test workers never read half a file
    return artefacts


def main() -> int:
    art = compile_contracts(force="--force" in sys.argv)
    for name, c in sorted(art.items()):
        print(f"{name}: {(len(c['deployedBytecode']) - 2) // 2} bytes deployed ({c['solc']})")
    print(build_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
