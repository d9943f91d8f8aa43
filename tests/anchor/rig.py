"""The anchoring rig: 4 real validator processes, anvil as the main chain with the registry, the relayer.

Validators are ``metanoia validator run`` processes (tests/gateway/validator/netkit.py's ``Proc``), the
main chain is anvil with 0.5 s blocks (a submission stays pending for a while: room for kill -9), the
registry is the compiled CheckpointRegistry deployed for this side chain's genesis hash and
authorities, and the relayer is ``metanoia chain anchor`` as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from web3 import Web3

import gateway.evm.compile as evm_compile
from gateway.anchor.deploy import deploy_registry
from gateway.anchor.evm import EvmRpc
from gateway.anchor.registry import Registry
from gateway.chain_client.rpc import JsonRpcClient
from gateway.cli.validator import write_key
from gateway.evm.anvil import Anvil
from gateway.jsonrpc import serve
from gateway.validator.crypto import keccak256, private_key
from gateway.validator.genesis import parse_genesis
from tests.evm.test_contracts import cs, fund
from tests.gateway.validator import kit
from tests.gateway.validator.netkit import Proc, free_ports, genesis_doc

ROOT = Path(__file__).resolve().parents[2]
BT = 0.25                     # side-chain block time (s)
MAIN_CHAIN_ID = 1337
EVERY = 4                     # anchor every 4 final blocks
RELAYER_KEY = private_key(keccak256(b"anchor-relayer"))
DEPLOYER = private_key(keccak256(b"anchor-deployer"))


Rewrite = Callable[[list[Any], Any], Any]    # (params, honest result) -> the lie


@contextlib.asynccontextmanager
async def lying_proxy(url: str, lies: dict[str, Rewrite] | None = None) -> AsyncIterator[str]:
    """A real HTTP JSON-RPC proxy in front of ``url`` that rewrites the results of the methods in ``lies``;
    yields its URL."""
    async with aiohttp.ClientSession() as http:
        async def handle(request: web.Request) -> web.Response:
            req = await request.json()
            async with http.post(url, json=req) as r:
                body = await r.json()
            fn = (lies or {}).get(req.get("method"))
            if fn is not None and "result" in body:
                body["result"] = fn(req.get("params") or [], body["result"])
            return web.json_response(body)

        app = web.Application()
        app.router.add_post("/", handle)
        runner, (host, port) = await serve(app, "127.0.0.1", 0)
        try:
            yield f"http://{host}:{port}/"
        finally:
            await runner.cleanup()


class AnchorRig:
    def __init__(self, tmp: Path, n: int = 4) -> None:
        self.tmp = tmp
        doc = genesis_doc(n, BT)
        self.genesis = parse_genesis(doc)
        gpath = tmp / "genesis.json"
        gpath.write_text(json.dumps(doc))
        ports = free_ports(2 * n)
        p2p = [("127.0.0.1", ports[i]) for i in range(n)]
        self.procs = [Proc(tmp, i, gpath, p2p[i], [p for j, p in enumerate(p2p) if j != i], ports[n + i], BT)
                      for i in range(n)]
        self.urls = [p.url for p in self.procs]
        self.anvil = Anvil(chain_id=MAIN_CHAIN_ID, block_time=0.5)
        self.relayer: subprocess.Popen[bytes] | None = None
        self.relayer_key = tmp / "relayer.key"
        write_key(self.relayer_key, RELAYER_KEY.secret)
        self.journal = tmp / "anchor.db"
        self.nonces = {u: 0 for u in kit.USERS}
        self.txs: list[bytes] = []          # hashes of transfers accepted by the chain

    # ---- lifecycle ----

    def start(self) -> AnchorRig:
        for p in self.procs:
            p.start()
        self.anvil.start()
        fund(self.anvil, DEPLOYER, RELAYER_KEY)
        art = evm_compile.compile_contracts()
        self.w3 = Web3(Web3.HTTPProvider(self.anvil.url))

        async def deploy() -> bytes:
            evm = EvmRpc(self.anvil.url)
            try:
                return (await deploy_registry(evm, DEPLOYER.secret, self.genesis)).address
            finally:
                await evm.aclose()
        self.registry = asyncio.run(deploy())
        self.contract = self.w3.eth.contract(address=Web3.to_checksum_address(cs(self.registry)),
                                             abi=art["CheckpointRegistry"]["abi"])
        asyncio.run(self._wait_up())
        return self

    async def _wait_up(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        for i, url in enumerate(self.urls):
            async with JsonRpcClient(url, timeout=2) as c:
                while True:
                    try:
                        if await c.call("chain_finalizedNumber") >= 1:
                            break
                    except Exception:
                        pass
                    if time.monotonic() > end:
                        raise AssertionError(f"validator {i} not up: {(self.tmp / f'node{i}.log').read_text()[-2000:]}")
                    await asyncio.sleep(0.1)

    def close(self) -> None:
        self.stop_relayer()
        for p in self.procs:
            p.stop()
        self.anvil.stop()

    # ---- the relayer process ----

    def relayer_args(self, every: int = EVERY) -> list[str]:
        # validator 3 first: the side-chain record starts on it, and the test that stops it sees the move
        return [sys.executable, "-m", "gateway.cli", "chain", "anchor", "--rpc", *reversed(self.urls),
                "--main-rpc", self.anvil.url, "--registry", self.contract.address, "--key", str(self.relayer_key),
                "--side-key", str(self.tmp / "authority-0.key"), "--every", str(every), "--poll", "0.2",
                "--journal", str(self.journal)]

    def start_relayer(self) -> None:
        log = open(self.tmp / "relayer.log", "ab")
        self.relayer = subprocess.Popen(self.relayer_args(), stdout=log, stderr=log, cwd=ROOT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def kill_relayer(self) -> None:
        assert self.relayer is not None
        self.relayer.kill()           # SIGKILL: no handler, no cleanup
        self.relayer.wait()
        self.relayer = None

    def stop_relayer(self, graceful: bool = False) -> None:
        """kill -9, or SIGTERM: the relayer finishes its round (follows its submission to a receipt)."""
        if self.relayer is not None and self.relayer.poll() is None:
            if graceful:
                self.relayer.terminate()
                self.relayer.wait(60)
            else:
                self.relayer.kill()
                self.relayer.wait()
        self.relayer = None

    def relayer_log(self) -> str:
        p = self.tmp / "relayer.log"
        return p.read_text()[-3000:] if p.exists() else ""

    def journal_rows(self) -> list[tuple[Any, ...]]:
        if not self.journal.exists():
            return []
        c = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=5)
        try:
            return c.execute("SELECT height, state, nonce, tx_hash, side FROM anchor_journal "
                             "ORDER BY height").fetchall()
        except sqlite3.OperationalError:   # no table yet
            return []
        finally:
            c.close()

    # ---- main chain ----

    def events(self) -> list[dict[str, Any]]:
        """Every CheckpointSubmitted, in order."""
        logs = self.contract.events.CheckpointSubmitted().get_logs(from_block=0)
        return [dict(e["args"]) | {"tx": e["transactionHash"]} for e in logs]

    def relayer_tx_count(self) -> int:
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(cs(RELAYER_KEY))))

    def latest(self) -> int:
        return int(self.contract.functions.latest().call()[0])

    def wait_anchored(self, above: int, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            h = self.latest()
            if h > above:
                return h
            if self.relayer is not None and self.relayer.poll() is not None:
                raise AssertionError(f"relayer exited: {self.relayer_log()}")
            time.sleep(0.1)
        raise AssertionError(f"nothing anchored above {above} in {timeout}s: {self.relayer_log()}")

    def registry_client(self) -> Registry:
        return Registry(EvmRpc(self.anvil.url), self.registry)

    # ---- side chain ----

    async def call(self, i: int, method: str, *params: Any) -> Any:
        async with JsonRpcClient(self.urls[i], timeout=5) as c:
            return await c.call(method, *params)

    async def send_transfers(self, n: int, via: int = 0) -> list[bytes]:
        """``n`` transfers between the genesis users; returns their hashes once final."""
        users = list(kit.USERS)
        out = []
        async with JsonRpcClient(self.urls[via], timeout=5) as c:
            for k in range(n):
                u = users[k % len(users)]
                to = users[(k + 1) % len(users)]
                raw = kit.raw_tx(u, self.nonces[u], kit.transfer(to, 1 + k))
                h = await c.call("chain_sendRawTransaction", "0x" + raw.hex())
                self.nonces[u] += 1
                out.append(bytes.fromhex(h[2:]))
            for h in out:
                st = await c.call("chain_waitFinal", "0x" + h.hex(), 20)
                assert st["status"] == "final", st
        self.txs += out
        return out
