"""JSON-RPC 2.0 over HTTP (aiohttp): the interface the chain client is coded against.

``POST /`` with one request object or a batch array. Hex is ``0x``-prefixed.

=============================  =====================================================
method                         result
=============================  =====================================================
chain_sendRawTransaction(hex)  tx hash; idempotent (a known tx returns its hash)
chain_sendRawTransactions([])  [hash | {"error": reason}] (batch intake)
chain_getTransactionStatus(h)  {"status": unknown|pending|included|final|rejected,
                               "height": n|null, "reason": str|null}
chain_getTransactionReceipt(h) receipt object or null (final transactions only)
chain_getBlockByNumber(n|"latest"|"final"[, full])  block object or null
chain_blockNumber()            height of the last committed block
chain_finalizedNumber()        the same (BFT finality: committed = final)
chain_getBalance(address)      balance as a decimal string (uint256)
chain_getNonce(address)        next nonce, counting the sender's pending run
chain_waitFinal(h, timeout_s)  status object, once final or at the timeout (<= 60 s)
chain_getEscrow(fill_id)       escrow, settlement or reclaim of a fill, or null
chain_status()                 height, round, peers, validators up, counters
=============================  =====================================================

The envelope, the batches, the limits and the standard error codes (-32700
parse error, -32600 invalid request, -32601 unknown method, -32602 bad params,
-32603 internal) are gateway/jsonrpc.py's, shared by every gateway service;
each error response is counted in the node's counters as ``rpc_error_{code}``.
Application codes: -32000 rejected
(``data.reason`` = the chain's reason code, e.g. ``bad_nonce``,
``signer_mismatch``), -32001 unavailable (``mempool_full``, ``sender_limit``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.jsonrpc import INVALID_PARAMS, JsonRpcServer, Method, RpcError, params_of

from .crypto import parse_address
from .mempool import MEMPOOL_FULL, SENDER_LIMIT
from .state import (decode_escrow, decode_reclaimed, decode_settled, escrow_key, get_account, reclaimed_key,
                    settled_key)
from .tx import MAX_TX_SIZE, TYPE_NAMES

if TYPE_CHECKING:
    from .node import Node

REJECTED, UNAVAILABLE = -32000, -32001      # application codes; data.reason = the chain's reason code
MAX_BODY = 64 * 1024 * 1024                 # batch intake: 20,000 txs of up to MAX_TX_SIZE bytes, as hex
MAX_BATCH_TXS = 20_000                      # txs per chain_sendRawTransactions call
MAX_BATCH = 1_000                           # JSON-RPC requests per batch array
MAX_WAIT_S = 60.0


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _bytes(v: Any, what: str, size: int | None = None, max_size: int = MAX_TX_SIZE) -> bytes:
    if not isinstance(v, str) or not v.startswith("0x"):
        raise RpcError(INVALID_PARAMS, f"{what}: expected 0x-prefixed hex")
    try:
        b = bytes.fromhex(v[2:])
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"{what}: bad hex") from None
    if size is not None and len(b) != size:
        raise RpcError(INVALID_PARAMS, f"{what}: expected {size} bytes")
    if len(b) > max_size:
        raise RpcError(REJECTED, f"{what}: too large", {"reason": "too_large"})
    return b


def _addr(v: Any) -> bytes:
    try:
        return parse_address(v)
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None


class Rpc:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.methods: dict[str, Method] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("rpc_chain_")
        }
        from .anchor_rpc import anchor_methods   # checkpoint signatures, headers, tx proofs (issue 7)
        self.methods.update(anchor_methods(node))
        if node.cfg.debug_rpc:
            self.methods["debug_setPartitioned"] = self.rpc_debug_setPartitioned

    # ---- methods -----------------------------------------------------------------------------

    async def rpc_chain_sendRawTransaction(self, params: Any) -> str:
        (raw,) = params_of(params, 1, 1)
        res = (await self.node.submit([_bytes(raw, "tx")]))[0]
        if isinstance(res, str):
            code = UNAVAILABLE if res in (MEMPOOL_FULL, SENDER_LIMIT) else REJECTED
            raise RpcError(code, f"transaction rejected: {res}", {"reason": res})
        return _hex(res)

    async def rpc_chain_sendRawTransactions(self, params: Any) -> list[Any]:
        (raws,) = params_of(params, 1, 1)
        if not isinstance(raws, list) or len(raws) > MAX_BATCH_TXS:
            raise RpcError(INVALID_PARAMS, f"expected a list of at most {MAX_BATCH_TXS} hex transactions")
        out: list[Any] = [None] * len(raws)
        good: list[bytes] = []
        idx: list[int] = []
        fromhex = bytes.fromhex
        for i, r in enumerate(raws):
            # _bytes's rules inline (1,000 txs per call): "0x" + hex, at most MAX_TX_SIZE bytes
            if type(r) is str and r.startswith("0x"):
                try:
                    b = fromhex(r[2:])
                except ValueError:
                    out[i] = {"error": "bad_hex"}
                    continue
                if len(b) > MAX_TX_SIZE:
                    out[i] = {"error": "too_large"}
                    continue
                good.append(b)
                idx.append(i)
            else:
                try:
                    good.append(_bytes(r, f"tx {i}"))    # a str subclass, or the reason
                    idx.append(i)
                except RpcError as exc:
                    out[i] = {"error": (exc.data or {}).get("reason", "bad_hex")}
        for i, res in zip(idx, await self.node.submit(good)):
            out[i] = {"error": res} if isinstance(res, str) else "0x" + res.hex()
        return out

    async def rpc_chain_getTransactionStatus(self, params: Any) -> dict[str, Any]:
        (h,) = params_of(params, 1, 1)
        return self.node.tx_status(_bytes(h, "hash", 32))

    async def rpc_chain_getTransactionReceipt(self, params: Any) -> dict[str, Any] | None:
        (h,) = params_of(params, 1, 1)
        r = self.node.store.receipt(_bytes(h, "hash", 32))
        if r is None:
            return None
        hd = self.node.store.header_at(r.height)
        return {"txHash": _hex(r.tx_hash), "blockNumber": r.height, "blockHash": _hex(hd.hash) if hd else None,
                "index": r.index, "type": TYPE_NAMES.get(r.type, str(r.type)), "sender": _hex(r.sender),
                "fillId": _hex(r.fill_id) if r.fill_id else None, "status": "final"}

    async def rpc_chain_getBlockByNumber(self, params: Any) -> dict[str, Any] | None:
        p = params_of(params, 1, 2)
        which, full = p[0], (p[1] if len(p) > 1 else False)
        store = self.node.store
        if which in ("latest", "final"):
            n = store.head.height
        elif isinstance(which, int) and not isinstance(which, bool) and which >= 0:
            n = which
        else:
            raise RpcError(INVALID_PARAMS, 'block number: a non-negative integer, "latest" or "final"')
        if not isinstance(full, bool):
            raise RpcError(INVALID_PARAMS, "full: a boolean")
        blk = store.block_at(n) if n <= store.head.height else None
        if blk is None:
            return None
        from .crypto import keccak256
        hd = blk.header
        row = store.conn.execute("SELECT cert FROM chain_certs WHERE height = ?", (n,)).fetchone()
        cert = None
        if row is not None:
            from .votes import decode_certificate
            c = decode_certificate(bytes(row[0]))
            cert = {"round": c.round, "signers": [_hex(v.signer) for v in c.votes], "raw": _hex(bytes(row[0]))}
        return {"number": hd.height, "hash": _hex(hd.hash), "parentHash": _hex(hd.parent_hash), "round": hd.round,
                "proposer": _hex(hd.proposer), "timestamp": hd.timestamp, "txRoot": _hex(hd.tx_root),
                "stateRoot": _hex(hd.state_root), "txCount": len(blk.txs),
                "transactions": [_hex(r) if full else _hex(keccak256(r)) for r in blk.txs],
                "certificate": cert}

    async def rpc_chain_blockNumber(self, params: Any) -> int:
        params_of(params, 0, 0)
        return self.node.store.head.height

    async def rpc_chain_finalizedNumber(self, params: Any) -> int:
        params_of(params, 0, 0)
        return self.node.store.head.height

    async def rpc_chain_getBalance(self, params: Any) -> str:
        (a,) = params_of(params, 1, 1)
        return str(get_account(self.node.store, _addr(a)).balance)

    async def rpc_chain_getNonce(self, params: Any) -> int:
        (a,) = params_of(params, 1, 1)
        return self.node.mempool.next_nonce(_addr(a))

    async def rpc_chain_waitFinal(self, params: Any) -> dict[str, Any]:
        p = params_of(params, 1, 2)
        h = _bytes(p[0], "hash", 32)
        t = p[1] if len(p) > 1 else 10.0
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= MAX_WAIT_S:
            raise RpcError(INVALID_PARAMS, f"timeout_s: a number in 0..{MAX_WAIT_S}")
        return await self.node.wait_final(h, float(t))

    async def rpc_chain_getEscrow(self, params: Any) -> dict[str, Any] | None:
        (f,) = params_of(params, 1, 1)
        fid = _bytes(f, "fill id", 32)
        store = self.node.store
        raw = store.get(escrow_key(fid))
        if raw is not None:
            e = decode_escrow(raw)
            return {"fillId": _hex(fid), "status": "escrowed", "maker": _hex(e.maker), "taker": _hex(e.taker),
                    "noia": str(e.noia), "wh": e.wh, "intervalStart": e.interval_start, "grid": _hex(e.grid)}
        raw = store.get(settled_key(fid))
        if raw is not None:
            st = decode_settled(raw)
            return {"fillId": _hex(fid), "status": "settled", "deliveredWh": st.delivered_wh,
                    "payment": str(st.payment), "refund": str(st.refund)}
        raw = store.get(reclaimed_key(fid))
        if raw is not None:
            rc = decode_reclaimed(raw)
            return {"fillId": _hex(fid), "status": "reclaimed", "taker": _hex(rc.taker), "refund": str(rc.refund)}
        return None

    async def rpc_chain_status(self, params: Any) -> dict[str, Any]:
        params_of(params, 0, 0)
        return self.node.status()

    async def rpc_debug_setPartitioned(self, params: Any) -> bool:
        (on,) = params_of(params, 1, 1)
        if not isinstance(on, bool):
            raise RpcError(INVALID_PARAMS, "a boolean")
        self.node.net.set_partitioned(on)
        return on

    def server(self) -> JsonRpcServer:
        """The shared dispatcher over these methods; every error response is counted as ``rpc_error_{code}``."""
        return JsonRpcServer(self.methods, max_body=MAX_BODY, max_batch=MAX_BATCH,
                             on_error=lambda code: self.node.count(f"rpc_error_{code}"))


async def start_rpc(node: Node, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    return await Rpc(node).server().start(host, port)
