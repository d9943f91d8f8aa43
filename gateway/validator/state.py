"""The chain state as key-value bytes, the write overlay, and the state root.

Keys (prefix byte + fixed-width fields) and values::

    'A' address               -> balance u256 | nonce u64          (account)
    'O' maker | nonce u256    -> 1 filled | 2 cancelled             (order nonces used)
    'E' fill id               -> maker | taker | noia u256 | wh u64 | intervalStart u64 | grid 32  (escrow)
    'S' fill id               -> deliveredWh u64 | payment u256 | refund u256   (settled fills)
    'I' grid | intervalStart  -> evidence root 32                  (settled intervals)
    'C' height u64            -> block hash | state root           (checkpoints)
    'K'                       -> height u64                         (last checkpoint)
    'R' fill id               -> taker 20 | refund u256             (reclaimed fills: escrow refunded)

A fill's id is its order's EIP-712 digest: the same on this chain and on the
EVM exchange, known to maker and taker before the fill lands.

State root: an additive multiset hash (AdHash, Bellare-Micciancio) over all
(key, value) pairs. Each pair maps to a 4096-bit element, the 512-byte
BLAKE3 XOF output of ``"metanoia/state/v2" | len(key) | key | value``; the accumulator
is their sum mod 2**4096 and the root is keccak256 of the accumulator. A block
changes the accumulator by subtracting the old element and adding the new one
for each key it writes: O(keys written), no tree to rebalance, independent of
history (two nodes with the same set of pairs have the same root, however they
got there), and recomputable from a state dump. Generalised-birthday
(Wagner) attacks on a sum modulo 2**4096 cost about 2**(2*sqrt(4096)) = 2**128.
What it does not give is a short proof of one key: light-client state proofs
would need a tree (see docs/chain.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from blake3 import blake3

from .crypto import keccak256

ACCOUNT, ORDER, ESCROW, SETTLED, INTERVAL, CHECKPOINT, LAST_CHECKPOINT = b"A", b"O", b"E", b"S", b"I", b"C", b"K"
RECLAIMED = b"R"
FILLED, CANCELLED = b"\x01", b"\x02"

_ACCOUNT = ACCOUNT_RECORD = struct.Struct(">32sQ")
_ESCROW = ESCROW_RECORD = struct.Struct(">20s20s32sQQ32s")
_SETTLED = struct.Struct(">Q32s32s")
_RECLAIMED = struct.Struct(">20s32s")
_U64 = struct.Struct(">Q")


class StateView(Protocol):
    def get(self, key: bytes) -> bytes | None: ...


class Overlay:
    """Writes over a read-only view; ``None`` marks a deletion. Never touches the base (which must not
    change while the overlay is in use).

    ``read`` keeps the base's value of every key read through to it (``None``: absent), so a key is
    looked up in the base once, and the state root's update knows the old value of a key it writes
    without reading it again (``update_accumulator``'s ``before``)."""

    __slots__ = ("base", "writes", "read")

    def __init__(self, base: StateView) -> None:
        self.base = base
        self.writes: dict[bytes, bytes | None] = {}
        self.read: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        w = self.writes
        if key in w:
            return w[key]
        r = self.read
        if key in r:
            return r[key]
        v = r[key] = self.base.get(key)
        return v

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def merge(self, child: Overlay) -> None:
        self.writes.update(child.writes)


class DictState:
    """A plain in-memory state (genesis, tests, the memory store)."""

    __slots__ = ("data",)

    def __init__(self, data: Mapping[bytes, bytes] | None = None) -> None:
        self.data: dict[bytes, bytes] = dict(data or {})

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def apply(self, writes: Mapping[bytes, bytes | None]) -> None:
        for k, v in writes.items():
            if v is None:
                self.data.pop(k, None)
            else:
                self.data[k] = v


# ---- typed records -------------------------------------------------------------------------

class Account(NamedTuple):     # a named tuple: one is built per sender looked up (0.2 us, a dataclass 0.7)
    balance: int = 0
    nonce: int = 0


@dataclass(frozen=True)
class Escrow:
    maker: bytes
    taker: bytes
    noia: int
    wh: int
    interval_start: int
    grid: bytes


@dataclass(frozen=True)
class Settled:
    delivered_wh: int
    payment: int
    refund: int


def account_key(addr: bytes) -> bytes:
    return ACCOUNT + addr


def order_key(maker: bytes, nonce: int) -> bytes:
    return ORDER + maker + nonce.to_bytes(32, "big")


def escrow_key(fill_id: bytes) -> bytes:
    return ESCROW + fill_id


def settled_key(fill_id: bytes) -> bytes:
    return SETTLED + fill_id


def reclaimed_key(fill_id: bytes) -> bytes:
    return RECLAIMED + fill_id


def interval_key(grid: bytes, interval_start: int) -> bytes:
    return INTERVAL + grid + _U64.pack(interval_start)


def checkpoint_key(height: int) -> bytes:
    return CHECKPOINT + _U64.pack(height)


def get_account(view: StateView, addr: bytes) -> Account:
    raw = view.get(ACCOUNT + addr)
    if raw is None:
        return Account()
    bal, nonce = _ACCOUNT.unpack(raw)
    return Account(int.from_bytes(bal, "big"), nonce)


def put_account(view: Overlay, addr: bytes, balance: int, nonce: int) -> None:
    view.writes[ACCOUNT + addr] = _ACCOUNT.pack(balance.to_bytes(32, "big"), nonce)


def encode_escrow(e: Escrow) -> bytes:
    return _ESCROW.pack(e.maker, e.taker, e.noia.to_bytes(32, "big"), e.wh, e.interval_start, e.grid)


def decode_escrow(raw: bytes) -> Escrow:
    maker, taker, noia, wh, start, grid = _ESCROW.unpack(raw)
    return Escrow(maker, taker, int.from_bytes(noia, "big"), wh, start, grid)


def encode_settled(s: Settled) -> bytes:
    return _SETTLED.pack(s.delivered_wh, s.payment.to_bytes(32, "big"), s.refund.to_bytes(32, "big"))


def decode_settled(raw: bytes) -> Settled:
    wh, pay, ref = _SETTLED.unpack(raw)
    return Settled(wh, int.from_bytes(pay, "big"), int.from_bytes(ref, "big"))


@dataclass(frozen=True)
class Reclaimed:
    taker: bytes
    refund: int


def encode_reclaimed(r: Reclaimed) -> bytes:
    return _RECLAIMED.pack(r.taker, r.refund.to_bytes(32, "big"))


def decode_reclaimed(raw: bytes) -> Reclaimed:
    taker, refund = _RECLAIMED.unpack(raw)
    return Reclaimed(taker, int.from_bytes(refund, "big"))


def get_last_checkpoint(view: StateView) -> int:
    raw = view.get(LAST_CHECKPOINT)
    return 0 if raw is None else _U64.unpack(raw)[0]


def encode_u64(v: int) -> bytes:
    return _U64.pack(v)


# ---- the state root ------------------------------------------------------------------------

ACC_BITS = 4096
ACC_BYTES = ACC_BITS // 8
ACC_MASK = (1 << ACC_BITS) - 1
# v1 (until November 2026) hashed with SHAKE-256; BLAKE3's XOF gives the same 4096 bits in about half
# the time (2-3 elements per fill were the largest cost of executing one); every root changed with it.
_ELEM_TAG = b"metanoia/state/v2"
_ROOT_TAG = b"metanoia/state-root/v1"


_PREFIXES = [_ELEM_TAG + bytes((n,)) for n in range(256)]   # the tag and len(key), for every key length
_from_bytes = int.from_bytes


def element(key: bytes, value: bytes) -> int:
    """A pair's 4096-bit element: BLAKE3-XOF(tag | len(key) | key | value), 512 bytes, little-endian."""
    return _from_bytes(blake3(_PREFIXES[len(key)] + key + value).digest(ACC_BYTES), "little")


def accumulate(items: Iterable[tuple[bytes, bytes]]) -> int:
    """The accumulator of a whole state, from scratch."""
    acc = 0
    for k, v in items:
        acc += element(k, v)
    return acc & ACC_MASK


_UNKNOWN: Any = object()


def update_accumulator(acc: int, base: StateView, writes: Mapping[bytes, bytes | None],
                       before: dict[bytes, bytes | None] | None = None) -> int:
    """The accumulator after ``writes`` land on ``base`` (whose accumulator is ``acc``).

    ``before``: the values in ``base`` of keys already known (an ``Overlay``'s ``read``: execution
    has just read most of the keys it writes); the other written keys are read from ``base`` and
    added to it, so afterwards it holds the old value of every written key."""
    if before is None:
        before = {}
    add = 0
    sub = 0
    get = base.get
    known = before.get
    unknown = _UNKNOWN
    el = element
    for k, new in writes.items():
        old = known(k, unknown)
        if old is unknown:
            old = before[k] = get(k)
        if old == new:
            continue
        if old is not None:
            sub += el(k, old)
        if new is not None:
            add += el(k, new)
    return (acc + add - sub) & ACC_MASK


def state_root(acc: int) -> bytes:
    return keccak256(_ROOT_TAG + acc.to_bytes(ACC_BYTES, "little"))


def total_money(items: Iterable[tuple[bytes, bytes]]) -> int:
    """Sum of all balances plus all escrows: constant under every valid transaction."""
    total = 0
    for k, v in items:
        if k[:1] == ACCOUNT:
            total += int.from_bytes(v[:32], "big")
        elif k[:1] == ESCROW:
            total += decode_escrow(v).noia
    return total
