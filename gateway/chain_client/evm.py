"""An EVM chain (anvil, Besu QBFT, geth Clique, Energy Web Chain) as a ``ChainBackend``.

Attaches to a deployment of NoiaToken + Exchange (gateway/evm/deploy.py's
record); encodes and signs intents with evm_codec.py (fixed gas per action,
fees from ``EvmConfig``: deterministic bytes); speaks the standard ``eth_``
JSON-RPC through the chain client's own JSON-RPC client (rpc.py), so every
transport failure and malformed answer is a counted ``ChainUnavailable``.

- **send**: ``eth_sendRawTransaction``; the node must answer the bytes'
  keccak. Refusals are read by their message (``SEND_REFUSALS``, data): "already
  known" is success; "nonce too low" looks the hash up (mined or pooled: it is
  this tx, success) else ``NonceError``; a replacement, missing gas funds, a
  fee under the base fee or a full pool are ``NodeBusy`` (the nonce is not
  used, so the row waits and is resent); a wrong chain id, undecodable bytes or
  a gas limit the block cannot hold are ``TxInvalid``.
- **status**: a receipt at or under the finality point is ``final`` (status 1)
  or ``rejected`` (status 0; the reason from the revert data, read with
  ``debug_traceTransaction``'s call tracer, else by replaying the call on the
  parent block); above it ``included``; no receipt but a pooled tx ``pending``;
  neither ``unknown`` (the outbox resends). A receipt whose block is not the
  canonical block at its height is not final.
- **finality**: the ``finalized`` block tag where the node has it (``auto``),
  or N confirmations (``finality=N``); ``nonce`` is the account's nonce *at
  that point*, which is what the outbox's stale-nonce rule needs on a chain
  that can reorganise (docs/chain-client.md).
- A reverted tx is mined and uses its nonce: ``rejection_consumes_nonce``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coincurve import PrivateKey

from gateway.evm.abi import functions
from gateway.evm.record import Deployment
from gateway.validator.crypto import keccak256, to_checksum
from gateway.validator.errors import BAD_NONCE, WRONG_CHAIN_ID
from gateway.validator.mempool import MEMPOOL_FULL, NONCE_IN_USE
from gateway.validator.order import Domain
from gateway.validator.tx import Fill

from .api import ChainTxStatus, EscrowInfo, SignedTx
from .errors import BAD_RESPONSE, ChainClientError, ChainUnavailable, NodeBusy, NonceError, RpcError, TxInvalid
from .evm_codec import GAS, Contracts, Fees, revert_reason, sign
from .intents import Action, Intent
from .rpc import JsonRpcClient

log = logging.getLogger(__name__)

# eth_sendRawTransaction refusals, by a fragment of the (lower-cased) message: geth, Besu, Nethermind, anvil.
# outcome: known (the node has this tx), nonce_low, busy (not now, nonce unused), invalid (never).
SEND_REFUSALS: tuple[tuple[str, str, str], ...] = (
    ("already known", "known", ""), ("already imported", "known", ""), ("known transaction", "known", ""),
    ("already exists", "known", ""), ("already in pool", "known", ""),
    ("nonce too low", "nonce_low", BAD_NONCE), ("nonce is too low", "nonce_low", BAD_NONCE),
    ("replacement", "busy", NONCE_IN_USE), ("nonce too high", "busy", "nonce_too_high"),
    ("insufficient funds", "busy", "insufficient_gas_funds"),
    ("less than block base fee", "busy", "fee_below_base_fee"), ("fee cap less than", "busy", "fee_below_base_fee"),
    ("underpriced", "busy", "fee_below_base_fee"), ("gas price too low", "busy", "fee_below_base_fee"),
    ("txpool is full", "busy", MEMPOOL_FULL), ("pool is full", "busy", MEMPOOL_FULL),
    ("chain id", "invalid", WRONG_CHAIN_ID), ("chainid", "invalid", WRONG_CHAIN_ID),
    ("intrinsic gas too low", "invalid", "intrinsic_gas_too_low"),
    ("gas limit", "invalid", "gas_limit_exceeded"), ("intrinsic gas too high", "invalid", "gas_limit_exceeded"),
    ("exceeds block gas limit", "invalid", "gas_limit_exceeded"),
    ("decode", "invalid", "bad_encoding"), ("rlp", "invalid", "bad_encoding"),
)
ORDER_STATUS = {0: "open", 1: "filled", 2: "cancelled"}
FILL_STATUS = {0: "none", 1: "escrowed", 2: "settled", 3: "reclaimed"}


@dataclass(frozen=True)
class EvmConfig:
    fees: Fees = Fees()
    gas: dict[str, int] = field(default_factory=lambda: dict(GAS))
    finality: str | int = "auto"   # "auto", a block tag ("finalized", "safe"), or N confirmations
    confirmations: int = 12        # "auto" on a node without the finalized tag
    timeout: float = 10.0          # per JSON-RPC call (s)
    head_cache_s: float = 0.1      # how long one read of the finality point serves status polls
    send_concurrency: int = 16


@dataclass(frozen=True)
class FillRecord:
    """A fill on the exchange, whatever its state (``status``: escrowed, settled, reclaimed)."""
    fill_id: bytes
    status: str
    maker: bytes
    taker: bytes
    wh: int
    interval_start: int
    noia: int
    grid: bytes
    delivered_wh: int
    payment: int
    refund: int


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


class EvmBackend:
    """The exchange of one deployment, over one node's JSON-RPC URL."""

    rejection_consumes_nonce = True

    def __init__(self, url: str, deployment: Deployment, config: EvmConfig = EvmConfig()) -> None:
        self.rpc = JsonRpcClient(url, timeout=config.timeout)
        self.deployment = deployment
        self.config = config
        self.contracts = Contracts(deployment.chain_id, deployment.token, deployment.exchange,
                                   functions(deployment.token_abi), functions(deployment.exchange_abi))
        self.domain = Domain(deployment.chain_id, deployment.exchange)
        self.counters: dict[str, int] = {}
        self._mode: str | int | None = None
        self._fin: tuple[float, int] | None = None

    @property
    def name(self) -> str:
        return f"evm:{self.deployment.chain_id}"

    # ---- encoding (pure, deterministic) ----

    def build(self, intent: Intent, nonce: int, key: PrivateKey) -> SignedTx:
        raw, h = sign(self.contracts, intent, nonce, key, self.config.fees, self.config.gas)
        return SignedTx(raw, h, nonce)

    def fill_id(self, action: Action) -> bytes | None:
        return action.signed_order.order.digest(self.domain) if isinstance(action, Fill) else None

    # ---- strict reading of answers ----

    def _bad(self, what: str, value: Any) -> ChainUnavailable:
        self.counters[BAD_RESPONSE] = self.counters.get(BAD_RESPONSE, 0) + 1
        log.warning("evm node %s: bad answer for %s: %.200r", self.rpc.url, what, value)
        return ChainUnavailable(BAD_RESPONSE, f"{what}: {value!r:.200}")

    def _qty(self, v: Any, what: str) -> int:
        if isinstance(v, str) and v[:2] in ("0x", "0X") and 2 < len(v) <= 66:
            try:
                return int(v, 16)
            except ValueError:
                pass
        raise self._bad(what, v)

    def _data(self, v: Any, what: str, n: int | None = None) -> bytes:
        if isinstance(v, str) and v[:2] in ("0x", "0X") and len(v) % 2 == 0:
            try:
                b = bytes.fromhex(v[2:])
            except ValueError:
                raise self._bad(what, v) from None
            if n is None or len(b) == n:
                return b
        raise self._bad(what, v)

    def _obj(self, v: Any, what: str, *keys: str) -> dict[str, Any]:
        if not isinstance(v, dict) or any(k not in v for k in keys):
            raise self._bad(what, v)
        return v

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # ---- attach ----

    async def attach(self) -> None:
        """Check the node is the deployment's chain and the exchange is there (raises ChainClientError)."""
        cid = self._qty(await self.rpc.call("eth_chainId"), "eth_chainId")
        if cid != self.deployment.chain_id:
            raise ChainClientError(WRONG_CHAIN_ID, f"node is chain {cid}, deployment is {self.deployment.chain_id}")
        for name, addr in (("token", self.deployment.token), ("exchange", self.deployment.exchange)):
            if not self._data(await self.rpc.call("eth_getCode", to_checksum(addr), "latest"), "eth_getCode"):
                raise ChainClientError("no_contract", f"no {name} code at {to_checksum(addr)}")

    # ---- sending ----

    async def send(self, raw: bytes) -> bytes:
        h = keccak256(raw)
        try:
            res = await self.rpc.call("eth_sendRawTransaction", _hex(raw))
        except RpcError as exc:
            return await self._refused(h, exc)
        if self._data(res, "eth_sendRawTransaction", 32) != h:
            raise self._bad("eth_sendRawTransaction (hash of other bytes)", res)
        return h

    async def _refused(self, h: bytes, exc: RpcError) -> bytes:
        msg = str(exc.message).lower()
        outcome, reason = next(((o, r) for frag, o, r in SEND_REFUSALS if frag in msg), ("busy", "node_refused"))
        self._count(f"send_{reason or outcome}")
        if outcome == "known":
            return h
        if outcome == "nonce_low":
            if await self._known(h):  # this very tx used the nonce (a lost answer): accepted
                return h
            raise NonceError(exc.code, exc.message, exc.data, BAD_NONCE)
        if outcome == "invalid":
            raise TxInvalid(exc.code, exc.message, exc.data, reason)
        if reason == "node_refused":
            log.warning("evm node refused a tx with an unknown message (treated as 'not now'): %.200s", exc.message)
        raise NodeBusy(exc.code, exc.message, exc.data, reason)

    async def _known(self, h: bytes) -> bool:
        if await self.rpc.call("eth_getTransactionReceipt", _hex(h)) is not None:
            return True
        return await self.rpc.call("eth_getTransactionByHash", _hex(h)) is not None

    async def send_many(self, raws: Sequence[bytes]) -> list[bytes | ChainClientError]:
        sem = asyncio.Semaphore(self.config.send_concurrency)

        async def one(raw: bytes) -> bytes | ChainClientError:
            async with sem:
                try:
                    return await self.send(raw)
                except ChainClientError as exc:
                    return exc

        return list(await asyncio.gather(*(one(r) for r in raws)))

    # ---- status and finality ----

    async def tx_status(self, tx_hash: bytes) -> ChainTxStatus:
        rc = await self.rpc.call("eth_getTransactionReceipt", _hex(tx_hash))
        if rc is None:
            pooled = await self.rpc.call("eth_getTransactionByHash", _hex(tx_hash))
            return ChainTxStatus("pending" if pooled is not None else "unknown")
        rc = self._obj(rc, "receipt", "transactionHash", "blockNumber", "blockHash", "status", "gasUsed")
        if self._data(rc["transactionHash"], "receipt.transactionHash", 32) != tx_hash:
            raise self._bad("receipt for another tx", rc["transactionHash"])
        height = self._qty(rc["blockNumber"], "receipt.blockNumber")
        block_hash = self._data(rc["blockHash"], "receipt.blockHash", 32)
        status = self._qty(rc["status"], "receipt.status")
        gas_used = self._qty(rc["gasUsed"], "receipt.gasUsed")
        if status not in (0, 1):
            raise self._bad("receipt.status", rc["status"])
        if height > await self.finalized_number():
            return ChainTxStatus("included", height)
        blk = self._obj(await self.rpc.call("eth_getBlockByNumber", hex(height), False), "block", "hash")
        if self._data(blk["hash"], "block.hash", 32) != block_hash:  # a receipt from a reorganised-away block
            self._count("receipt_not_canonical")
            return ChainTxStatus("pending")
        if status == 1:
            return ChainTxStatus("final", height)
        reason, detail = await self._revert(tx_hash, height, gas_used)
        log.info("evm tx 0x%s reverted at %d: %s (%s)", tx_hash.hex(), height, reason, detail)
        return ChainTxStatus("rejected", height, reason)

    async def _revert(self, tx_hash: bytes, height: int, gas_used: int) -> tuple[str, str]:
        """The reason a mined tx reverted: its revert data from the call tracer, else a replay."""
        try:
            tr = self._obj(await self.rpc.call("debug_traceTransaction", _hex(tx_hash), {"tracer": "callTracer"}),
                           "debug_traceTransaction")
            out = tr.get("output")
            data = self._data(out, "trace.output") if out not in (None, "", "0x") else b""
            gas = self._qty(tr["gas"], "trace.gas") if "gas" in tr else None
            oog = "out of gas" in str(tr.get("error", "")).lower() or (gas is not None and gas_used >= gas)
            return revert_reason(data, used_all_gas=oog and not data)
        except RpcError as exc:  # no debug namespace on this node: replay the call on the parent block
            log.debug("debug_traceTransaction unavailable (%s); replaying", exc)
        tx = self._obj(await self.rpc.call("eth_getTransactionByHash", _hex(tx_hash)), "transaction",
                       "from", "to", "input", "gas")
        call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
        try:
            await self.rpc.call("eth_call", call, hex(max(0, height - 1)))
        except RpcError as exc:
            d = exc.data.get("data") if isinstance(exc.data, dict) else exc.data
            data = self._data(d, "eth_call revert data") if isinstance(d, str) else b""
            return revert_reason(data, used_all_gas=gas_used >= self._qty(tx["gas"], "tx.gas"))
        return "reverted", "replay on the parent block did not revert (state differed inside the block)"

    async def finality_mode(self) -> str | int:
        if self._mode is None:
            f = self.config.finality
            if f == "auto":
                try:
                    blk = await self.rpc.call("eth_getBlockByNumber", "finalized", False)
                    f = "finalized" if isinstance(blk, dict) else self.config.confirmations
                except RpcError:
                    f = self.config.confirmations
            self._mode = f
        return self._mode

    async def _point(self) -> str:
        """The finality point as a block parameter for eth_ calls."""
        mode = await self.finality_mode()
        return mode if isinstance(mode, str) else hex(await self.finalized_number())

    async def finalized_number(self) -> int:
        now = time.monotonic()
        if self._fin is not None and now - self._fin[0] < self.config.head_cache_s:
            return self._fin[1]
        mode = await self.finality_mode()
        if isinstance(mode, int):
            n = max(0, await self.block_number() - mode)
        else:
            blk = await self.rpc.call("eth_getBlockByNumber", mode, False)
            n = 0 if blk is None else self._qty(self._obj(blk, "block", "number")["number"], "block.number")
        self._fin = (now, n)
        return n

    async def block_number(self) -> int:
        return self._qty(await self.rpc.call("eth_blockNumber"), "eth_blockNumber")

    # ---- queries ----

    async def nonce(self, address: bytes) -> int:
        """The account's nonce at the finality point (the stale-nonce test must not trust unfinal blocks)."""
        return self._qty(await self.rpc.call("eth_getTransactionCount", to_checksum(address), await self._point()),
                         "eth_getTransactionCount")

    async def pending_nonce(self, address: bytes) -> int:
        return self._qty(await self.rpc.call("eth_getTransactionCount", to_checksum(address), "pending"),
                         "eth_getTransactionCount")

    async def _view(self, to: bytes, fns: dict[str, Any], name: str, *args: Any, block: str = "latest") -> tuple[
            Any, ...]:
        fn = fns[name]
        try:
            out = await self.rpc.call("eth_call", {"to": to_checksum(to), "data": _hex(fn.call_data(*args))}, block)
        except RpcError as exc:  # a view of our contracts never reverts: the node or the address is wrong
            raise self._bad(f"eth_call {name}", exc) from None
        data = self._data(out, f"eth_call {name}")
        try:
            return fn.decode_result(data)  # type: ignore[no-any-return]
        except Exception:
            raise self._bad(f"eth_call {name} result", out) from None

    async def balance(self, address: bytes) -> int:
        (b,) = await self._view(self.contracts.token, self.contracts.token_fns, "balanceOf", to_checksum(address))
        return int(b)

    async def fill_record(self, fill_id: bytes) -> FillRecord | None:
        v = await self._view(self.contracts.exchange, self.contracts.exchange_fns, "fills", fill_id)
        d = dict(zip(self.contracts.exchange_fns["fills"].output_names, v))
        status = FILL_STATUS.get(int(d["status"]))
        if status is None:
            raise self._bad("fills.status", d["status"])
        if status == "none":
            return None
        return FillRecord(fill_id, status, bytes.fromhex(d["maker"][2:]), bytes.fromhex(d["taker"][2:]), int(d["wh"]),
                          int(d["intervalStart"]), int(d["noia"]), bytes(d["grid"]), int(d["deliveredWh"]),
                          int(d["payment"]), int(d["refund"]))

    async def escrow(self, fill_id: bytes) -> EscrowInfo | None:
        f = await self.fill_record(fill_id)
        if f is None or f.status != "escrowed":
            return None
        return EscrowInfo(fill_id, f.maker, f.taker, f.noia, f.wh, f.interval_start, f.grid)

    async def order_status(self, maker: bytes, order_nonce: int) -> str:
        """``open``, ``filled`` or ``cancelled``: whether the maker's order nonce is used."""
        (s,) = await self._view(self.contracts.exchange, self.contracts.exchange_fns, "orderStatus",
                                to_checksum(maker), order_nonce)
        if int(s) not in ORDER_STATUS:
            raise self._bad("orderStatus", s)
        return ORDER_STATUS[int(s)]

    async def interval_root(self, grid: bytes, interval_start: int) -> bytes | None:
        """The evidence root an interval was settled with, None while it is not settled."""
        fns = self.contracts.exchange_fns
        (done,) = await self._view(self.contracts.exchange, fns, "intervalSettled", grid, interval_start)
        if not done:
            return None
        (root,) = await self._view(self.contracts.exchange, fns, "evidenceRoot", grid, interval_start)
        return bytes(root)

    async def aclose(self) -> None:
        await self.rpc.aclose()
