"""A local anvil (``@foundry-rs/anvil`` from npm) on a free port: for tests, benches and demos.

    with Anvil(chain_id=31337, block_time=None) as node:   # None: a block per transaction
        w3 = Web3(Web3.HTTPProvider(node.url))

``block_time=1`` gives a block a second (what the bench measures against). ``auto_impersonate``
lets ``eth_sendTransaction`` come from any address (tests use fresh keys for makers and takers).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from .compile import NODE_MODULES


def anvil_binary() -> Path:
    """The platform binary the npm package installs (no node wrapper: one process to stop)."""
    for p in sorted((NODE_MODULES / "@foundry-rs").glob("anvil-*/bin/anvil")):
        if p.is_file():
            return p
    wrapper = NODE_MODULES / ".bin" / "anvil"
    if wrapper.exists():
        return wrapper
    raise FileNotFoundError("anvil not installed: run `npm install` (./dev setup)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Anvil:
    def __init__(self, chain_id: int = 31337, block_time: float | None = None, auto_impersonate: bool = True,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.chain_id = chain_id
        self.block_time = block_time
        self.auto_impersonate = auto_impersonate
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            out = json.loads(resp.read())
        if "error" in out:
            raise RuntimeError(f"{method}: {out['error']}")
        return out["result"]

    def start(self, timeout: float = 20.0) -> Anvil:
        last = ""
        for _ in range(3):  # a port taken between _free_port and anvil's bind: try another
            self.port = _free_port()
            args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port),
                    "--chain-id", str(self.chain_id), "--silent"]
            if self.block_time is not None:
                args += ["--block-time", str(self.block_time)]
            if self.auto_impersonate:
                args.append("--auto-impersonate")
            args += list(self.extra_args)
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                    break
                try:
                    if int(self.rpc("eth_chainId"), 16) == self.chain_id:
                        return self
                except OSError:
                    time.sleep(0.05)
            else:
                self.stop()
                raise TimeoutError(f"anvil did not answer on port {self.port} within {timeout} s")
        raise RuntimeError(f"anvil failed to start: {last.strip()[-1000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
