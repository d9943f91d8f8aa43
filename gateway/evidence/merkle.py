"""The Merkle tree of an interval's readings: RFC 6962 / RFC 9162 hashing, pure functions.

Nothing here touches the gateway: a third party with a raw reading, a proof and a
root needs only this file (or its few lines re-typed) and SHA-256.

- leaf hash  = SHA-256(0x00 || raw COSE_Sign1 bytes, exactly as stored)
- node hash  = SHA-256(0x01 || left || right)
- tree       = RFC 6962 section 2.1 MTH: for n > 1 leaves, split at k, the largest
  power of two < n: MTH(D[0:n]) = node(MTH(D[0:k]), MTH(D[k:n])). An odd node is
  never duplicated nor promoted by a rule of its own; it is the split that decides.
- empty tree = SHA-256("") (an interval with no readings)
- inclusion  = RFC 6962 section 2.1.1 PATH(m, D[n]); verified with the RFC 9162
  section 2.1.3.2 algorithm.

The 0x00 / 0x01 prefixes separate leaves from inner nodes, so a 64-byte node
preimage can never be passed off as a leaf (or the reverse). See docs/evidence.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one leaf (data = a raw COSE_Sign1)."""
    return hashlib.sha256(LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): an inner node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (already ``leaf_hash``-ed), in order."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    # Bottom-up with RFC 6962's shape: pairing left to right and carrying a lone
    # last node up unchanged gives exactly the split-at-largest-power-of-two tree.
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_path(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) of RFC 6962: sibling hashes from the leaf up to the root."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise IndexError(f"leaf index {index} outside a tree of {n}")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    # Descend from the root, collecting the sibling subtree's root at each split;
    # RFC 6962 lists them leaf first, so the list is reversed at the end.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(root_of(leaf_hashes[lo + k:hi]))
            hi = lo + k
        else:
            path.append(root_of(leaf_hashes[lo:lo + k]))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root implied by a leaf hash, its index, the tree size and the path (RFC 9162
    section 2.1.3.2), or None when the path cannot belong to such a tree."""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in path):
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """True when ``leaf`` (a leaf hash) is leaf ``index`` of the ``size``-leaf tree ``root``."""
    return root_from_path(leaf, index, size, path) == root
