"""JSON-RPC methods for anchoring (issue 7): checkpoint signatures, raw headers, tx inclusion proofs.

Registered by rpc.py next to the chain API; nothing here touches consensus or the hot path.

=======================================  ==============================================================
method                                   result
=======================================  ==============================================================
chain_signCheckpoint(height, chainId,    {"genesisHash", "height", "blockHash", "stateRoot", "signer",
                     registry)           "signature"}: this authority's EIP-712 signature of the
                                         ``Checkpoint`` of its *final* block at ``height``, for the
                                         registry ``registry`` on the EVM chain ``chainId``
chain_getHeaders(from, count)            raw 144-byte headers (hex) of heights from..from+count-1 that
                                         are final; shorter (or empty) past the final head; count <= 1000
chain_getTxProof(txHash)                 {"blockNumber", "index", "tx" (raw hex), "txRoot", "proof":
                                         [[siblingOnTheRight, hash], ...]} or null if not final
=======================================  ==============================================================

Signing is on request (a relayer pulls), not periodic: the validator then needs no registry
configuration, no main-chain account and no timer, and stays a pure function of its store. It is safe
to sign for any registry: a validator only ever signs a true statement, "block ``height`` of the chain
with this genesis has this hash and this state root", about a block it holds as final (committed =
final, BFT). It refuses a height above its final head (``block_not_final``), the genesis block
(``genesis_not_anchored``: the registry starts above it) and a height its store lacks
(``unknown_block``): -32000 with ``data.reason``, each refusal counted as
``checkpoint_refused_{reason}``, each signature as ``checkpoint_signed``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.jsonrpc import INVALID_PARAMS, Method, RpcError, params_of

from .block import merkle_proof
from .checkpoint import Checkpoint, CheckpointDomain, sign_checkpoint
from .crypto import keccak256, parse_address

if TYPE_CHECKING:
    from .node import Node

REJECTED = -32000                 # the same application code as rpc.py: data.reason says why
MAX_HEADERS = 1000                # headers per chain_getHeaders call (144 KB of hex)
BLOCK_NOT_FINAL = "block_not_final"
GENESIS_NOT_ANCHORED = "genesis_not_anchored"
UNKNOWN_BLOCK = "unknown_block"


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _uint(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 1 << 64:
        raise RpcError(INVALID_PARAMS, f"{what}: a non-negative integer below 2^64")
    return v


def _hash32(v: Any, what: str) -> bytes:
    if not isinstance(v, str) or not v.startswith("0x") or len(v) != 66:
        raise RpcError(INVALID_PARAMS, f"{what}: 0x + 64 hex digits")
    try:
        return bytes.fromhex(v[2:])
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"{what}: bad hex") from None


class AnchorRpc:
    def __init__(self, node: Node) -> None:
        self.node = node

    def methods(self) -> dict[str, Method]:
        return {"chain_signCheckpoint": self.sign_checkpoint, "chain_getHeaders": self.get_headers,
                "chain_getTxProof": self.get_tx_proof}

    def _refuse(self, reason: str, message: str, **data: Any) -> RpcError:
        self.node.count(f"checkpoint_refused_{reason}")
        return RpcError(REJECTED, message, {"reason": reason, **data})

    async def sign_checkpoint(self, params: Any) -> dict[str, Any]:
        height, chain_id, registry = params_of(params, 3, 3)
        height = _uint(height, "height")
        chain_id = _uint(chain_id, "chainId")
        if chain_id == 0:
            raise RpcError(INVALID_PARAMS, "chainId: the main chain's id, above 0")
        domain = CheckpointDomain(chain_id, _registry(registry))
        store = self.node.store
        final = store.head.height
        if height == 0:
            raise self._refuse(GENESIS_NOT_ANCHORED, "block 0 is the genesis; checkpoints start above it")
        if height > final:
            raise self._refuse(BLOCK_NOT_FINAL, f"block {height} is not final here (final height {final})",
                               final=final)
        hd = store.header_at(height)
        if hd is None:
            raise self._refuse(UNKNOWN_BLOCK, f"no block {height} in this validator's store")
        cp = Checkpoint(self.node.genesis.hash, height, hd.hash, hd.state_root)
        sig = sign_checkpoint(cp, domain, self.node.cfg.key)
        self.node.count("checkpoint_signed")
        return {"genesisHash": _hex(cp.genesis_hash), "height": height, "blockHash": _hex(cp.block_hash),
                "stateRoot": _hex(cp.state_root), "signer": _hex(self.node.address), "signature": _hex(sig)}

    async def get_headers(self, params: Any) -> list[str]:
        start, count = params_of(params, 2, 2)
        start = _uint(start, "from")
        count = _uint(count, "count")
        if count > MAX_HEADERS:
            raise RpcError(INVALID_PARAMS, f"count: at most {MAX_HEADERS}")
        store = self.node.store
        end = min(start + count, store.head.height + 1)     # final heights only
        if end <= start:
            return []
        # one range read rather than a query per header: this runs on the node's event loop
        rows = store.conn.execute("SELECT height, header FROM chain_blocks WHERE height >= ? AND height < ? "
                                  "ORDER BY height", (start, end)).fetchall()
        out: list[str] = []
        for i, (h, raw) in enumerate(rows):
            if h != start + i:    # a gap: stop at it, the caller sees a short answer
                break
            out.append(_hex(bytes(raw)))
        return out

    async def get_tx_proof(self, params: Any) -> dict[str, Any] | None:
        (h,) = params_of(params, 1, 1)
        tx_hash = _hash32(h, "txHash")
        store = self.node.store
        r = store.receipt(tx_hash)
        blk = store.block_at(r.height) if r is not None else None
        if r is None or blk is None:
            return None
        # A full block (20,000 txs) takes about 50 ms to hash and reduce: off the event loop's thread
        # (the store stays on it).
        index = r.index
        proof = await asyncio.to_thread(lambda: merkle_proof([keccak256(t) for t in blk.txs], index))
        self.node.count("tx_proofs_served")
        return {"blockNumber": r.height, "index": r.index, "tx": _hex(blk.txs[r.index]),
                "txRoot": _hex(blk.header.tx_root), "proof": [[right, _hex(sib)] for right, sib in proof]}


def _registry(v: Any) -> bytes:
    try:
        return parse_address(v)
    except (ValueError, TypeError) as exc:
        raise RpcError(INVALID_PARAMS, f"registry: {exc}") from None


def anchor_methods(node: Node) -> dict[str, Method]:
    return AnchorRpc(node).methods()
