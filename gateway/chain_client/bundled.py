"""The bundled PoA chain as a ``ChainBackend``: this chain's tx format over the node's JSON-RPC.

Encoding is the chain core's (gateway/validator/tx.py): ``Tx(chain_id, sender,
nonce, action)`` signed with RFC 6979 (deterministic), tx hash = keccak256 of
the signed bytes. A ``NonceFill`` becomes a ``cancel`` of an order nonce
derived from (sender, nonce) that no real order uses
(``filler_order_nonce``): it has no balance requirement and no effect but
consuming the nonce (and marking that derived order nonce cancelled).

JSON-RPC methods used (the validator node's, gateway/validator/rpc.py):
``chain_sendRawTransaction``, ``chain_sendRawTransactions``,
``chain_getTransactionStatus``, ``chain_getNonce``, ``chain_getBalance``,
``chain_getEscrow``, ``chain_blockNumber``, ``chain_finalizedNumber``,
``chain_waitFinal``, ``chain_status``. Hex is ``0x``-prefixed; integers may
come back as JSON numbers, decimal strings or ``0x`` hex strings. Refusals:
-32000 rejected / -32001 unavailable with ``data.reason``; a batch answers
``{"error": reason}`` per refused item. Tested against the real validator
(tests/gateway/test_chain_client_node.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coincurve import PrivateKey

from gateway.validator.crypto import keccak256
from gateway.validator.genesis import Genesis
from gateway.validator.order import Domain
from gateway.validator.tx import Cancel, Fill, Tx, sign_tx

from .api import ChainTxStatus, EscrowInfo, SignedTx
from .errors import (BAD_RESPONSE, MEMPOOL_FULL, REJECTED_CODE, SENDER_LIMIT, UNAVAILABLE_CODE, ChainClientError,
                     ChainUnavailable, rpc_error)
from .intents import Action, Intent, NonceFill
from .rpc import JsonRpcClient

_STATUSES = ("unknown", "pending", "included", "final", "rejected")
MAX_NODE_WAIT_S = 60.0  # chain_waitFinal's longest wait on the node


def filler_order_nonce(sender: bytes, nonce: int) -> int:
    """The order nonce a ``NonceFill`` cancels: keccak256 of a tag, the sender and the account nonce."""
    return int.from_bytes(keccak256(b"metanoia/nonce-fill/v1" + sender + nonce.to_bytes(8, "big")), "big")


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _bytes(v: Any, n: int | None = None) -> bytes:
    if not isinstance(v, str):
        raise ChainUnavailable(BAD_RESPONSE, f"expected hex, got {v!r}")
    try:
        b = bytes.fromhex(v[2:] if v.startswith(("0x", "0X")) else v)
    except ValueError:
        raise ChainUnavailable(BAD_RESPONSE, f"bad hex {v!r}") from None
    if n is not None and len(b) != n:
        raise ChainUnavailable(BAD_RESPONSE, f"expected {n} bytes, got {len(b)}")
    return b


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ChainUnavailable(BAD_RESPONSE, f"expected an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 16) if v.startswith(("0x", "0X")) else int(v)
        except ValueError:
            pass
    raise ChainUnavailable(BAD_RESPONSE, f"expected an integer, got {v!r}")


def _batch_error(err: Any) -> ChainClientError:
    """One refused item of ``chain_sendRawTransactions``: the node answers ``{"error": reason}`` (the
    chain's reason code, no JSON-RPC code); a full error object is read as well."""
    if isinstance(err, str):
        code = UNAVAILABLE_CODE if err in (MEMPOOL_FULL, SENDER_LIMIT) else REJECTED_CODE
        return rpc_error(code, err, {"reason": err})
    if isinstance(err, dict):
        return rpc_error(_int(err.get("code", REJECTED_CODE)), str(err.get("message", "")), err.get("data"))
    raise ChainUnavailable(BAD_RESPONSE, f"chain_sendRawTransactions: bad item {err!r:.200}")


def _field(d: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in d:
            return d[n]
    raise ChainUnavailable(BAD_RESPONSE, f"missing {names[0]!r} in {d!r}")


class BundledBackend:
    """The bundled validator over JSON-RPC (one node's URL)."""

    rejection_consumes_nonce = False

    def __init__(self, url: str, *, chain_id: int, verifying_contract: bytes, timeout: float = 10.0) -> None:
        self.rpc = JsonRpcClient(url, timeout=timeout)
        self.chain_id = chain_id
        self.domain = Domain(chain_id, verifying_contract)

    @classmethod
    def from_genesis(cls, url: str, genesis: Genesis, *, timeout: float = 10.0) -> BundledBackend:
        return cls(url, chain_id=genesis.chain_id, verifying_contract=genesis.verifying_contract, timeout=timeout)

    @property
    def name(self) -> str:
        return f"metanoia:{self.chain_id}"

    # ---- encoding (pure, deterministic) ----

    def build(self, intent: Intent, nonce: int, key: PrivateKey) -> SignedTx:
        action = intent.action
        payload = Cancel(filler_order_nonce(intent.sender, nonce)) if isinstance(action, NonceFill) else action
        raw = sign_tx(Tx(self.chain_id, intent.sender, nonce, payload), key)
        return SignedTx(raw, keccak256(raw), nonce)

    def fill_id(self, action: Action) -> bytes | None:
        if isinstance(action, Fill):
            return action.signed_order.order.digest(self.domain)
        return None

    # ---- JSON-RPC ----

    async def send(self, raw: bytes) -> bytes:
        h = _bytes(await self.rpc.call("chain_sendRawTransaction", _hex(raw)), 32)
        if h != keccak256(raw):
            raise ChainUnavailable(BAD_RESPONSE, f"node answered hash {h.hex()} for a tx hashing to "
                                                 f"{keccak256(raw).hex()}")
        return h

    async def send_many(self, raws: Sequence[bytes]) -> list[bytes | ChainClientError]:
        res = await self.rpc.call("chain_sendRawTransactions", [_hex(r) for r in raws])
        if not isinstance(res, list) or len(res) != len(raws):
            raise ChainUnavailable(BAD_RESPONSE, f"chain_sendRawTransactions: {len(raws)} sent, answer {res!r:.200}")
        out: list[bytes | ChainClientError] = []
        for item in res:
            if isinstance(item, dict):
                out.append(_batch_error(item.get("error", item)))
            else:
                out.append(_bytes(item, 32))
        return out

    async def tx_status(self, tx_hash: bytes) -> ChainTxStatus:
        res = await self.rpc.call("chain_getTransactionStatus", _hex(tx_hash))
        if res is None:
            return ChainTxStatus("unknown")
        if not isinstance(res, dict) or res.get("status") not in _STATUSES:
            raise ChainUnavailable(BAD_RESPONSE, f"chain_getTransactionStatus: {res!r:.200}")
        height = res.get("height")
        reason = res.get("reason")
        return ChainTxStatus(res["status"], None if height is None else _int(height),
                             None if reason is None else str(reason))

    async def wait_final_on_node(self, tx_hash: bytes, timeout_s: float) -> ChainTxStatus:
        """``chain_waitFinal``: a long poll on the node (the outbox follower polls status instead)."""
        timeout_s = max(0.0, min(timeout_s, MAX_NODE_WAIT_S))
        res = await self.rpc.call("chain_waitFinal", _hex(tx_hash), timeout_s, timeout=timeout_s + self.rpc.timeout)
        if isinstance(res, dict) and res.get("status") in _STATUSES:
            h = res.get("height")
            return ChainTxStatus(res["status"], None if h is None else _int(h), res.get("reason"))
        return await self.tx_status(tx_hash)

    async def nonce(self, address: bytes) -> int:
        return _int(await self.rpc.call("chain_getNonce", _hex(address)))

    async def balance(self, address: bytes) -> int:
        return _int(await self.rpc.call("chain_getBalance", _hex(address)))

    async def escrow(self, fill_id: bytes) -> EscrowInfo | None:
        res = await self.rpc.call("chain_getEscrow", _hex(fill_id))
        if res is None:
            return None
        if not isinstance(res, dict):
            raise ChainUnavailable(BAD_RESPONSE, f"chain_getEscrow: {res!r:.200}")
        if res.get("status") in ("settled", "reclaimed"):  # paid out or refunded: no escrow any more
            return None
        return EscrowInfo(fill_id, _bytes(_field(res, "maker"), 20), _bytes(_field(res, "taker"), 20),
                          _int(_field(res, "noia")), _int(_field(res, "wh")),
                          _int(_field(res, "interval_start", "intervalStart")), _bytes(_field(res, "grid"), 32))

    async def block_number(self) -> int:
        return _int(await self.rpc.call("chain_blockNumber"))

    async def finalized_number(self) -> int:
        return _int(await self.rpc.call("chain_finalizedNumber"))

    async def node_status(self) -> Any:
        return await self.rpc.call("chain_status")

    async def aclose(self) -> None:
        await self.rpc.aclose()
