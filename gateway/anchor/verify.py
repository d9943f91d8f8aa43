"""``metanoia chain verify --checkpoint``: prove a side-chain block (and a tx in it) is covered by an anchor.

The side-chain RPC is not trusted: everything it returns is checked against the checkpoint read from the
registry on the main chain, which more than two thirds of the authorities signed:

0. with the side chain's genesis file: the registry anchors that chain (``wrong_chain``);
1. the lowest anchored checkpoint C at or above the block's height H (``no_checkpoint`` if none yet);
2. the raw headers H..C: each decodes (``bad_header``), has the expected height and chain id, and names
   the previous one's hash as its parent (``parent_hash_mismatch``); the header at C hashes to the
   anchored block hash (``checkpoint_hash_mismatch``) and carries the anchored state root;
3. with a tx: the bytes hash to the asked hash (``tx_hash_mismatch``: a forged tx), the RPC places it in
   block H (``tx_not_in_block``), and its Merkle proof leads to H's txRoot (``tx_proof_invalid``).

Since keccak-256 is collision resistant, a header chain that ends in the anchored hash *is* the chain
the authorities signed, so H's txRoot, and every tx proven against it, are part of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.chain_client.errors import ChainClientError
from gateway.chain_client.rpc import JsonRpcClient
from gateway.validator.anchor_rpc import MAX_HEADERS
from gateway.validator.block import Header, verify_merkle_proof
from gateway.validator.crypto import keccak256
from gateway.validator.errors import DecodeError
from gateway.validator.tx import TYPE_NAMES, decode_tx

from .errors import (BAD_HEADER, BAD_RESPONSE, BAD_TX, CHAIN_ID_MISMATCH, CHECKPOINT_HASH_MISMATCH,
                     HEADER_HEIGHT_MISMATCH, HEADER_MISSING, NO_CHECKPOINT, PARENT_HASH_MISMATCH,
                     SIDE_UNAVAILABLE, STATE_ROOT_MISMATCH, TX_HASH_MISMATCH, TX_NOT_IN_BLOCK, TX_PROOF_INVALID,
                     TX_UNKNOWN, WRONG_CHAIN, AnchorError)
from .registry import Anchored, Registry


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _bytes(v: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(v, str) or not v.startswith("0x"):
        raise AnchorError(BAD_RESPONSE, f"{what}: expected 0x-prefixed hex")
    try:
        b = bytes.fromhex(v[2:])
    except ValueError:
        raise AnchorError(BAD_RESPONSE, f"{what}: bad hex") from None
    if size is not None and len(b) != size:
        raise AnchorError(BAD_RESPONSE, f"{what}: expected {size} bytes")
    return b


@dataclass
class Verdict:
    ok: bool
    block: int
    reason: str | None = None
    detail: str | None = None
    block_hash: str | None = None
    checkpoint: dict[str, Any] | None = None
    headers_checked: int = 0
    tx: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


async def _side(rpc: JsonRpcClient, method: str, *params: Any) -> Any:
    try:
        return await rpc.call(method, *params)
    except ChainClientError as exc:
        raise AnchorError(SIDE_UNAVAILABLE, f"{method}: {exc}") from None


async def fetch_headers(rpc: JsonRpcClient, start: int, end: int) -> list[Header]:
    """Headers start..end (inclusive) from the side chain, decoded; nothing about them is trusted yet."""
    out: list[Header] = []
    h = start
    while h <= end:
        want = min(MAX_HEADERS, end - h + 1)
        page = await _side(rpc, "chain_getHeaders", h, want)
        if not isinstance(page, list) or len(page) > want:
            raise AnchorError(BAD_RESPONSE, f"chain_getHeaders: expected a list of at most {want}")
        if not page:
            raise AnchorError(HEADER_MISSING, f"the side chain returned no header at height {h} (asked up to {end})")
        for raw in page:
            b = _bytes(raw, f"header {h}")
            try:
                out.append(Header.decode(b))
            except DecodeError as exc:
                raise AnchorError(BAD_HEADER, f"height {h}: {exc}") from None
            h += 1
    return out


def check_header_chain(headers: list[Header], start: int, anchored: Anchored) -> None:
    """Raises AnchorError unless ``headers`` are heights start..anchored.height, linked by parent hash,
    ending in the anchored block hash and state root."""
    if len(headers) != anchored.height - start + 1:
        raise AnchorError(HEADER_MISSING, f"{len(headers)} headers for heights {start}..{anchored.height}")
    chain_id = headers[0].chain_id
    for i, hd in enumerate(headers):
        if hd.height != start + i:
            raise AnchorError(HEADER_HEIGHT_MISMATCH, f"asked height {start + i}, header says {hd.height}")
        if hd.chain_id != chain_id:
            raise AnchorError(CHAIN_ID_MISMATCH, f"height {hd.height}: chain id {hd.chain_id}, not {chain_id}")
        if i and hd.parent_hash != headers[i - 1].hash:
            raise AnchorError(PARENT_HASH_MISMATCH, f"header {hd.height} names parent {_hex(hd.parent_hash)}, "
                                                    f"header {hd.height - 1} hashes to {_hex(headers[i - 1].hash)}")
    top = headers[-1]
    if top.hash != anchored.block_hash:
        raise AnchorError(CHECKPOINT_HASH_MISMATCH, f"header {top.height} hashes to {_hex(top.hash)}, the anchored "
                                                    f"block hash is {_hex(anchored.block_hash)}")
    if top.state_root != anchored.state_root:   # implied by the hash; checked anyway for a clear reason
        raise AnchorError(STATE_ROOT_MISMATCH, f"header {top.height} state root {_hex(top.state_root)}")


async def fetch_tx_proof(rpc: JsonRpcClient, tx_hash: bytes) -> dict[str, Any]:
    """The side chain's inclusion proof for ``tx_hash`` (not trusted: ``check_tx`` checks it)."""
    p = await _side(rpc, "chain_getTxProof", _hex(tx_hash))
    if p is None:
        raise AnchorError(TX_UNKNOWN, f"the side chain has no final tx {_hex(tx_hash)}")
    if not isinstance(p, dict) or not isinstance(p.get("proof"), list):
        raise AnchorError(BAD_RESPONSE, "chain_getTxProof: expected an object with a proof list")
    return p


