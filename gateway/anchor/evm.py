"""The few EVM JSON-RPC calls anchoring needs, over the gateway's JSON-RPC client.

Any EVM chain (anvil in tests, Besu QBFT, geth, the Energy Web Chain) speaks these. Transactions are
legacy EIP-155 (type 0) signed locally with eth-account: every EVM PoA client accepts them, and the
signed bytes are fixed before they are sent, so a relayer can journal them and send the very same
bytes again after a crash (same hash, same nonce: at most one can ever be mined).

A revert is read from ``eth_call`` / ``eth_estimateGas``: the registry's ``Rejected(string reason)``
custom error is decoded into ``Reverted.reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_account import Account

from gateway.chain_client.errors import ChainUnavailable, RpcError
from gateway.chain_client.rpc import JsonRpcClient
from gateway.validator.crypto import keccak256

from .errors import MAIN_UNAVAILABLE, AnchorError

REJECTED_SELECTOR = keccak256(b"Rejected(string)")[:4]
ERROR_SELECTOR = keccak256(b"Error(string)")[:4]      # require(..., "message")
GAS_MARGIN = 1.25


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


def _revert_reason(exc: RpcError) -> str | None:
    """The reason of a revert error object (anvil, geth and Besu put the revert data in ``data``)."""
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data", data.get("result"))
    if not isinstance(data, str) or not data.startswith("0x"):
        return None
    try:
        raw = bytes.fromhex(data[2:])
    except ValueError:
        return None
    if raw[:4] in (REJECTED_SELECTOR, ERROR_SELECTOR):
        try:
            return str(abi_decode(["string"], raw[4:])[0])
        except Exception:
            return None
    return None


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

    async def gas_price(self) -> int:
        return int(await self._call("eth_gasPrice"), 16)

    async def call(self, to: bytes, data: bytes, sender: bytes | None = None) -> bytes:
        tx: dict[str, Any] = {"to": _hex(to), "data": _hex(data)}
        if sender is not None:
            tx["from"] = _hex(sender)
        try:
            return bytes.fromhex(str(await self._call("eth_call", tx, "latest"))[2:])
        except RpcError as exc:
            raise Reverted(_revert_reason(exc) or "reverted", exc.message) from None

    async def estimate_gas(self, sender: bytes, to: bytes | None, data: bytes) -> int:
        """``to`` None: a contract creation."""
        tx = {"from": _hex(sender), "data": _hex(data)}
        if to is not None:
            tx["to"] = _hex(to)
        try:
            return int(await self._call("eth_estimateGas", tx), 16)
        except RpcError as exc:
            raise Reverted(_revert_reason(exc) or "reverted", exc.message) from None

    async def send_raw(self, raw: bytes) -> None:
        """Send signed bytes; "already known" / "nonce too low" (the same bytes sent before) are fine."""
        try:
            await self._call("eth_sendRawTransaction", _hex(raw))
        except RpcError as exc:
            msg = exc.message.lower()
            if not any(s in msg for s in ("already known", "known transaction", "nonce too low",
                                          "already imported", "already exists")):
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


def sign_legacy_tx(secret: bytes, *, chain_id: int, nonce: int, to: bytes | None, data: bytes, gas: int,
                   gas_price: int) -> tuple[bytes, bytes]:
    """(raw signed bytes, tx hash) of an EIP-155 transaction calling ``to`` with ``data`` (None: create)."""
    tx: dict[str, Any] = {"chainId": chain_id, "nonce": nonce, "value": 0, "data": data, "gas": gas,
                          "gasPrice": gas_price}
    if to is not None:
        tx["to"] = _checksum(to)
    signed = Account.sign_transaction(tx, secret)
    return bytes(signed.raw_transaction), bytes(signed.hash)


def _checksum(addr: bytes) -> str:
    from gateway.validator.crypto import to_checksum
    return to_checksum(addr)
