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
or ``(reason, detail)``, about 70 bytes instead of a pickled object graph.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Union

from .errors import DecodeError
from .genesis import ChainParams
from .order import Domain
from .tx import VerifiedTx, verify_batch, verify_tx

Checked = Union[tuple[bytes, bytes], tuple[str, str]]
Result = Union[VerifiedTx, DecodeError]


def verify_compact(raws: Sequence[bytes], chain_id: int, verifying_contract: bytes) -> list[Checked]:
    """``verify_tx`` in a worker process, answering per tx ``(hash, order hash or b"")`` or ``(reason, detail)``."""
    domain = Domain(chain_id, verifying_contract)
    out: list[Checked] = []
    for raw in raws:
        try:
            v = verify_tx(raw, domain)
            out.append((v.hash, v.order_hash or b""))
        except DecodeError as exc:
            out.append((exc.reason, exc.detail))
    return out


def _worker_init(nice: int) -> None:
    if nice:
        try:
            os.nice(nice)
        except OSError:  # pragma: no cover - not permitted: run at the normal priority
            pass


class _Chunk:
    __slots__ = ("raws", "fut", "urgent", "sent")

    def __init__(self, raws: Sequence[bytes], fut: asyncio.Future[list[Checked]], urgent: bool) -> None:
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
            parts = await asyncio.gather(*(c.fut for c in self.chunks))
            out: list[Result] = []
            checked = VerifiedTx.checked
            raws = self.raws
            i = 0
            for part in parts:
                for a, b in part:
                    if type(a) is str:
                        out.append(DecodeError(a, b))  # type: ignore[arg-type]
                    else:
                        out.append(checked(raws[i], a, b or None))  # type: ignore[arg-type]
                    i += 1
            self._done = out
        return self._done


class Verifier:
    """``verify_tx`` in ``workers`` processes (0: inline, for tests and tiny nodes).

    ``nice`` lowers the workers' CPU priority: on a machine shared with the node's event loop
    (and, in the bench, with other validators) the loop's consensus steps then run first and
    the bulk checks take the remaining CPU."""

    def __init__(self, params: ChainParams, workers: int, chunk: int = 256, nice: int = 0) -> None:
        self.chain_id = params.chain_id
        self.contract = params.domain.verifying_contract
        self.workers = workers
        self.chunk = chunk
        self.pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(nice,)) \
            if workers > 0 else None
        self.max_sent = 2 * max(1, workers)        # chunks handed to the pool at once
        self.sent = 0
        self.urgent: deque[_Chunk] = deque()
        self.bulk: deque[_Chunk] = deque()
        self.counters: dict[str, int] = {}

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def start(self, raws: Sequence[bytes], urgent: bool = False) -> VerifyJob:
        """Queue ``raws`` for checking (call on the event loop); the job completes when all are checked."""
        self._count("urgent_txs" if urgent else "bulk_txs", len(raws))
        if not raws:
            return VerifyJob(raws, [], [])
        if self.pool is None:
            return VerifyJob(raws, [], verify_batch(raws, self.chain_id, self.contract))
        loop = asyncio.get_running_loop()
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
        assert self.pool is not None
        loop = asyncio.get_running_loop()
        while self.sent < self.max_sent and (self.urgent or self.bulk):
            c = self.urgent.popleft() if self.urgent else self.bulk.popleft()
            c.sent = True
            self.sent += 1
            f = loop.run_in_executor(self.pool, verify_compact, c.raws, self.chain_id, self.contract)
            f.add_done_callback(functools.partial(self._done, c))

    def _done(self, c: _Chunk, f: asyncio.Future[list[Checked]]) -> None:
        self.sent -= 1
        if not c.fut.done():
            if f.cancelled():
                c.fut.cancel()
            elif f.exception() is not None:
                c.fut.set_exception(f.exception())  # type: ignore[arg-type]
            else:
                c.fut.set_result(f.result())
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
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
