"""Transaction intake: raw txs from clients (JSON-RPC) and from peers (TXS gossip) into the mempool.

Two halves. ``admit`` (synchronous) hashes the txs, drops the ones this node
knows (pending, being checked, already final) and queues the rest for their
signature checks, registering each in ``inflight`` at once, so a proposal
arriving next finds them and awaits that check instead of doing it again.
``finish`` (after the checks) adds the valid ones to the mempool; for client
txs it relays the new ones to every peer straight away and returns only once
they are in the intake log (fsync'd): "accepted" means durably queued here and
already passed on. Txs relayed by peers are checked off the connection's read
loop (``on_txs``), so a vote or proposal behind them is not held up.

The TXS frame: ``count u32 | count x (len u32 | signed tx)``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass
from itertools import chain, repeat
from typing import TYPE_CHECKING

from . import p2p
from .crypto import keccak256_many
from .errors import DecodeError
from .tx import HEADER as TX_HEAD
from .tx import MAX_TX_SIZE
from .tx import VerifiedTx
from .verifier import VerifyJob

if TYPE_CHECKING:
    from .node import Node

_U32 = struct.Struct(">I")
TX_GOSSIP_CHUNK = 4096                      # txs per TXS frame
RELAY_BACKLOG = 100_000                     # txs from peers in checking before their connections wait


def encode_txs(raws: list[bytes]) -> bytes:
    return _U32.pack(len(raws)) + b"".join(chain.from_iterable(zip(map(_U32.pack, map(len, raws)), raws)))


def decode_txs(data: bytes) -> list[bytes]:
    if len(data) < 4:
        raise DecodeError("truncated", "txs count")
    (n,) = _U32.unpack_from(data, 0)
    off, out = 4, []
    for _ in range(n):
        if off + 4 > len(data):
            raise DecodeError("truncated", "tx length")
        (ln,) = _U32.unpack_from(data, off)
        off += 4
        if ln > MAX_TX_SIZE or off + ln > len(data):
            raise DecodeError("bad_length", "tx body")
        out.append(data[off:off + ln])
        off += ln
    if off != len(data):
        raise DecodeError("bad_length", "trailing bytes")
    return out


@dataclass(frozen=True)
class Admitted:
    """Txs between ``admit`` and ``finish``: ``todo`` indexes the ones being checked."""
    raws: list[bytes]
    hashes: list[bytes]
    results: list[bytes | str]
    todo: list[int]
    job: VerifyJob


class Intake:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.inflight: dict[bytes, tuple[VerifyJob, int]] = {}   # tx hash -> its check, not done yet
        self.relaying = 0                                          # txs from peers still being checked
        self.relay_room = asyncio.Event()
        self.compacting = False

    async def submit(self, raws: list[bytes], gossip: bool = True, log_intake: bool | None = None
                     ) -> list[bytes | str]:
        """Each result is the tx hash (accepted now or known already) or a rejection reason. From
        clients (``gossip``) new txs are relayed and logged before this returns; txs relayed by
        peers are not logged here (their accepting node holds them)."""
        return await self.finish(self.admit(raws), gossip, gossip if log_intake is None else log_intake)

    async def on_txs(self, raws: list[bytes]) -> None:
        """Txs relayed by a peer, checked in a task of their own. Beyond ``RELAY_BACKLOG`` txs in
        checking, the connection's read loop waits here (backpressure on the peer)."""
        while self.relaying > RELAY_BACKLOG:
            self.relay_room.clear()
            await self.relay_room.wait()
        admitted = self.admit(raws)
        n = len(raws)
        self.relaying += n
        task = asyncio.create_task(self.finish(admitted, gossip=False, log_intake=False))
        task.add_done_callback(lambda _t: self._relayed(n))

    def _relayed(self, n: int) -> None:
        self.relaying -= n
        if self.relaying <= RELAY_BACKLOG:
            self.relay_room.set()

    def admit(self, raws: list[bytes]) -> Admitted:
        node = self.node
        t0 = time.perf_counter()
        hashes = keccak256_many(raws)
        results: list[bytes | str] = [b""] * len(raws)
        todo: list[int] = []
        batch: set[bytes] = set()
        inflight, pending, nonce_of = self.inflight, node.mempool.pending, node._nonce_of
        for i, h in enumerate(hashes):
            if h in pending or h in inflight or h in batch:
                results[i] = h
                continue
            raw = raws[i]
            # only a tx whose nonce the account has used can be final (sender, nonce at fixed offsets)
            if (len(raw) < TX_HEAD.size or int.from_bytes(raw[29:37], "big") < nonce_of(raw[9:29])) \
                    and self.is_final(h):
                results[i] = h
            else:
                todo.append(i)
                batch.add(h)
        todo_hashes = [hashes[i] for i in todo]
        job = node.verifier.start([raws[i] for i in todo], hashes=todo_hashes)
        inflight.update(zip(todo_hashes, zip(repeat(job), range(len(todo)))))
        node._time("intake", t0)
        return Admitted(raws, hashes, results, todo, job)

    async def finish(self, it: Admitted, gossip: bool, log_intake: bool) -> list[bytes | str]:
        node = self.node
        try:
            vs = await it.job.result()
        finally:
            pop, hashes = self.inflight.pop, it.hashes
            for i in it.todo:
                pop(hashes[i], None)
        t0 = time.perf_counter()
        results, mempool = it.results, node.mempool
        fresh: list[bytes] = []
        ok: list[int] = []
        good: list[VerifiedTx] = []
        for i, v in zip(it.todo, vs):
            if isinstance(v, DecodeError):
                mempool.reject(hashes[i], v.reason)
                results[i] = v.reason
            else:
                ok.append(i)
                good.append(v)
        for i, v, err in zip(ok, good, mempool.add_many(good)):
            if err is None:
                results[i] = v.hash
                fresh.append(v.raw)
            else:
                results[i] = err
        if gossip and fresh and node.net.peers:
            # relayed now, before the answer: the frames reach the peers' sockets while the log's fsync
            # runs, so a node killed right after answering has already passed the tx on
            for i in range(0, len(fresh), TX_GOSSIP_CHUNK):
                node.net.broadcast(p2p.TXS, encode_txs(fresh[i:i + TX_GOSSIP_CHUNK]))
        node._time("intake", t0)
        if log_intake and fresh:
            await node.txlog.append(fresh)
        return results

    def is_final(self, h: bytes) -> bool:
        """In a committed block, or in one being written (``admit`` asks only about txs whose nonce
        the account has used: no other can be)."""
        node = self.node
        return node.store.receipt(h) is not None or any(h in c.hashes for c in node.committing)

    async def compact_log(self) -> None:
        """Rewrite the intake log as the txs still pending (its size passed the node's limit)."""
        try:
            await self.node.txlog.compact([v.raw for v in self.node.mempool.pending.values()])
            self.node.count("intake_log_compactions")
        finally:
            self.compacting = False
