"""The few EVM JSON-RPC calls anchoring needs, over the gateway's JSON-RPC client.

Any EVM chain (anvil in tests, Besu QBFT, geth, the Energy Web Chain) speaks these. Transactions are
built by the chain client's codec (gateway/chain_client/evm_codec.py ``sign_call``: EIP-1559, type 2,
signed locally, RFC 6979) with fees read here once (``fees``): the signed bytes are fixed before they
are sent, so a relayer can journal them and send the very same bytes again after a crash (same hash,
same nonce: at most one can ever be mined).

A revert is read from ``eth_call`` / ``eth_estimateGas`` with the codec's decoder too (``revert_reason``):
the registry's ``Rejected(string reason)`` is its reason code; anything else is ``reverted`` with a detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.chain_client.errors import ChainUnavailable, RpcError
from gateway.chain_client.evm import SEND_REFUSALS
from gateway.chain_client.evm_codec import Fees, revert_data_of, revert_reason
from gateway.chain_client.rpc import JsonRpcClient

from .errors import BAD_RESPONSE, MAIN_UNAVAILABLE, NO_EIP1559, AnchorError

GAS_MARGIN = 1.25
# "the node has these bytes already": a resend of journalled bytes that is no refusal
_ALREADY_SENT = tuple(frag for frag, outcome, _ in SEND_REFUSALS if outcome in ("known", "nonce_low"))


class Reverted(AnchorError):
    """The call reverts; ``reason`` is the contract's reason code (or ``reverted`` when it gave none)."""


@dataclass(frozen=True)
class EvmReceipt:
    tx_hash: bytes
    status: int
    block_number: int
    logs: tuple[dict[str, Any], ...]
    contract: bytes | None = None      # a contract creation's new address


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _reverted(exc: RpcError) -> Reverted:
    """A revert error object as ``Reverted``: the codec's reason for its revert data, else ``reverted``."""
    data = revert_data_of(exc.data)
    if not data:
        return Reverted("reverted", exc.message)
    reason, detail = revert_reason(data)
    return Reverted(reason, f"{detail}: {exc.message}")


class EvmRpc:
    """One EVM endpoint. ``ChainUnavailable`` from the transport becomes ``AnchorError(main_unavailable)``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.rpc = JsonRpcClient(url, timeout=timeout)
        self.url = url

    async def aclose(self) -> None:
        await self.rpc.aclose()

    async def _call(self, method: str, *params: Any) -> Any:
        try:
            return await self.rpc.call(method, *params)
        except ChainUnavailable as exc:
            raise AnchorError(MAIN_UNAVAILABLE, f"{self.url}: {exc}") from None

    async def chain_id(self) -> int:
        return int(await self._call("eth_chainId"), 16)

    async def block_number(self) -> int:
        return int(await self._call("eth_blockNumber"), 16)

    async def nonce(self, address: bytes, tag: str = "pending") -> int:
        return int(await self._call("eth_getTransactionCount", _hex(address), tag), 16)

    async def fees(self) -> Fees:
        """Fee fields for a tx signed now: the tip the node suggests (``eth_maxPriorityFeePerGas``, 0 where it
        lacks the method) and a cap of twice the latest base fee plus the tip, so the journalled bytes stay
        minable while the base fee doubles. A chain without a base fee takes no type-2 tx: ``no_eip1559``."""
        blk = await self._call("eth_getBlockByNumber", "latest", False)
        base = blk.get("baseFeePerGas") if isinstance(blk, dict) else None
        if base is None:
            raise AnchorError(NO_EIP1559, f"{self.url}: the latest block has no baseFeePerGas (pre-London chain)")
        try:
            tip = int(await self._call("eth_maxPriorityFeePerGas"), 16)
        except RpcError:
            tip = 0
        try:
            return Fees(2 * int(base, 16) + tip, tip)
        except (TypeError, ValueError):
            raise AnchorError(BAD_RESPONSE, f"{self.url}: baseFeePerGas {base!r}") from None

    async def call(self, to: bytes, data: bytes, sender: bytes | None = None) -> bytes:
        tx: dict[str, Any] = {"to": _hex(to), "data": _hex(data)}
        if sender is not None:
            tx["from"] = _hex(sender)
        try:
            return bytes.fromhex(str(await self._call("eth_call", tx, "latest"))[2:])
        except RpcError as exc:
            raise _reverted(exc) from None

    async def estimate_gas(self, sender: bytes, to: bytes | None, data: bytes) -> int:
        """``to`` None: a contract creation."""
        tx = {"from": _hex(sender), "data": _hex(data)}
        if to is not None:
            tx["to"] = _hex(to)
        try:
            return int(await self._call("eth_estimateGas", tx), 16)
        except RpcError as exc:
            raise _reverted(exc) from None

    async def send_raw(self, raw: bytes) -> None:
        """Send signed bytes; "already known" / "nonce too low" (the same bytes sent before) are fine."""
        try:
            await self._call("eth_sendRawTransaction", _hex(raw))
        except RpcError as exc:
            if not any(frag in exc.message.lower() for frag in _ALREADY_SENT):
                raise

    async def receipt(self, tx_hash: bytes) -> EvmReceipt | None:
        r = await self._call("eth_getTransactionReceipt", _hex(tx_hash))
        if not r or r.get("blockNumber") is None:
            return None
        created = r.get("contractAddress")
        return EvmReceipt(tx_hash, int(r["status"], 16), int(r["blockNumber"], 16), tuple(r.get("logs") or ()),
                          bytes.fromhex(created[2:]) if isinstance(created, str) else None)

    async def code(self, address: bytes) -> bytes:
        return bytes.fromhex(str(await self._call("eth_getCode", _hex(address), "latest"))[2:])

    async def logs(self, address: bytes, topic0: bytes, from_block: int = 0) -> list[dict[str, Any]]:
        return list(await self._call("eth_getLogs", {"address": _hex(address), "topics": [_hex(topic0)],
                                                    "fromBlock": hex(from_block), "toBlock": "latest"}))
