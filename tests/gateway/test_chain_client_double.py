"""A TEST DOUBLE of the validator node's JSON-RPC, and tests that it speaks the protocol.

``RpcNodeDouble`` is not the validator: no consensus, no P2P, one process. It
serves the node's JSON-RPC 2.0 method names over real HTTP (aiohttp) and runs
the real state machine of the chain core: ``verify_tx`` on intake,
``build_block`` over a ``MemoryStore`` every ``block_interval`` seconds, the
receipts of the store. The real node is tested with the chain client in
tests/gateway/test_chain_client_node.py; the double stays for what the real
node does not let a test do: finality ``finality_lag`` blocks behind the head
(the real node's BFT finality has none), replies lost after the tx was
accepted (``drop_responses``), a chain paused at will (``paused``), blocks
every 10 ms for property tests.

It answers as the real node does (gateway/validator/rpc.py, node.py, mempool.py):
- ``chain_sendRawTransaction`` is idempotent: a tx already in the mempool or in
  a block returns its hash and is never applied twice; a stale nonce (below the
  account's) is refused with ``bad_nonce``; a tx the proposer dropped is
  ``rejected`` with its reason; a future nonce waits in the mempool.
- error objects: ``{"code": -32000, "message": "transaction rejected: reason",
  "data": {"reason"}}``; -32001 for mempool_full / sender_limit;
  ``chain_sendRawTransactions`` answers ``{"error": reason}`` per refused item.
- ``chain_getNonce`` counts the sender's pending run; ``chain_getEscrow`` is
  ``{"fillId", "status": "escrowed", "maker", "taker", "noia", "wh",
  "intervalStart", "grid"}`` (or ``"settled"`` with the settlement).
- ``restart()``: the HTTP endpoint goes away (connection refused) and comes
  back with an empty mempool; blocks and receipts survive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from gateway.chain_client import errors as CE
from gateway.chain_client.rpc import JsonRpcClient
from gateway.validator.crypto import keccak256
from gateway.validator.errors import BAD_NONCE, DecodeError
from gateway.validator.execute import build_block
from gateway.validator.genesis import Genesis
from gateway.validator.state import decode_escrow, decode_settled, escrow_key, get_account, settled_key
from gateway.validator.storage import MemoryStore
from gateway.validator.tx import VerifiedTx, verify_tx
from tests.gateway.validator import kit

log = logging.getLogger(__name__)

REJECTED = -32000   # gateway/validator/rpc.py's code, for decode- and state-level refusals alike


class RpcFailure(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.code, self.message, self.data = code, message, data


@dataclass
class RpcNodeDouble:
    """Test double: the node's JSON-RPC over HTTP, backed by the real chain core (see module doc)."""
    genesis: Genesis = field(default_factory=lambda: kit.GENESIS)
    block_interval: float = 0.02
    finality_lag: int = 0
    drop_responses: int = 0            # apply the next N sends but cut the connection before answering
    paused: bool = False               # no blocks while set
    store: MemoryStore = field(init=False)
    mempool: dict[bytes, VerifiedTx] = field(default_factory=dict)
    rejected: dict[bytes, str] = field(default_factory=dict)
    sends: dict[bytes, int] = field(default_factory=dict)   # sendRawTransaction calls per tx hash
    calls: dict[str, int] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        self.store = MemoryStore(self.genesis)
        self.params = self.genesis.params()
        self._runner: web.AppRunner | None = None
        self._blocks: asyncio.Task[None] | None = None
        self.time = self.genesis.timestamp + self.params.interval_seconds

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        self._blocks = asyncio.get_running_loop().create_task(self._produce())
        return self.url

    async def stop(self) -> None:
        if self._blocks is not None:
            self._blocks.cancel()
            try:
                await self._blocks
            except asyncio.CancelledError:
                pass
            self._blocks = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, down_for: float = 0.0) -> None:
        """Node restart: endpoint down for ``down_for`` s, mempool and rejections lost, chain kept."""
        await self.stop()
        self.mempool.clear()
        self.rejected.clear()
        await asyncio.sleep(down_for)
        await self.start()

    async def __aenter__(self) -> RpcNodeDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- chain ----

    def produce_block(self) -> None:
        s = self.store
        cands = sorted(self.mempool.values(), key=lambda v: (v.tx.sender, v.tx.nonce))
        self.time += 1
        blk, res, rejected = build_block(s, s.accumulator, s.head, cands, self.params,
                                         kit.addr(kit.AUTHORITY), self.time, header_at=s.header_at)
        s.commit_block(blk, res)
        for r in res.receipts:
            self.mempool.pop(r.tx_hash, None)
        for v, exc in rejected:
            if exc.reason == BAD_NONCE and v.tx.nonce > get_account(s, v.tx.sender).nonce:
                continue  # a future nonce waits in the mempool
            self.mempool.pop(v.hash, None)
            self.rejected[v.hash] = exc.reason

    async def _produce(self) -> None:
        while True:
            await asyncio.sleep(self.block_interval)
            if not self.paused:
                self.produce_block()

    @property
    def finalized(self) -> int:
        return max(0, self.store.head.height - self.finality_lag)

    def applied(self, tx_hash: bytes) -> int:
        """How many blocks hold ``tx_hash`` (the exactly-once check)."""
        return sum(1 for h in range(1, self.store.head.height + 1)
                   for raw in self.store.block_at(h).txs if keccak256(raw) == tx_hash)  # type: ignore[union-attr]

    def balance(self, i: int) -> int:
        return get_account(self.store, kit.addr(i)).balance

    def nonce(self, i: int) -> int:
        return get_account(self.store, kit.addr(i)).nonce

    # ---- JSON-RPC ----

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            doc = json.loads(await request.text())
        except ValueError:
            return web.json_response({"jsonrpc": "2.0", "id": None,
                                      "error": {"code": -32700, "message": "parse error"}})
        rid = doc.get("id") if isinstance(doc, dict) else None
        try:
            if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0" or not isinstance(doc.get("method"), str):
                raise RpcFailure(-32600, "invalid request")
            method, params = doc["method"], doc.get("params", [])
            self.calls[method] = self.calls.get(method, 0) + 1
            fn = getattr(self, "rpc_" + method, None)
            if fn is None:
                raise RpcFailure(-32601, f"method not found: {method}")
            if not isinstance(params, list):
                raise RpcFailure(-32602, "params must be an array")
            try:
                result = fn(*params)
            except TypeError as exc:
                raise RpcFailure(-32602, f"invalid params: {exc}") from None
            if method == "chain_sendRawTransaction" and self.drop_responses > 0:
                self.drop_responses -= 1
                assert request.transport is not None
                request.transport.close()  # accepted, but the answer is lost
                return web.Response()
            return web.json_response({"jsonrpc": "2.0", "id": rid, "result": result})
        except RpcFailure as exc:
            err: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                err["data"] = exc.data
            return web.json_response({"jsonrpc": "2.0", "id": rid, "error": err})

    @staticmethod
    def _hexb(v: Any, n: int | None = None) -> bytes:
        if not isinstance(v, str) or not v.startswith("0x"):
            raise RpcFailure(-32602, f"expected 0x hex, got {v!r}")
        try:
            b = bytes.fromhex(v[2:])
        except ValueError:
            raise RpcFailure(-32602, f"bad hex {v!r}") from None
        if n is not None and len(b) != n:
            raise RpcFailure(-32602, f"expected {n} bytes")
        return b

    def _intake(self, raw: bytes) -> str:
        try:
            v = verify_tx(raw, self.params.domain)
        except DecodeError as exc:
            raise RpcFailure(REJECTED, f"transaction rejected: {exc.reason}", {"reason": exc.reason}) from None
        self.sends[v.hash] = self.sends.get(v.hash, 0) + 1
        h = "0x" + v.hash.hex()
        if v.hash in self.mempool or self.store.receipt(v.hash) is not None:
            return h
        acct = get_account(self.store, v.tx.sender)
        if v.tx.nonce < acct.nonce:
            raise RpcFailure(REJECTED, f"transaction rejected: {BAD_NONCE}", {"reason": BAD_NONCE})
        if any(o.tx.sender == v.tx.sender and o.tx.nonce == v.tx.nonce for o in self.mempool.values()):
            raise RpcFailure(REJECTED, "transaction rejected: nonce_in_use", {"reason": "nonce_in_use"})
        self.rejected.pop(v.hash, None)
        self.mempool[v.hash] = v
        return h

    def rpc_chain_sendRawTransaction(self, raw_hex: str) -> str:
        return self._intake(self._hexb(raw_hex))

    def rpc_chain_sendRawTransactions(self, raws: list[str]) -> list[Any]:
        out: list[Any] = []
        for r in raws:
            try:
                out.append(self._intake(self._hexb(r)))
            except RpcFailure as exc:
                out.append({"error": exc.data["reason"] if isinstance(exc.data, dict) else "bad_hex"})
        return out

    def rpc_chain_getTransactionStatus(self, h_hex: str) -> dict[str, Any]:
        h = self._hexb(h_hex, 32)
        r = self.store.receipt(h)
        if r is not None:
            return {"status": "final" if r.height <= self.finalized else "included", "height": r.height,
                    "reason": None}
        if h in self.mempool:
            return {"status": "pending", "height": None, "reason": None}
        if h in self.rejected:
            return {"status": "rejected", "height": None, "reason": self.rejected[h]}
        return {"status": "unknown", "height": None, "reason": None}

    def rpc_chain_getBalance(self, a: str) -> str:
        return str(get_account(self.store, self._hexb(a, 20)).balance)

    def rpc_chain_getNonce(self, a: str) -> int:
        sender = self._hexb(a, 20)
        n = get_account(self.store, sender).nonce
        pending = {v.tx.nonce for v in self.mempool.values() if v.tx.sender == sender}
        while n in pending:
            n += 1
        return n

    def rpc_chain_getEscrow(self, fid: str) -> dict[str, Any] | None:
        f = self._hexb(fid, 32)
        raw = self.store.get(escrow_key(f))
        if raw is None:
            sraw = self.store.get(settled_key(f))
            if sraw is None:
                return None
            st = decode_settled(sraw)
            return {"fillId": fid, "status": "settled", "deliveredWh": st.delivered_wh, "payment": str(st.payment),
                    "refund": str(st.refund)}
        e = decode_escrow(raw)
        return {"fillId": fid, "status": "escrowed", "maker": "0x" + e.maker.hex(), "taker": "0x" + e.taker.hex(),
                "noia": str(e.noia), "wh": e.wh, "intervalStart": e.interval_start, "grid": "0x" + e.grid.hex()}

    def rpc_chain_blockNumber(self) -> int:
        return self.store.head.height

    def rpc_chain_finalizedNumber(self) -> int:
        return self.finalized

    def rpc_chain_status(self) -> dict[str, Any]:
        return {"chain_id": self.params.chain_id, "height": self.store.head.height, "finalized": self.finalized,
                "mempool": len(self.mempool)}


