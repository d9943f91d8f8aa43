"""Signature checks in a process pool, with urgent work ahead of bulk intake.

Every transaction a node holds was checked by ``tx.verify_tx`` in one of these
workers. Two kinds of work share them: *bulk* (client and gossip intake, which
can wait) and *urgent* (the transactions of a proposal this node must validate
before it votes, which holds up consensus). Work is cut into chunks; only a few
chunks per worker are handed to the pool at a time and the rest wait here, so
an urgent chunk overtakes every queued bulk chunk, and a bulk job that a
proposal turns out to need can be promoted (``promote``) instead of being
checked a second time.

Workers answer only what the node lacks: per tx ``(tx hash, order hash or b"")``
or ``(reason, detail)``, about 70 bytes instead of a pickled object graph. With
no workers the same queues are worked off on the node's own loop, 32 txs per
turn: the choice for validators that share a machine (no IPC, no extra process
competing for a core they do not have).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Union

from .crypto import ZERO_ADDRESS, keccak256, recover_address
from .errors import DecodeError
from .genesis import ChainParams
from .order import ORDER_TYPEHASH, SIGNED_ORDER_SIZE, Domain
from .tx import FILL, HEADER_SIZE, SIG_PREFIX, SIG_SIZE, VerifiedTx, verify_tx

Checked = Union[tuple[bytes, bytes], tuple[str, str]]
Result = Union[VerifiedTx, DecodeError]


FILL_SIZE = HEADER_SIZE + SIGNED_ORDER_SIZE + SIG_SIZE   # 327: every fill has this one length
_Z12, _Z24 = b"\x00" * 12, b"\x00" * 24


def check_tx(raw: bytes, domain: Domain) -> VerifiedTx:
    """``tx.verify_tx``, with a short path for fills (most of the traffic).

    A fill has one fixed layout, so its two signatures are checked straight from the bytes:
    the tx signature over ``keccak256(0x19 'M' || body)`` must recover to the sender, and the
    order's EIP-712 digest (its ABI words are the order's own bytes, zero-padded) must recover to
    the maker. That skips building the Tx/Order objects (about 7 of 77 us per fill). Only the
    accepting outcome is taken from here: whatever does not pass every check goes to
    ``verify_tx``, which raises the canonical reason, so the two can only differ by speed
    (tests/gateway/validator/test_verifier.py compares them on valid and mutated fills)."""
    if len(raw) != FILL_SIZE or raw[0] != FILL or int.from_bytes(raw[1:9], "big") != domain.chain_id:
        return verify_tx(raw, domain)
    o = HEADER_SIZE
    sender, maker = raw[9:29], raw[o + 40:o + 60]
    if sender == ZERO_ADDRESS or maker == ZERO_ADDRESS:
        return verify_tx(raw, domain)
    try:
        if recover_address(keccak256(SIG_PREFIX + raw[:-SIG_SIZE]), raw[-SIG_SIZE:]) != sender:
            return verify_tx(raw, domain)
        struct_hash = keccak256(b"".join((
            ORDER_TYPEHASH, raw[o:o + 32], _Z24, raw[o + 32:o + 40], _Z12, maker, _Z12, raw[o + 60:o + 80],
            _Z24, raw[o + 80:o + 88], _Z24, raw[o + 88:o + 96], raw[o + 96:o + 160])))
        digest = keccak256(b"\x19\x01" + domain.separator + struct_hash)
        if recover_address(digest, raw[o + 160:o + SIGNED_ORDER_SIZE]) != maker:
            return verify_tx(raw, domain)
    except DecodeError:
        return verify_tx(raw, domain)
    return VerifiedTx.checked(raw, keccak256(raw), digest)


def check_batch(raws: Sequence[bytes], domain: Domain) -> list[Result]:
    out: list[Result] = []
    for raw in raws:
        try:
            out.append(check_tx(raw, domain))
        except DecodeError as exc:
            out.append(exc)
    return out


def verify_compact(raws: Sequence[bytes], chain_id: int, verifying_contract: bytes) -> list[Checked]:
    """``check_tx`` in a worker process, answering per tx ``(hash, order hash or b"")`` or ``(reason, detail)``."""
    domain = Domain(chain_id, verifying_contract)
    out: list[Checked] = []
    for raw in raws:
        try:
            v = check_tx(raw, domain)
            out.append((v.hash, v.order_hash or b""))
        except DecodeError as exc:
            out.append((exc.reason, exc.detail))
    return out


def _results(raws: Sequence[bytes], checked: list[Checked]) -> list[Result]:
    out: list[Result] = []
    make = VerifiedTx.checked
    for raw, (a, b) in zip(raws, checked):
        if type(a) is str:
            out.append(DecodeError(a, b))  # type: ignore[arg-type]
        else:
            out.append(make(raw, a, b or None))  # type: ignore[arg-type]
    return out


class _Chunk:
    __slots__ = ("raws", "fut", "urgent", "sent")

    def __init__(self, raws: Sequence[bytes], fut: asyncio.Future[list[Result]], urgent: bool) -> None:
        self.raws = raws
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

    def start(self, raws: Sequence[bytes], urgent: bool = False) -> VerifyJob:
        """Queue ``raws`` for checking (call on the event loop); the job completes when all are checked."""
        self._count("urgent_txs" if urgent else "bulk_txs", len(raws))
        if not raws:
            return VerifyJob(raws, [], [])
        loop = asyncio.get_running_loop()
        if self.pool is None:
            size = self.inline_chunk
        else:
            size = max(16, min(self.chunk, -(-len(raws) // (2 * self.workers))))
        chunks = [_Chunk(raws[i:i + size], loop.create_future(), urgent) for i in range(0, len(raws), size)]
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
                c.fut.set_result(check_batch(c.raws, self.domain))
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
                c.fut.set_result(_results(c.raws, f.result()))
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
