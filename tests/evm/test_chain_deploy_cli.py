"""``metanoia chain deploy`` on a real anvil: the record it writes is what the EVM backend attaches to."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.chain_client.evm import EvmBackend
from gateway.cli import main
from gateway.cli.validator import write_key
from gateway.evm.anvil import Anvil
from gateway.evm.deploy import read_record
from gateway.validator.crypto import address_of, private_key, to_checksum


def test_chain_deploy_writes_a_record_the_backend_attaches_to(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = b"\x6a" * 32
    keyfile = tmp_path / "deployer.key"
    write_key(keyfile, secret)
    deployer = address_of(private_key(secret))
    authority = "0x" + "42" * 20
    out = tmp_path / "dep.json"
    with Anvil(chain_id=4242, auto_impersonate=False) as node:
        assert main(["chain", "deploy", "--rpc", node.url, "--key", str(keyfile), "--authority", authority,
                     "--out", str(out), "--json"]) == 1                      # no ether for gas yet
        assert not out.exists()
        node.rpc("anvil_setBalance", [to_checksum(deployer), hex(10**20)])
        capsys.readouterr()
        assert main(["chain", "deploy", "--rpc", node.url, "--key", str(keyfile), "--authority", authority,
                     "--supply", "5000", "--interval-seconds", "300", "--out", str(out), "--json"]) == 0
        last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        dep = read_record(out)
        assert (dep.chain_id, dep.interval_seconds, dep.complex_authority) == (4242, 300, bytes.fromhex("42" * 20))
        assert last["exchange"] == to_checksum(dep.exchange) and last["token"] == to_checksum(dep.token)

        async def check() -> None:
            b = EvmBackend(node.url, dep)
            await b.attach()
            assert await b.balance(deployer) == 5000
            await b.aclose()

        asyncio.run(check())
        for bad in (["--authority", "0x1234"], ["--supply", "0"], ["--key", str(tmp_path / "missing.key")]):
            args = ["chain", "deploy", "--rpc", node.url, "--key", str(keyfile), "--authority", authority] + bad
            assert main(args) == 2, bad
    assert main(["chain", "deploy", "--rpc", "http://127.0.0.1:9", "--key", str(keyfile), "--authority", authority,
                 "--out", str(tmp_path / "x.json")]) == 1                     # nothing listening