# ---- the double itself follows the protocol ----

def test_double_speaks_json_rpc_and_maps_errors():
    async def go() -> None:
        async with RpcNodeDouble() as node:
            async with JsonRpcClient(node.url) as rpc:
                assert await rpc.call("chain_blockNumber") >= 0
                with pytest.raises(CE.MethodNotFound) as e1:
                    await rpc.call("chain_nope")
                assert e1.value.code == -32601 and e1.value.reason == "method_not_found"
                with pytest.raises(CE.InvalidParams):
                    await rpc.call("chain_getBalance", "zz")
                with pytest.raises(CE.TxInvalid) as e2:
                    await rpc.call("chain_sendRawTransaction", "0x" + (b"\x01" * 10).hex())
                assert e2.value.reason == "truncated"
                wrong_chain = kit.raw_tx(2, 0, kit.transfer(3, 5), chain_id=7)
                with pytest.raises(CE.TxInvalid) as e3:
                    await rpc.call("chain_sendRawTransaction", "0x" + wrong_chain.hex())
                assert e3.value.reason == "wrong_chain_id"
                raw = kit.raw_tx(2, 0, kit.transfer(3, 5))
                h = await rpc.call("chain_sendRawTransaction", "0x" + raw.hex())
                assert h == await rpc.call("chain_sendRawTransaction", "0x" + raw.hex())  # idempotent
                for _ in range(200):
                    st = await rpc.call("chain_getTransactionStatus", h)
                    if st["status"] == "final":
                        break
                    await asyncio.sleep(0.01)
                assert st["status"] == "final" and st["height"] >= 1
                with pytest.raises(CE.NonceError) as e4:  # same nonce, different tx: stale
                    await rpc.call("chain_sendRawTransaction", "0x" + kit.raw_tx(2, 0, kit.transfer(3, 6)).hex())
                assert e4.value.reason == "bad_nonce"
                assert node.applied(bytes.fromhex(h[2:])) == 1
                assert node.balance(3) == kit.START_BALANCE + 5
            await node.stop()
            async with JsonRpcClient(node.url, timeout=2) as rpc:
                with pytest.raises(CE.ChainUnavailable) as e5:
                    await rpc.call("chain_blockNumber")
                assert e5.value.reason == "unavailable"

    asyncio.run(go())


