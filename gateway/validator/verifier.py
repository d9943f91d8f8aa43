"""Signature checks in a process pool, with urgent work ahead of bulk intake.

Every transaction a node holds was checked by ``tx.verify_tx`` in one of these
workers. Two kinds of work share them: *bulk* (client and gossip intake, which
can wait) and *urgent* (the transactions of a proposal this node must validate
before it votes, which holds up consensus). Work is cut into chunks; only a few
chunks per worker are handed to the pool at a time and the rest wait here, so
an urgent chunk overtakes every queued bulk chunk, and a bulk job that a
proposal turns out to need can be promoted (``promote``) instead of being
checked a second time.

Workers answer only what the node lacks: per tx the order hash (b"" for a valid
tx that is not a fill) or ``(reason, detail)``, about 35 bytes instead of a
pickled object graph; the tx hash is the one the node computed at intake and
handed to ``start`` (a tx is hashed once per node, not again in the worker). With
no workers the same queues are worked off on the node's own loop, 32 txs per
turn: the choice for validators that share a machine (no IPC, no extra process
competing for a core they do not have).
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Union

from .crypto import ZERO_ADDRESS, keccak256, keccak256_many, recover_many
from .errors import DecodeError
from .genesis import ChainParams
from .order import ORDER_TYPEHASH, SIGNED_ORDER_SIZE, Domain
from .tx import FILL, HEADER_SIZE, SIG_PREFIX, SIG_SIZE, VerifiedTx, verify_tx

Checked = Union[bytes, tuple[str, str]]
Result = Union[VerifiedTx, DecodeError]


FILL_SIZE = HEADER_SIZE + SIGNED_ORDER_SIZE + SIG_SIZE   # 327: every fill has this one length
# a fill's fields in one unpack: type + chain id, sender, nonce, then the order (nonce, expiry, maker,
# taker, wh, interval start, noia + grid), the order's signature, the tx signature
_FILL = struct.Struct(">9s20s8s32s8s20s20s8s8s64s65s65s")
_BODY = FILL_SIZE - SIG_SIZE
_Z12, _Z24 = b"\x00" * 12, b"\x00" * 24


def _fill_order_hashes(raws: Sequence[bytes], head: bytes, prefix: bytes) -> list[bytes | None]:
    """Per raw tx, the order hash of a fill that ``verify_tx`` accepts, or None for anything else (a
    fill it rejects, another type, another chain): ``head`` = type byte + chain id, ``prefix`` = 0x19
    0x01 + the domain separator. The tx signature over ``keccak256(0x19 'M' || body)`` must recover
    to the sender, and the order's EIP-712 digest (its ABI words are the order's own bytes,
    zero-padded) to the maker; ``recover_many`` applies the same signature rules as
    ``recover_address`` without building the reason, all recoveries of the batch in one loop."""
    out: list[bytes | None] = [None] * len(raws)
    fills: list[int] = []
    want: list[bytes] = []          # per fill: sender, maker
    digests: list[bytes] = []       # per fill: the tx's signing hash, the order's digest
    sigs: list[bytes] = []
    for i, raw in enumerate(raws):
        if len(raw) != FILL_SIZE or not raw.startswith(head):
            continue
        _h, sender, _n, nonce, expiry, maker, taker, wh, start, noia_grid, order_sig, tx_sig = _FILL.unpack(raw)
        if sender == ZERO_ADDRESS or maker == ZERO_ADDRESS:
            continue
        fills.append(i)
        want += (sender, maker)
        digests += (keccak256(SIG_PREFIX + raw[:_BODY]), keccak256(prefix + keccak256(b"".join((
            ORDER_TYPEHASH, nonce, _Z24, expiry, _Z12, maker, _Z12, taker, _Z24, wh, _Z24, start, noia_grid)))))
        sigs += (tx_sig, order_sig)
    got = recover_many(digests, sigs)
    for k, i in enumerate(fills):
        if got[2 * k] == want[2 * k] and got[2 * k + 1] == want[2 * k + 1]:
            out[i] = digests[2 * k + 1]
    return out


def _domain_bytes(domain: Domain) -> tuple[bytes, bytes]:
    return bytes((FILL,)) + domain.chain_id.to_bytes(8, "big"), b"\x19\x01" + domain.separator


def check_tx(raw: bytes, domain: Domain, tx_hash: bytes | None = None) -> VerifiedTx:
    """``tx.verify_tx``, with a short path for fills (most of the traffic); ``tx_hash`` (keccak256 of
    ``raw``) when the caller has it already.

    A fill has one fixed layout, so its two signatures are checked straight from the bytes
    (``_fill_order_hashes``), without building the Tx/Order objects. Only the accepting outcome is
    taken from there: whatever does not pass every check goes to ``verify_tx``, which raises the
    canonical reason, so the two can only differ by speed (tests/gateway/validator/test_verifier.py
    compares them on valid and mutated fills)."""
    (oh,) = _fill_order_hashes((raw,), *_domain_bytes(domain))
    if oh is None:
        return verify_tx(raw, domain)
    return VerifiedTx(None, raw, keccak256(raw) if tx_hash is None else tx_hash, oh)


def check_batch(raws: Sequence[bytes], domain: Domain, hashes: Sequence[bytes] | None = None) -> list[Result]:
    """``check_tx`` over many; ``hashes`` (one per raw) when the caller has them."""
    out: list[Result] = []
    for i, (raw, oh) in enumerate(zip(raws, _fill_order_hashes(raws, *_domain_bytes(domain)))):
        if oh is not None:
            out.append(VerifiedTx(None, raw, keccak256(raw) if hashes is None else hashes[i], oh))
            continue
        try:
            out.append(verify_tx(raw, domain))
        except DecodeError as exc:
            out.append(exc)
    return out


@functools.lru_cache(maxsize=8)
def _worker_domain(chain_id: int, verifying_contract: bytes) -> tuple[Domain, bytes, bytes]:
    d = Domain(chain_id, verifying_contract)
    return (d, *_domain_bytes(d))


def verify_compact(raws: Sequence[bytes], chain_id: int, verifying_contract: bytes) -> list[Checked]:
    """``check_tx`` in a worker process, answering per tx its order hash (b"" for a valid tx that is
    not a fill) or ``(reason, detail)``. The tx hash is not computed here: the node hashed every tx
    at intake already (``Verifier.start``)."""
    domain, head, prefix = _worker_domain(chain_id, verifying_contract)
    out: list[Checked] = []
    for raw, oh in zip(raws, _fill_order_hashes(raws, head, prefix)):
        if oh is not None:
            out.append(oh)
            continue
        try:
            out.append(verify_tx(raw, domain).order_hash or b"")
        except DecodeError as exc:
            out.append((exc.reason, exc.detail))
    return out


def _results(raws: Sequence[bytes], hashes: Sequence[bytes], checked: list[Checked]) -> list[Result]:
    out: list[Result] = []
    for raw, h, a in zip(raws, hashes, checked):
        if type(a) is bytes:
            out.append(VerifiedTx(None, raw, h, a or None))
        else:
            out.append(DecodeError(*a))
    return out


class _Chunk:
    __slots__ = ("raws", "hashes", "fut", "urgent", "sent")

    def __init__(self, raws: Sequence[bytes], hashes: Sequence[bytes], fut: asyncio.Future[list[Result]],
                 urgent: bool) -> None:
        self.raws = raws
        self.hashes = hashes
        self.fut = fut
        self.urgent = urgent
        self.sent = False


class VerifyJob:
    """A batch handed to the ``Verifier``; ``await job.result()`` gives one result per raw tx, in order."""

    def __init__(self, raws: Sequence[bytes], chunks: list[_Chunk], done: list[Result] | None = None) -> None:
        self.raws = raws
        self.chunks = chunks
        self._done = done

    async def result(self) -> list[Result]:
        if self._done is None:
            out: list[Result] = []
            for part in await asyncio.gather(*(c.fut for c in self.chunks)):
                out.extend(part)
            self._done = out
        return self._done


class Verifier:
    """``verify_tx`` in ``workers`` processes, or (``workers`` = 0) on the node's own loop, a small
    chunk at a time with the loop running in between, urgent chunks first: no second process, no
    pickling, for validators that share a machine with others (each has one core or less).
