"""``metanoia chain deploy-registry``: the registry for the side chain of a genesis file, read back from the chain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.anchor.evm import EvmRpc
from gateway.anchor.registry import Registry
from gateway.cli import main as cli_main
from gateway.cli.validator import write_key
from gateway.validator.crypto import parse_address

from .rig import DEPLOYER, AnchorRig


def test_deploy_registry_from_the_genesis(rig: AnchorRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "deployer.key"
    write_key(key, DEPLOYER.secret)
    base = ["chain", "deploy-registry", "--main-rpc", rig.anvil.url, "--key", str(key)]
    assert cli_main(base + ["--genesis", str(rig.tmp / "genesis.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["genesis_hash"] == "0x" + rig.genesis.hash.hex() and out["chain_id"] == rig.anvil.chain_id
    addr = parse_address(out["registry"])
    assert addr != rig.registry and [parse_address(a) for a in out["authorities"]] == list(rig.genesis.authorities)

    async def read() -> tuple[bytes, list[bytes], int]:
        evm = EvmRpc(rig.anvil.url)
        try:
            reg = Registry(evm, addr)
            return await reg.genesis_hash(), await reg.authorities(), (await reg.latest()).height
        finally:
            await evm.aclose()
    assert asyncio.run(read()) == (rig.genesis.hash, list(rig.genesis.authorities), 0)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli_main(base + ["--genesis", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["chain", "deploy-registry", "--main-rpc", "http://127.0.0.1:9/", "--key", str(key),
                     "--genesis", str(rig.tmp / "genesis.json")]) == 1
    assert "main_unavailable" in capsys.readouterr().err
