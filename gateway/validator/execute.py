"""Execution as pure functions: ``apply_tx`` and ``execute_block``.

``apply_tx(view, vtx, ctx)`` checks one signature-verified transaction against
the state seen through ``view`` (an Overlay) and, only if every rule holds,
writes its effects into the overlay and returns a Receipt. On any rule it
raises ``TxRejected(reason)`` and has written nothing. Checks come first and
writes go to a per-transaction overlay merged at the end, so the "nothing
written on failure" property does not depend on the order of the checks.

``execute_block`` runs a block's transactions over a state and returns the new
accumulator, state root, receipts and the block's writes; it never mutates its
input. The caller (storage) commits the writes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from . import errors as E
from .block import HEADER_SIZE, MAX_BLOCK_SIZE, MAX_BLOCK_TXS, Block, Header, merkle_root
from .errors import BlockInvalid, DecodeError, TxRejected
from .genesis import ChainParams
from .state import (ACCOUNT, ACCOUNT_RECORD, CANCELLED, ESCROW, ESCROW_RECORD, FILLED, LAST_CHECKPOINT, ORDER,
                    Escrow, Overlay, Reclaimed, Settled, StateView, account_key, checkpoint_key, decode_escrow,
                    encode_escrow, encode_reclaimed, encode_settled, encode_u64, escrow_key, get_account,
                    get_last_checkpoint, interval_key, order_key, put_account, reclaimed_key, settled_key,
                    state_root, update_accumulator)
from .tx import FILL, HEADER_SIZE as TX_HEADER_SIZE, RECLAIM, TRANSFER, Cancel, Checkpoint, Fill, Reclaim, \
    SettleBatch, Transfer, VerifiedTx, verify_tx

HeaderLookup = Callable[[int], "Header | None"]


@dataclass(frozen=True)
class BlockContext:
    params: ChainParams
    height: int
    timestamp: int
    header_at: HeaderLookup = lambda h: None  # earlier headers, for checkpoints


_RECEIPT = struct.Struct(">32sQIB20s32s")
RECEIPT_SIZE = _RECEIPT.size      # 97: the tx hash comes first


class Receipt(NamedTuple):
    """A final transaction's receipt (immutable; a named tuple: one is built per transaction)."""
    tx_hash: bytes
    height: int
    index: int  # type: ignore[assignment]  # the position in the block (shadows tuple.index)
    type: int
    sender: bytes
    fill_id: bytes | None = None  # fills and reclaims: the order's EIP-712 digest

    def encode(self) -> bytes:
        return _RECEIPT.pack(self.tx_hash, self.height, self.index, self.type, self.sender,
                             self.fill_id or b"\x00" * 32)

    @classmethod
    def decode(cls, raw: bytes) -> Receipt:
        h, height, index, kind, sender, fid = _RECEIPT.unpack(raw)
        return cls(h, height, index, kind, sender, fid if kind in (FILL, RECLAIM) else None)


def _reject(reason: str, detail: str = "") -> TxRejected:
    return TxRejected(reason, detail)


# a fill's sender and nonce from the tx header, then its signed order:
# nonce | expiry | maker | taker | wh | intervalStart | noia | grid
_FILL_TX = struct.Struct(">9x20sQ32sQ20s20sQQ32s32s")
assert _FILL_TX.size == TX_HEADER_SIZE + 160     # the header, then the 160-byte order
_ZERO_ADDRESS = b"\x00" * 20


def apply_tx(view: Overlay, vtx: VerifiedTx, ctx: BlockContext, index: int = 0) -> Receipt:
    if vtx.raw[0] == FILL:
        return _apply_fill(view, vtx, ctx, index)
    tx = vtx.tx
    sender = tx.sender
    acct = get_account(view, sender)
    if tx.nonce != acct.nonce:
        raise _reject(E.BAD_NONCE, f"nonce {tx.nonce}, account is at {acct.nonce}")
    w = Overlay(view)
    p = tx.payload
    fill_id = None
    if isinstance(p, Transfer):
        if p.amount == 0:
            raise _reject(E.ZERO_AMOUNT)
        if acct.balance < p.amount:
            raise _reject(E.INSUFFICIENT_BALANCE, f"balance {acct.balance} < {p.amount}")
        put_account(w, sender, acct.balance - p.amount, acct.nonce + 1)
        to = get_account(w, p.to)
        put_account(w, p.to, to.balance + p.amount, to.nonce)
    elif isinstance(p, Cancel):
        _check_order_open(view, sender, p.order_nonce)
        w.put(order_key(sender, p.order_nonce), CANCELLED)
        put_account(w, sender, acct.balance, acct.nonce + 1)
    elif isinstance(p, SettleBatch):
        _settle(w, p, sender, ctx)
        a = get_account(w, sender)  # the authority may also be a maker or taker in the batch
        put_account(w, sender, a.balance, acct.nonce + 1)
    elif isinstance(p, Checkpoint):
        _checkpoint(w, p, sender, ctx)
        put_account(w, sender, acct.balance, acct.nonce + 1)
    elif isinstance(p, Reclaim):
        _reclaim(w, p.fill_id, ctx)
        a = get_account(w, sender)  # the sender may be the taker being refunded
        put_account(w, sender, a.balance, acct.nonce + 1)
        fill_id = p.fill_id
    else:  # pragma: no cover - the decoder produces only the types above
        raise TypeError(type(p))
    view.merge(w)
    return Receipt(vtx.hash, ctx.height, index, tx.type, sender, fill_id)


