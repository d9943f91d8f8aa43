"""The block format: a fixed 144-byte header and the signed transactions.

Header (big-endian)::

    chainId u64 | height u64 | round u32 | parentHash 32 | proposer 20 |
    timestamp u64 (unix s) | txRoot 32 | stateRoot 32

Block hash = keccak256(header). A block = header | count u32 | count x (len u32 | signed tx).
A *compact* block (what a proposal carries: its txs are already at the followers,
gossiped at intake) = header | count u32 | count x tx hash 32, the hashes in block
order, no hash twice; the block it stands for is the one with those txs.
``stateRoot`` is the root *after* the block's transactions (state.py);
``txRoot`` is a keccak Merkle root over the tx hashes in block order: a level
is reduced pairwise with keccak256(0x01 | left | right), an odd last node moves
up unchanged, the empty root is keccak256(""). A 65-byte node preimage can never
be a signed transaction (at least 102 bytes), so leaves and inner nodes cannot
be confused. Consensus signatures (votes, commits) sign the block hash and live
beside the block, not in it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

from .crypto import keccak256
from .errors import BAD_LENGTH, TOO_LARGE, TRUNCATED, DecodeError
from .tx import MAX_TX_SIZE

HEADER = struct.Struct(">QQI32s20sQ32s32s")
HEADER_SIZE = HEADER.size  # 144
MAX_BLOCK_TXS = 20000
MAX_BLOCK_SIZE = 32 * 1024 * 1024
EMPTY_ROOT = keccak256(b"")
_U32 = struct.Struct(">I")
DUPLICATE_TX = "duplicate_tx"


@dataclass(frozen=True)
class Header:
    chain_id: int
    height: int
    round: int
    parent_hash: bytes
    proposer: bytes
    timestamp: int
    tx_root: bytes
    state_root: bytes

    def encode(self) -> bytes:
        return HEADER.pack(self.chain_id, self.height, self.round, self.parent_hash, self.proposer,
                           self.timestamp, self.tx_root, self.state_root)

    @cached_property
    def hash(self) -> bytes:
        return keccak256(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) != HEADER_SIZE:
            raise DecodeError(TRUNCATED if len(data) < HEADER_SIZE else BAD_LENGTH, "header is 144 bytes")
        return cls(*HEADER.unpack(data))


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[bytes, ...]

    def encode(self) -> bytes:
        parts = [self.header.encode(), _U32.pack(len(self.txs))]
        for raw in self.txs:
            parts.append(_U32.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)

    @property
    def hash(self) -> bytes:
        return self.header.hash


def _header_and_count(data: bytes, what: str, items: str) -> tuple[Header, int]:
    """The header and the u32 count after it, both block forms' common prefix (count capped)."""
    if len(data) < HEADER_SIZE + 4:
        raise DecodeError(TRUNCATED, what)
    header = Header.decode(data[:HEADER_SIZE])
    (count,) = _U32.unpack_from(data, HEADER_SIZE)
    if count > MAX_BLOCK_TXS:
        raise DecodeError(TOO_LARGE, f"{count} {items} > {MAX_BLOCK_TXS}")
    return header, count


def decode_block(data: bytes) -> Block:
    """Strict: size caps, every length consistent, no trailing bytes (txs decoded later)."""
    n = len(data)
    if n > MAX_BLOCK_SIZE:
        raise DecodeError(TOO_LARGE, f"block {n} bytes")
    header, count = _header_and_count(data, "block header", "txs")
    off = HEADER_SIZE + 4
    txs = []
    for _ in range(count):
        if off + 4 > n:
            raise DecodeError(TRUNCATED, "tx length")
        (ln,) = _U32.unpack_from(data, off)
        off += 4
        if ln > MAX_TX_SIZE:
            raise DecodeError(TOO_LARGE, f"tx {ln} bytes")
        if off + ln > n:
            raise DecodeError(TRUNCATED, "tx body")
        txs.append(data[off:off + ln])
        off += ln
    if off != n:
        raise DecodeError(BAD_LENGTH, f"{n - off} trailing bytes")
    return Block(header, tuple(txs))


@dataclass(frozen=True)
class CompactBlock:
    """A block as its header and its txs' hashes (keccak256 of each signed tx), in block order."""
    header: Header
    tx_hashes: tuple[bytes, ...]

    def encode(self) -> bytes:
        return b"".join((self.header.encode(), _U32.pack(len(self.tx_hashes)), *self.tx_hashes))

    @property
    def hash(self) -> bytes:
        return self.header.hash


def decode_compact(data: bytes) -> CompactBlock:
    """Strict: at most ``MAX_BLOCK_TXS`` hashes, the length exactly what the count says, no hash twice
    (a block cannot hold one tx twice: the second would fail its nonce)."""
    n = len(data)
    header, count = _header_and_count(data, "compact block header", "tx hashes")
    off = HEADER_SIZE + 4
    if n != off + 32 * count:
        raise DecodeError(TRUNCATED if n < off + 32 * count else BAD_LENGTH, f"{count} tx hashes in {n - off} bytes")
    hashes = tuple(data[i:i + 32] for i in range(off, n, 32))
    if len(set(hashes)) != count:
        raise DecodeError(DUPLICATE_TX, "a tx hash listed twice")
    return CompactBlock(header, hashes)


def merkle_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    level = leaves
    while len(level) > 1:
        nxt = [keccak256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_proof(leaves: list[bytes], index: int) -> list[tuple[bool, bytes]]:
    """Siblings from leaf to root: (sibling is on the right, sibling hash)."""
    if not 0 <= index < len(leaves):
        raise IndexError(index)
    proof: list[tuple[bool, bytes]] = []
    level = leaves
    while len(level) > 1:
        sib = index ^ 1
        if sib < len(level):
            proof.append((sib > index, level[sib]))
        nxt = [keccak256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        index //= 2
    return proof


def verify_merkle_proof(leaf: bytes, proof: list[tuple[bool, bytes]], root: bytes) -> bool:
    node = leaf
    for right, sib in proof:
        node = keccak256(b"\x01" + node + sib) if right else keccak256(b"\x01" + sib + node)
    return node == root
