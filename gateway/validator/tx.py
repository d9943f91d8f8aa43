"""The transaction format, defined once: a fixed big-endian layout, signed by
an Ethereum address with secp256k1.

Signed transaction = body || signature (65 bytes r || s || v, v in {27, 28}, low-s)::

    body    = type u8 | chainId u64 | sender 20 | nonce u64 | payload
    payload = transfer   (1): to 20 | amount u256
            | fill       (2): signed order (order.py, 160 + 65)
            | cancel     (3): orderNonce u256
            | settle     (4): grid 32 | intervalStart u64 | evidenceRoot 32 | count u16 |
                              count x (fillId 32 | deliveredWh u64 | payment u256 | refund u256),
                              fill ids strictly ascending
            | checkpoint (5): height u64 | blockHash 32 | stateRoot 32
            | reclaim    (6): fillId 32   (anyone may send it; the escrow goes back to the fill's taker)

The sender signs ``keccak256(0x19 'M' || body)``: the 0x19 prefix keeps it
apart from Ethereum transactions (RLP or EIP-2718 type < 0x7f) and the 'M'
version byte apart from EIP-191 personal messages (0x45) and EIP-712 (0x01).
The sender's address is in the body, so a corrupted signature is a
``signer_mismatch`` rather than a transaction from a stranger. The tx hash is
keccak256 of the whole signed encoding. Every field has one width and every
length is implied by the type (or the settle count), so there is one encoding
per transaction; the decoder rejects anything else with a specific reason.

``verify_tx(raw, domain)`` is a pure function over bytes: it is what a process
pool runs, and what it returns is all that execution needs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from coincurve import PrivateKey

from .crypto import ZERO_ADDRESS, address_of, check_signature_shape, keccak256, recover_address, sign_digest
from .errors import (BAD_FIELD, BAD_LENGTH, NON_CANONICAL, ORDER_BAD_SIGNATURE, SIGNER_MISMATCH, TOO_LARGE,
                     TRUNCATED, UNKNOWN_TYPE, WRONG_CHAIN_ID, DecodeError)
from .order import SIGNED_ORDER_SIZE, Domain, SignedOrder, order_signer

TRANSFER, FILL, CANCEL, SETTLE, CHECKPOINT, RECLAIM = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {TRANSFER: "transfer", FILL: "fill", CANCEL: "cancel", SETTLE: "settle", CHECKPOINT: "checkpoint",
              RECLAIM: "reclaim"}

MAX_TX_SIZE = 65536
MAX_SETTLE_ENTRIES = 512
SIG_PREFIX = b"\x19M"
HEADER = struct.Struct(">BQ20sQ")       # type, chain id, sender, nonce
HEADER_SIZE = HEADER.size               # 37
SIG_SIZE = 65
SETTLE_HEAD = struct.Struct(">32sQ32sH")  # grid, interval start, evidence root, count
SETTLE_ENTRY_SIZE = 32 + 8 + 32 + 32
_U64 = struct.Struct(">Q")
_FIXED_PAYLOAD = {TRANSFER: 52, FILL: SIGNED_ORDER_SIZE, CANCEL: 32, CHECKPOINT: 72, RECLAIM: 32}


@dataclass(frozen=True)
class Transfer:
    to: bytes
    amount: int


@dataclass(frozen=True)
class Fill:
    signed_order: SignedOrder


@dataclass(frozen=True)
class Cancel:
    order_nonce: int


@dataclass(frozen=True)
class Settlement:
    fill_id: bytes
    delivered_wh: int
    payment: int   # to the maker
    refund: int    # to the taker (the shortfall)


@dataclass(frozen=True)
class SettleBatch:
    grid: bytes
    interval_start: int
    evidence_root: bytes
    entries: tuple[Settlement, ...]


@dataclass(frozen=True)
class Checkpoint:
    height: int
    block_hash: bytes
    state_root: bytes


@dataclass(frozen=True)
class Reclaim:
    """Refund an unsettled fill's whole escrow to its taker once the settle timeout has passed
    (docs/chain.md, "Reclaim"): the way out when the interval never gets settled."""
    fill_id: bytes


Payload = Union[Transfer, Fill, Cancel, SettleBatch, Checkpoint, Reclaim]
_TYPE_OF = {Transfer: TRANSFER, Fill: FILL, Cancel: CANCEL, SettleBatch: SETTLE, Checkpoint: CHECKPOINT,
            Reclaim: RECLAIM}


@dataclass(frozen=True)
class Tx:
    chain_id: int
    sender: bytes
    nonce: int
    payload: Payload

    @property
    def type(self) -> int:
        return _TYPE_OF[type(self.payload)]

    def encode_body(self) -> bytes:
        return HEADER.pack(self.type, self.chain_id, self.sender, self.nonce) + _encode_payload(self.payload)

    def signing_hash(self) -> bytes:
        return keccak256(SIG_PREFIX + self.encode_body())


class VerifiedTx:
    """A transaction whose signatures (and the chain id) have been checked.

    ``VerifiedTx.checked(raw, hash, order_hash)`` builds one from what a verifier
    process returns (the checks ran there): the decoded ``tx`` is then produced on
    first use only, so the node never decodes (or unpickles) a fill it executes on
    the fast path; ``sender`` and ``nonce`` sit at fixed offsets of ``raw``.
    Immutable by convention; compares by its signed bytes.
    """

    __slots__ = ("_tx", "raw", "hash", "order_hash")

    def __init__(self, tx: Tx | None, raw: bytes, hash: bytes, order_hash: bytes | None = None) -> None:
        self._tx = tx
        self.raw = raw
        self.hash = hash
        self.order_hash = order_hash  # fills: the order's EIP-712 digest = the fill id

    @classmethod
    def checked(cls, raw: bytes, hash: bytes, order_hash: bytes | None) -> VerifiedTx:
        return cls(None, raw, hash, order_hash)

    @property
    def tx(self) -> Tx:
        t = self._tx
        if t is None:
            t = self._tx = decode_tx(self.raw)
        return t

    @property
    def sender(self) -> bytes:
        return self.raw[9:29]

    @property
    def nonce(self) -> int:
        return int.from_bytes(self.raw[29:37], "big")

    @property
    def type(self) -> int:
        return self.raw[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifiedTx) and other.raw == self.raw and other.order_hash == self.order_hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return f"VerifiedTx(0x{self.hash.hex()}, type={self.type}, nonce={self.nonce})"

    def __reduce__(self) -> tuple[object, ...]:
        return (VerifiedTx.checked, (self.raw, self.hash, self.order_hash))


def _u256(v: int) -> bytes:
    return v.to_bytes(32, "big")


def _encode_payload(p: Payload) -> bytes:
    if isinstance(p, Transfer):
        return p.to + _u256(p.amount)
    if isinstance(p, Fill):
        return p.signed_order.encode()
    if isinstance(p, Cancel):
        return _u256(p.order_nonce)
    if isinstance(p, SettleBatch):
        head = SETTLE_HEAD.pack(p.grid, p.interval_start, p.evidence_root, len(p.entries))
        return head + b"".join(e.fill_id + _U64.pack(e.delivered_wh) + _u256(e.payment) + _u256(e.refund)
                               for e in p.entries)
    if isinstance(p, Checkpoint):
        return _U64.pack(p.height) + p.block_hash + p.state_root
    if isinstance(p, Reclaim):
        if len(p.fill_id) != 32:
            raise ValueError("a fill id is 32 bytes")
        return p.fill_id
    raise TypeError(f"not a payload: {p!r}")


def sign_tx(tx: Tx, key: PrivateKey) -> bytes:
    """The signed encoding (raises ValueError when the key is not the sender's)."""
    if address_of(key) != tx.sender:
        raise ValueError("key does not belong to the transaction's sender")
    body = tx.encode_body()
    return body + sign_digest(key, keccak256(SIG_PREFIX + body))


def _expect(payload_len: int, want: int) -> None:
    if payload_len < want:
        raise DecodeError(TRUNCATED, f"payload {payload_len} bytes, type needs {want}")
    if payload_len > want:
        raise DecodeError(BAD_LENGTH, f"payload {payload_len} bytes, type needs {want}")


def decode_tx(raw: bytes) -> Tx:
    """Strict decode of a signed transaction (signature shape checked, not recovered)."""
    n = len(raw)
    if n > MAX_TX_SIZE:
        raise DecodeError(TOO_LARGE, f"{n} bytes > {MAX_TX_SIZE}")
    if n == 0:
        raise DecodeError(TRUNCATED, "empty")
    kind = raw[0]
    if kind not in TYPE_NAMES:
        raise DecodeError(UNKNOWN_TYPE, f"type {kind}")
    if n < HEADER_SIZE + SIG_SIZE:
        raise DecodeError(TRUNCATED, f"{n} bytes")
    _, chain_id, sender, nonce = HEADER.unpack_from(raw, 0)
    if sender == ZERO_ADDRESS:
        raise DecodeError(BAD_FIELD, "sender is the zero address")
    check_signature_shape(raw[n - SIG_SIZE:])
    plen = n - HEADER_SIZE - SIG_SIZE
    off = HEADER_SIZE
    payload: Payload
    if kind == SETTLE:
        if plen < SETTLE_HEAD.size:
            raise DecodeError(TRUNCATED, "settle header")
        grid, start, root, count = SETTLE_HEAD.unpack_from(raw, off)
        if not 0 < count <= MAX_SETTLE_ENTRIES:
            raise DecodeError(BAD_FIELD, f"settle count {count} not in 1..{MAX_SETTLE_ENTRIES}")
        _expect(plen, SETTLE_HEAD.size + count * SETTLE_ENTRY_SIZE)
        off += SETTLE_HEAD.size
        entries = []
        prev = b""
        for _ in range(count):
            fid = raw[off:off + 32]
            if fid <= prev:
                raise DecodeError(NON_CANONICAL, "settle entries must be in strictly ascending fill id order")
            prev = fid
            entries.append(Settlement(fid, _U64.unpack_from(raw, off + 32)[0],
                                      int.from_bytes(raw[off + 40:off + 72], "big"),
                                      int.from_bytes(raw[off + 72:off + 104], "big")))
            off += SETTLE_ENTRY_SIZE
        payload = SettleBatch(grid, start, root, tuple(entries))
    else:
        _expect(plen, _FIXED_PAYLOAD[kind])
        if kind == FILL:
            payload = Fill(SignedOrder.decode(memoryview(raw)[off:off + SIGNED_ORDER_SIZE]))
        elif kind == TRANSFER:
            to = raw[off:off + 20]
            if to == ZERO_ADDRESS:
                raise DecodeError(BAD_FIELD, "transfer to the zero address")
            payload = Transfer(to, int.from_bytes(raw[off + 20:off + 52], "big"))
        elif kind == CANCEL:
            payload = Cancel(int.from_bytes(raw[off:off + 32], "big"))
        elif kind == RECLAIM:
            payload = Reclaim(raw[off:off + 32])
        else:
            payload = Checkpoint(_U64.unpack_from(raw, off)[0], raw[off + 8:off + 40], raw[off + 40:off + 72])
    return Tx(chain_id, sender, nonce, payload)


def verify_tx(raw: bytes, domain: Domain) -> VerifiedTx:
    """Decode, check the chain id and every signature: (sender, tx) or a DecodeError.

    Pure over (bytes, domain): safe to run in a process pool.
    """
    tx = decode_tx(raw)
    if tx.chain_id != domain.chain_id:
        raise DecodeError(WRONG_CHAIN_ID, f"tx for chain {tx.chain_id}, this is {domain.chain_id}")
    body = raw[:-SIG_SIZE]
    if recover_address(keccak256(SIG_PREFIX + body), raw[-SIG_SIZE:]) != tx.sender:
        raise DecodeError(SIGNER_MISMATCH, "signature does not recover to the sender")
    order_hash = None
    if isinstance(tx.payload, Fill):
        signed = tx.payload.signed_order
        try:
            signer, order_hash = order_signer(signed, domain)
        except DecodeError as exc:
            raise DecodeError(ORDER_BAD_SIGNATURE, f"{exc.reason}: {exc.detail}") from None
        if signer != signed.order.maker:
            raise DecodeError(ORDER_BAD_SIGNATURE, "order signature does not recover to its maker")
    return VerifiedTx(tx, raw, keccak256(raw), order_hash)


def verify_batch(raws: Sequence[bytes], chain_id: int, verifying_contract: bytes) -> list[VerifiedTx | DecodeError]:
    """``verify_tx`` over many transactions; the unit of work for a process pool."""
    domain = Domain(chain_id, verifying_contract)
    out: list[VerifiedTx | DecodeError] = []
    for raw in raws:
        try:
            out.append(verify_tx(raw, domain))
        except DecodeError as exc:
            out.append(exc)
    return out