def _apply_fill(view: Overlay, vtx: VerifiedTx, ctx: BlockContext, index: int) -> Receipt:
    """``apply_tx`` for a fill, read straight from the signed bytes (the layout is fixed and was checked
    by ``verify_tx``): the same rules, in the same order, as ``_fill``; every check comes before the
    first write, so a rejection writes nothing."""
    fid = vtx.order_hash
    assert fid is not None
    taker, nonce, onon, expiry, maker, otaker, wh, start, noia_b, grid = _FILL_TX.unpack_from(vtx.raw)
    akey = ACCOUNT + taker
    araw = view.get(akey)
    if araw is None:
        balance = anonce = 0
    else:
        bal_b, anonce = ACCOUNT_RECORD.unpack(araw)
        balance = int.from_bytes(bal_b, "big")
    if nonce != anonce:
        raise _reject(E.BAD_NONCE, f"nonce {nonce}, account is at {anonce}")
    noia = int.from_bytes(noia_b, "big")
    if wh == 0 or noia == 0:
        raise _reject(E.ZERO_AMOUNT, "order with 0 Wh or 0 NOIA")
    if ctx.timestamp >= expiry:
        raise _reject(E.ORDER_EXPIRED, f"expiry {expiry} <= block time {ctx.timestamp}")
    if maker == taker:
        raise _reject(E.SELF_FILL)
    if otaker != _ZERO_ADDRESS and otaker != taker:
        raise _reject(E.ORDER_TAKER_MISMATCH)
    okey = ORDER + maker + onon
    status = view.get(okey)
    if status == FILLED:
        raise _reject(E.ORDER_ALREADY_FILLED, f"order nonce {int.from_bytes(onon, 'big')}")
    if status == CANCELLED:
        raise _reject(E.ORDER_CANCELLED, f"order nonce {int.from_bytes(onon, 'big')}")
    if balance < noia:
        raise _reject(E.INSUFFICIENT_BALANCE, f"balance {balance} < {noia}")
    w = view.writes
    w[akey] = ACCOUNT_RECORD.pack((balance - noia).to_bytes(32, "big"), anonce + 1)
    w[okey] = FILLED
    ekey = ESCROW + fid
    w[ekey] = ESCROW_RECORD.pack(maker, taker, noia_b, wh, start, grid)
    # The escrow is known absent from the base without a lookup: only a fill creates 'E' fid, setting
    # 'O' maker nonce to filled for good in the same tx, and the fill id (the order's digest) fixes the
    # maker and the nonce; that order key is not filled here, so no state ever held this escrow.
    view.read[ekey] = None
    return _new_receipt((vtx.hash, ctx.height, index, FILL, taker, fid))


_new_receipt = partial(tuple.__new__, Receipt)   # Receipt(...) from a tuple, without the keyword handling


def touched_keys(vtxs: Sequence[VerifiedTx]) -> list[bytes]:
    """State keys that executing ``vtxs`` will read (a hint for a store to fetch them in one batch).

    A fill's escrow key is not among them: a fill that applies knows it absent (``_apply_fill``)."""
    out: list[bytes] = []
    for v in vtxs:
        raw = v.raw
        out.append(ACCOUNT + raw[9:29])
        kind = raw[0]
        if kind == FILL:
            out.append(ORDER + raw[TX_HEADER_SIZE + 40:TX_HEADER_SIZE + 60] + raw[TX_HEADER_SIZE:TX_HEADER_SIZE + 32])
        elif kind == TRANSFER:
            out.append(ACCOUNT + raw[TX_HEADER_SIZE:TX_HEADER_SIZE + 20])
        elif kind == RECLAIM:
            out.append(ESCROW + raw[TX_HEADER_SIZE:TX_HEADER_SIZE + 32])
    return out