"""

    def __init__(self, params: ChainParams, workers: int, chunk: int = 256, inline_chunk: int = 32) -> None:
        self.chain_id = params.chain_id
        self.contract = params.domain.verifying_contract
        self.domain = params.domain
        self.workers = workers
        self.chunk = chunk
        self.pool = ProcessPoolExecutor(max_workers=workers) if workers > 0 else None
        self.max_sent = 2 * max(1, workers)        # chunks handed to the pool at once
        self.inline_chunk = inline_chunk           # inline: txs checked per turn of the loop (~2.5 ms)
        self.inline: asyncio.Task[None] | None = None
        self.sent = 0
        self.urgent: deque[_Chunk] = deque()
        self.bulk: deque[_Chunk] = deque()
        self.counters: dict[str, int] = {}
        self.seconds = 0.0                         # inline: time spent checking (a cheap profile)

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def start(self, raws: Sequence[bytes], urgent: bool = False, hashes: Sequence[bytes] | None = None
              ) -> VerifyJob:
        """Queue ``raws`` for checking (call on the event loop); the job completes when all are checked.
        ``hashes``: their tx hashes, when the caller has them (else they are computed here, once)."""
        self._count("urgent_txs" if urgent else "bulk_txs", len(raws))
        if not raws:
            return VerifyJob(raws, [], [])
        if hashes is None:
            hashes = keccak256_many(raws)
        loop = asyncio.get_running_loop()
        if self.pool is None:
            size = self.inline_chunk
        else:
            size = max(16, min(self.chunk, -(-len(raws) // (2 * self.workers))))
        chunks = [_Chunk(raws[i:i + size], hashes[i:i + size], loop.create_future(), urgent)
                  for i in range(0, len(raws), size)]
        (self.urgent if urgent else self.bulk).extend(chunks)
        self._pump()
        return VerifyJob(raws, chunks)

    async def verify(self, raws: Sequence[bytes], urgent: bool = False) -> list[Result]:
        return await self.start(raws, urgent).result()

    def promote(self, job: VerifyJob) -> None:
        """A queued bulk job is needed now (a proposal holds its txs): move its unsent chunks ahead."""
        moved = [c for c in job.chunks if not c.sent and not c.urgent]
        if not moved:
            return
        ids = {id(c) for c in moved}
        self.bulk = deque(c for c in self.bulk if id(c) not in ids)
        for c in moved:
            c.urgent = True
        self.urgent.extend(moved)
        self._count("promoted_txs", sum(len(c.raws) for c in moved))

    def _pump(self) -> None:
        if self.pool is None:
            if self.inline is None or self.inline.done():
                self.inline = asyncio.get_running_loop().create_task(self._run_inline())
            return
        loop = asyncio.get_running_loop()
        while self.sent < self.max_sent and (self.urgent or self.bulk):
            c = self.urgent.popleft() if self.urgent else self.bulk.popleft()
            c.sent = True
            self.sent += 1
            f = loop.run_in_executor(self.pool, verify_compact, c.raws, self.chain_id, self.contract)
            f.add_done_callback(functools.partial(self._done, c))

    async def _run_inline(self) -> None:
        while self.urgent or self.bulk:
            c = self.urgent.popleft() if self.urgent else self.bulk.popleft()
            c.sent = True
            if not c.fut.done():
                t0 = time.perf_counter()
                c.fut.set_result(check_batch(c.raws, self.domain, c.hashes))
                self.seconds += time.perf_counter() - t0
            await asyncio.sleep(0)

    def _done(self, c: _Chunk, f: asyncio.Future[list[Checked]]) -> None:
        self.sent -= 1
        if not c.fut.done():
            if f.cancelled():
                c.fut.cancel()
            elif f.exception() is not None:
                c.fut.set_exception(f.exception())  # type: ignore[arg-type]
            else:
                c.fut.set_result(_results(c.raws, c.hashes, f.result()))
        if self.pool is not None:
            try:
                self._pump()
            except RuntimeError:  # the pool was shut down
                pass

    @property
    def queued(self) -> int:
        return len(self.urgent) + len(self.bulk)

    def close(self) -> None:
        for c in (*self.urgent, *self.bulk):
            if not c.fut.done():
                c.fut.cancel()
        self.urgent.clear()
        self.bulk.clear()
        if self.inline is not None:
            self.inline.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