def check_tx(p: dict[str, Any], tx_hash: bytes, header: Header) -> dict[str, Any]:
    """The tx's inclusion in ``header``'s block, from the proof ``p``; returns the tx's summary."""
    raw = _bytes(p.get("tx"), "tx")
    if keccak256(raw) != tx_hash:
        raise AnchorError(TX_HASH_MISMATCH, f"the returned tx hashes to {_hex(keccak256(raw))}")
    if p.get("blockNumber") != header.height:
        raise AnchorError(TX_NOT_IN_BLOCK, f"the side chain places the tx in block {p.get('blockNumber')!r}, "
                                           f"not {header.height}")
    proof: list[tuple[bool, bytes]] = []
    for step in p["proof"]:
        if not isinstance(step, list) or len(step) != 2 or not isinstance(step[0], bool):
            raise AnchorError(BAD_RESPONSE, "proof step: [siblingOnTheRight, hash]")
        proof.append((step[0], _bytes(step[1], "proof hash", 32)))
    if not verify_merkle_proof(tx_hash, proof, header.tx_root):
        raise AnchorError(TX_PROOF_INVALID, f"the proof does not lead to block {header.height}'s txRoot "
                                            f"{_hex(header.tx_root)}")
    try:
        tx = decode_tx(raw)
    except DecodeError as exc:
        raise AnchorError(BAD_TX, str(exc)) from None
    return {"hash": _hex(tx_hash), "type": TYPE_NAMES.get(tx.type, str(tx.type)), "sender": _hex(tx.sender),
            "nonce": tx.nonce, "index": p.get("index"), "proof_length": len(proof)}


async def verify_checkpoint(side: JsonRpcClient, registry: Registry, height: int | None,
                            tx_hash: bytes | None = None, *, from_block: int = 0,
                            genesis_hash: bytes | None = None) -> Verdict:
    """The whole check; a failure is a ``Verdict`` with ``ok`` false and the specific ``reason``.

    ``height`` None (with a tx): the block the side chain names for the tx; a wrong name cannot pass,
    since the tx's proof must then check against that block's anchored txRoot. ``genesis_hash`` (from a
    genesis file the verifier holds): the registry must be this side chain's (``wrong_chain``)."""
    if height is None and tx_hash is None:
        raise ValueError("a block height, a tx hash or both")
    v = Verdict(ok=False, block=height if height is not None else 0)
    try:
        if genesis_hash is not None and (reg := await registry.genesis_hash()) != genesis_hash:
            raise AnchorError(WRONG_CHAIN, f"the registry anchors side chain {_hex(reg)}, not {_hex(genesis_hash)}")
        proof = await fetch_tx_proof(side, tx_hash) if tx_hash is not None else None
        if height is None:
            assert proof is not None
            named = proof.get("blockNumber")
            if not isinstance(named, int) or isinstance(named, bool) or named < 1:
                raise AnchorError(BAD_RESPONSE, f"chain_getTxProof: blockNumber {named!r}")
            height = v.block = named
        anchored = await registry.covering(height, from_block)
        if anchored is None:
            latest = await registry.latest()
            raise AnchorError(NO_CHECKPOINT, f"no anchored checkpoint at or above {height} "
                                             f"(latest anchored height {latest.height})")
        v.checkpoint = {"height": anchored.height, "block_hash": _hex(anchored.block_hash),
                        "state_root": _hex(anchored.state_root), "registry": _hex(registry.address)}
        headers = await fetch_headers(side, height, anchored.height)
        check_header_chain(headers, height, anchored)
        v.headers_checked = len(headers)
        v.block_hash = _hex(headers[0].hash)
        if tx_hash is not None and proof is not None:
            v.tx = check_tx(proof, tx_hash, headers[0])
        v.ok = True
    except AnchorError as exc:
        v.reason, v.detail = exc.reason, exc.detail
    return v