def _check_order_open(view: StateView, maker: bytes, nonce: int) -> None:
    status = view.get(order_key(maker, nonce))
    if status == FILLED:
        raise _reject(E.ORDER_ALREADY_FILLED, f"order nonce {nonce}")
    if status == CANCELLED:
        raise _reject(E.ORDER_CANCELLED, f"order nonce {nonce}")


def _settle(w: Overlay, p: SettleBatch, sender: bytes, ctx: BlockContext) -> None:
    if sender != ctx.params.complex_authority:
        raise _reject(E.NOT_AUTHORITY, "only the complex authority settles")
    if ctx.timestamp < p.interval_start + ctx.params.interval_seconds:
        raise _reject(E.INTERVAL_NOT_OVER, f"interval {p.interval_start} still open at {ctx.timestamp}")
    ikey = interval_key(p.grid, p.interval_start)
    known = w.get(ikey)
    if known is not None and known != p.evidence_root:
        raise _reject(E.EVIDENCE_ROOT_CONFLICT, "interval already settled with another evidence root")
    for e in p.entries:
        esc = _open_escrow(w, e.fill_id)
        if esc.interval_start != p.interval_start:
            raise _reject(E.INTERVAL_MISMATCH, e.fill_id.hex())
        if esc.grid != p.grid:
            raise _reject(E.GRID_MISMATCH, e.fill_id.hex())
        if e.delivered_wh > esc.wh:
            raise _reject(E.DELIVERED_EXCEEDS_ORDER, f"{e.delivered_wh} Wh > {esc.wh} Wh")
        if e.payment + e.refund != esc.noia:
            raise _reject(E.SETTLE_AMOUNT_MISMATCH, f"{e.payment} + {e.refund} != escrow {esc.noia}")
        w.delete(escrow_key(e.fill_id))
        w.put(settled_key(e.fill_id), encode_settled(Settled(e.delivered_wh, e.payment, e.refund)))
        if e.payment:
            m = get_account(w, esc.maker)
            put_account(w, esc.maker, m.balance + e.payment, m.nonce)
        if e.refund:
            t = get_account(w, esc.taker)
            put_account(w, esc.taker, t.balance + e.refund, t.nonce)
    w.put(ikey, p.evidence_root)


def _open_escrow(w: StateView, fill_id: bytes) -> Escrow:
    """The escrow of a fill that is neither settled nor reclaimed, or the reason it is not there."""
    raw = w.get(escrow_key(fill_id))
    if raw is None:
        if w.get(settled_key(fill_id)) is not None:
            raise _reject(E.FILL_ALREADY_SETTLED, fill_id.hex())
        if w.get(reclaimed_key(fill_id)) is not None:
            raise _reject(E.FILL_RECLAIMED, fill_id.hex())
        raise _reject(E.UNKNOWN_FILL, fill_id.hex())
    return decode_escrow(raw)


def reclaim_deadline(esc: Escrow, params: ChainParams) -> int:
    """The first block time at which ``esc`` may be reclaimed: its interval's end plus the settle timeout."""
    return params.reclaim_deadline(esc.interval_start)


def _reclaim(w: Overlay, fill_id: bytes, ctx: BlockContext) -> None:
    """The settle timeout's way out: the whole escrow back to the taker, the fill closed for good.
    Anyone may send it (the money can only go to the taker); it races settlement fairly, first in wins."""
    esc = _open_escrow(w, fill_id)
    deadline = reclaim_deadline(esc, ctx.params)
    if ctx.timestamp < deadline:
        raise _reject(E.RECLAIM_TOO_EARLY, f"block time {ctx.timestamp} < {deadline}")
    w.delete(escrow_key(fill_id))
    w.put(reclaimed_key(fill_id), encode_reclaimed(Reclaimed(esc.taker, esc.noia)))
    t = get_account(w, esc.taker)
    put_account(w, esc.taker, t.balance + esc.noia, t.nonce)


def _checkpoint(w: Overlay, p: Checkpoint, sender: bytes, ctx: BlockContext) -> None:
    if sender not in ctx.params.authorities:
        raise _reject(E.NOT_AUTHORITY, "only an authority checkpoints")
    if p.height <= get_last_checkpoint(w):
        raise _reject(E.CHECKPOINT_NOT_MONOTONIC, f"height {p.height}")
    h = ctx.header_at(p.height) if p.height < ctx.height else None
    if h is None or h.hash != p.block_hash or h.state_root != p.state_root:
        raise _reject(E.CHECKPOINT_UNKNOWN_BLOCK, f"no block {p.block_hash.hex()} at {p.height} with that root")
    w.put(checkpoint_key(p.height), p.block_hash + p.state_root)
    w.put(LAST_CHECKPOINT, encode_u64(p.height))