def test_transport_errors_are_chain_unavailable():
    async def go() -> None:
        async def garbage(request: web.Request) -> web.Response:
            return web.Response(text="<html>oops</html>", status=502)

        async def wrong_id(request: web.Request) -> web.Response:
            return web.json_response({"jsonrpc": "2.0", "id": 999, "result": 1})

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(1.5)
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/garbage", garbage)
        app.router.add_post("/wrong-id", wrong_id)
        app.router.add_post("/slow", slow)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            for path, reason in (("garbage", "unavailable"), ("wrong-id", "bad_response"), ("slow", "timeout")):
                async with JsonRpcClient(f"http://127.0.0.1:{port}/{path}", timeout=0.3) as rpc:
                    with pytest.raises(CE.ChainUnavailable) as e:
                        await rpc.call("chain_blockNumber")
                    assert e.value.reason == reason, path
        finally:
            await runner.cleanup()

    asyncio.run(go())


@pytest.mark.parametrize("err, cls, reason", [
    ({"code": -32000, "message": "transaction rejected: insufficient_balance",
      "data": {"reason": "insufficient_balance"}}, CE.TxRejected, "insufficient_balance"),
    ({"code": -32000, "message": "bad_nonce: nonce 3, account is at 5"}, CE.NonceError, "bad_nonce"),
    ({"code": -32000, "message": "transaction rejected: some_new_rule", "data": {"reason": "some_new_rule"}},
     CE.TxRejected, "some_new_rule"),
    ({"code": -32001, "message": "transaction rejected: overloaded", "data": {"reason": "overloaded"}},
     CE.NodeBusy, "overloaded"),
    ({"code": -32000, "message": "x", "data": "high_s"}, CE.TxInvalid, "high_s"),
    ({"code": -32000, "message": "transaction rejected: nonce_in_use", "data": {"reason": "nonce_in_use"}},
     CE.NodeBusy, "nonce_in_use"),
    ({"code": -32005, "message": "mempool_full"}, CE.NodeBusy, "mempool_full"),
    ({"code": -32700, "message": "parse error"}, CE.ParseError, "parse_error"),
    ({"code": -32600, "message": "bad"}, CE.InvalidRequest, "invalid_request"),
    ({"code": -32603, "message": "boom"}, CE.InternalError, "internal_error"),
    ({"code": -32099, "message": "server busy"}, CE.RpcError, "rpc_error_-32099"),
])
def test_rpc_error_objects_map_to_specific_exceptions(err, cls, reason):
    exc = CE.rpc_error(err["code"], err["message"], err.get("data"))
    assert type(exc) is cls and exc.reason == reason and exc.code == err["code"]
    assert isinstance(exc, CE.ChainClientError)
