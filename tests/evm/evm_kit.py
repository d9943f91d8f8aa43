"""A deployed exchange on a real anvil, and chain clients on it (shared by the EVM backend tests).

``evm_chain(tmp)`` starts anvil (0.2 s blocks, the ``finalized`` tag two blocks behind the head),
deploys NoiaToken + Exchange with gateway/evm/deploy.py, writes the deployment record, and onboards
the test keys of tests/gateway/validator/kit.py with the bundled genesis's balances (so a scripted
day can run on both chains with the same accounts, orders and fill ids' inputs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from coincurve import PrivateKey

from gateway.chain_client import ClientConfig, Outbox, OutboxChainClient, StaticKeyring
from gateway.chain_client.evm import EvmBackend, EvmConfig
from gateway.evm.anvil import Anvil
from gateway.evm.deploy import Deployment, deploy, onboard, read_record, write_record
from gateway.validator.crypto import address_of, private_key, to_checksum
from tests.gateway.validator import kit

CHAIN_ID = 31337
BLOCK_TIME = 0.2
FINALITY_ARGS = ("--slots-in-an-epoch", "1")   # anvil: finalized = head - 2
DEPLOYER = private_key(b"\x5d" * 32)
SUPPLY = 10**27
KEYS = StaticKeyring([kit.key(i) for i in range(10)])
CONFIG = ClientConfig(poll_interval=0.05, resubmit_after=2.0, backoff_initial=0.05, backoff_max=0.5)


@dataclass
class EvmChain:
    node: Anvil
    deployment: Deployment
    record: Path

    @property
    def url(self) -> str:
        return self.node.url

    def backend(self, config: EvmConfig = EvmConfig()) -> EvmBackend:
        return EvmBackend(self.url, self.deployment, config)

    def now(self) -> int:
        return int(self.node.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)


def start(tmp: Path, *, block_time: float | None = BLOCK_TIME, balances: dict[PrivateKey, int] | None = None,
          interval_seconds: int = kit.INTERVAL, settle_timeout: int = 7 * 86_400,
          extra_args: tuple[str, ...] = ()) -> EvmChain:
    node = Anvil(chain_id=CHAIN_ID, block_time=block_time, auto_impersonate=False,
                 extra_args=FINALITY_ARGS + extra_args).start()
    try:
        node.rpc("anvil_setBalance", [to_checksum(kit.addr(0)), hex(10**24)])
        node.rpc("anvil_setBalance", [to_checksum(address_of(DEPLOYER)), hex(10**26)])
        dep = deploy(node.url, DEPLOYER, kit.addr(kit.COMPLEX), SUPPLY, interval_seconds=interval_seconds,
                     settle_timeout=settle_timeout)
        record = tmp / "deployment.json"
        write_record(record, dep)
        accounts = dict(balances) if balances is not None else {kit.key(i): kit.START_BALANCE for i in kit.USERS}
        accounts.setdefault(kit.key(kit.COMPLEX), 0)   # gas ether and the approve, no NOIA
        onboard(node.url, dep, DEPLOYER, accounts)
        return EvmChain(node, read_record(record), record)
    except BaseException:
        node.stop()
        raise


@contextmanager
def evm_chain(tmp: Path, **kw: object) -> Iterator[EvmChain]:
    chain = start(tmp, **kw)  # type: ignore[arg-type]
    try:
        yield chain
    finally:
        chain.node.stop()


def make_client(db: str | Path, url: str, deployment: Deployment, fault: Callable[[str], None] | None = None,
                config: EvmConfig = EvmConfig()) -> OutboxChainClient:
    backend = EvmBackend(url, deployment, config)
    return OutboxChainClient(backend, Outbox(db, backend.name), KEYS, config=CONFIG, fault=fault)


async def dispose(c: OutboxChainClient) -> None:
    await c.aclose()
    c.outbox.close()


@asynccontextmanager
async def json_rpc_server(handle: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """``handle`` answering ``POST /`` on a free loopback port (a stand-in or a proxy in front of anvil);
    yields its URL."""
    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