# ---- blocks ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockResult:
    accumulator: int
    state_root: bytes
    receipts: tuple[Receipt, ...]
    writes: dict[bytes, bytes | None]
    # the parent state's value of every written key (None: absent), and of other keys execution read;
    # a store need not look for an old row of a key known absent. Empty: nothing known.
    before: Mapping[bytes, bytes | None] = field(default_factory=dict)


def _run(state: StateView, acc: int, vtxs: Sequence[VerifiedTx], ctx: BlockContext) -> BlockResult:
    ov = Overlay(state)
    receipts: list[Receipt] = []
    add = receipts.append
    i = 0
    try:
        for i, vtx in enumerate(vtxs):
            add(_apply_fill(ov, vtx, ctx, i) if vtx.raw[0] == FILL else apply_tx(ov, vtx, ctx, i))
    except TxRejected as exc:
        raise BlockInvalid(E.TX_REJECTED, f"tx {i}: {exc.reason} {exc.detail}", i) from exc
    new_acc = update_accumulator(acc, state, ov.writes, ov.read)
    return BlockResult(new_acc, state_root(new_acc), tuple(receipts), ov.writes, ov.read)


def execute_block(state: StateView, acc: int, block: Block, parent: Header, params: ChainParams,
                  header_at: HeaderLookup = lambda h: None,
                  verified: Sequence[VerifiedTx] | None = None) -> BlockResult:
    """Validate and execute ``block`` on top of ``parent`` (state and accumulator after parent).

    ``verified``: the block's transactions already checked by ``verify_tx`` (e.g. in a
    process pool), in block order; None checks them here.
    """
    h = block.header
    if h.chain_id != params.chain_id or h.height != parent.height + 1 or h.parent_hash != parent.hash \
            or h.timestamp < parent.timestamp:
        raise BlockInvalid(E.BAD_HEADER, "chain id, height, parent hash or timestamp do not follow the parent")
    if verified is None:
        out = []
        for i, raw in enumerate(block.txs):
            try:
                out.append(verify_tx(raw, params.domain))
            except DecodeError as exc:
                raise BlockInvalid(E.TX_REJECTED, f"tx {i}: {exc.reason} {exc.detail}", i) from exc
        verified = out
    elif len(verified) != len(block.txs) or any(v.raw != r for v, r in zip(verified, block.txs)):
        raise ValueError("verified transactions do not match the block")
    if merkle_root([v.hash for v in verified]) != h.tx_root:
        raise BlockInvalid(E.TX_ROOT_MISMATCH)
    res = _run(state, acc, verified, BlockContext(params, h.height, h.timestamp, header_at))
    if res.state_root != h.state_root:
        raise BlockInvalid(E.STATE_ROOT_MISMATCH, f"computed {res.state_root.hex()}")
    return res


def build_block(state: StateView, acc: int, parent: Header, candidates: Sequence[VerifiedTx],
                params: ChainParams, proposer: bytes, timestamp: int, round: int = 0,
                header_at: HeaderLookup = lambda h: None,
                ) -> tuple[Block, BlockResult, list[tuple[VerifiedTx, TxRejected]]]:
    """The proposer's side: apply candidates in order, drop the rejected ones, seal a block.

    Candidates beyond the block's caps are left out (neither kept nor rejected).
    """
    height = parent.height + 1
    ctx = BlockContext(params, height, timestamp, header_at)
    ov = Overlay(state)
    kept: list[VerifiedTx] = []
    receipts: list[Receipt] = []
    rejected: list[tuple[VerifiedTx, TxRejected]] = []
    size = HEADER_SIZE + 4
    for vtx in candidates:
        if len(kept) >= MAX_BLOCK_TXS or size + 4 + len(vtx.raw) > MAX_BLOCK_SIZE:
            break
        try:
            receipts.append(_apply_fill(ov, vtx, ctx, len(kept)) if vtx.raw[0] == FILL
                            else apply_tx(ov, vtx, ctx, len(kept)))
            kept.append(vtx)
            size += 4 + len(vtx.raw)
        except TxRejected as exc:
            rejected.append((vtx, exc))
    new_acc = update_accumulator(acc, state, ov.writes, ov.read)
    root = state_root(new_acc)
    header = Header(params.chain_id, height, round, parent.hash, proposer, timestamp,
                    merkle_root([v.hash for v in kept]), root)
    block = Block(header, tuple(v.raw for v in kept))
    return block, BlockResult(new_acc, root, tuple(receipts), ov.writes, ov.read), rejected

