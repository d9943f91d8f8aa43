"""Test kit for validator networks: keys, a genesis, free ports, in-process nodes and subprocess nodes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.validator.crypto import address_of, private_key
from gateway.validator.genesis import Genesis, parse_genesis
from gateway.validator.node import Node, NodeConfig

from .kit import CONTRACT, INTERVAL, USERS, addr, CHAIN_ID, COMPLEX

AUTH_KEYS = [private_key((7000 + i).to_bytes(32, "big")) for i in range(7)]
START = 10**21


def genesis_doc(n: int, block_time: float = 0.25) -> dict[str, Any]:
    return {"chain_id": CHAIN_ID, "name": "net-test", "verifying_contract": "0x" + CONTRACT.hex(),
            "block_time_ms": int(block_time * 1000), "interval_seconds": INTERVAL, "timestamp": int(time.time()) - 10,
            "authorities": ["0x" + address_of(k).hex() for k in AUTH_KEYS[:n]],
            "complex_authority": "0x" + addr(COMPLEX).hex(),
            "balances": {"0x" + addr(i).hex(): str(START) for i in USERS}}


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def node_configs(tmp: Path, g: Genesis, n: int, **kw: Any) -> list[NodeConfig]:
    ports = free_ports(2 * n)
    p2p = [("127.0.0.1", ports[i]) for i in range(n)]
    return [NodeConfig(genesis=g, key=AUTH_KEYS[i], data_dir=tmp / f"node{i}", p2p=p2p[i],
                       peers=tuple(p for j, p in enumerate(p2p) if j != i), rpc=("127.0.0.1", ports[n + i]), **kw)
            for i in range(n)]


async def rpc(session: aiohttp.ClientSession, url: str, method: str, *params: Any) -> Any:
    async with session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}) as r:
        body = await r.json()
    if "error" in body:
        raise RuntimeError(body["error"])
    return body["result"]


async def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await pred():
            return True
        await asyncio.sleep(step)
    return False


class Proc:
    """A validator as a real process (``metanoia validator run``): kill -9, SIGSTOP, restart."""

    def __init__(self, tmp: Path, i: int, genesis_path: Path, p2p: tuple[str, int], peers: list[tuple[str, int]],
                 rpc_port: int, block_time: float) -> None:
        self.i = i
        self.tmp = tmp
        key = tmp / f"authority-{i}.key"
        if not key.exists():
            from gateway.cli.validator import write_key
            write_key(key, AUTH_KEYS[i].secret)
        self.args = [sys.executable, "-m", "gateway.cli", "validator", "run", "--genesis", str(genesis_path),
                     "--key", str(key), "--data", str(tmp / f"node{i}"), "--p2p", f"{p2p[0]}:{p2p[1]}",
                     "--peers", ",".join(f"{h}:{p}" for h, p in peers), "--rpc", f"127.0.0.1:{rpc_port}",
                     "--workers", "0", "--debug-rpc"]
        self.url = f"http://127.0.0.1:{rpc_port}/"
        self.p: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        log = open(self.tmp / f"node{self.i}.log", "ab")
        self.p = subprocess.Popen(self.args, stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[3],
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def kill(self) -> None:
        assert self.p is not None
        self.p.kill()
        self.p.wait()

    def signal(self, sig: int) -> None:
        assert self.p is not None
        os.kill(self.p.pid, sig)

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait()
