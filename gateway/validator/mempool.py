"""The mempool: verified transactions waiting for a block, and the process pool that verifies them.

Raw transactions come in (JSON-RPC or gossip), are deduplicated by tx hash,
verified in batches by ``tx.verify_batch`` in worker processes (``Verifier``),
then kept per sender by nonce. The proposer takes, for each sender, the
contiguous run of nonces starting at the account's nonce (``select``); a gap
waits for the missing nonce. Limits: total transactions, per sender, and a
bounded memory of recent rejections (so a status query can say why).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Union

from .crypto import keccak256
from .errors import BAD_NONCE, DecodeError
from .genesis import ChainParams
from .order import Domain
from .tx import VerifiedTx, verify_batch, verify_tx

log = logging.getLogger(__name__)

MEMPOOL_FULL = "mempool_full"
SENDER_LIMIT = "sender_limit"
NONCE_IN_USE = "nonce_in_use"     # another pending tx has this sender's nonce


Checked = Union[tuple[bytes, bytes], tuple[str, str]]


def verify_compact(raws: Sequence[bytes], chain_id: int, verifying_contract: bytes) -> list[Checked]:
    """``verify_tx`` in a worker process, answering only what the node lacks: per tx
    ``(tx hash, order hash or b"")`` or ``(reason, detail)``. About 70 bytes a tx cross the pipe
    instead of a pickled transaction object graph, and nothing is decoded on the event loop."""
    domain = Domain(chain_id, verifying_contract)
    out: list[Checked] = []
    for raw in raws:
        try:
            v = verify_tx(raw, domain)
            out.append((v.hash, v.order_hash or b""))
        except DecodeError as exc:
            out.append((exc.reason, exc.detail))
    return out


class Verifier:
    """``verify_batch`` in a process pool (``workers`` > 0) or inline (0: tests, tiny nodes)."""

    def __init__(self, params: ChainParams, workers: int, chunk: int = 256) -> None:
        self.chain_id = params.chain_id
        self.contract = params.domain.verifying_contract
        self.workers = workers
        self.chunk = chunk
        self.pool = ProcessPoolExecutor(max_workers=workers) if workers > 0 else None

    async def verify(self, raws: Sequence[bytes]) -> list[VerifiedTx | DecodeError]:
        if not raws:
            return []
        if self.pool is None:
            return verify_batch(raws, self.chain_id, self.contract)
        loop = asyncio.get_running_loop()
        size = max(16, min(self.chunk, -(-len(raws) // (2 * self.workers))))
        futs = [loop.run_in_executor(self.pool, verify_compact, raws[i:i + size], self.chain_id, self.contract)
                for i in range(0, len(raws), size)]
        out: list[VerifiedTx | DecodeError] = []
        checked = VerifiedTx.checked
        i = 0
        for part in await asyncio.gather(*futs):
            for a, b in part:
                if type(a) is str:
                    out.append(DecodeError(a, b))  # type: ignore[arg-type]
                else:
                    out.append(checked(raws[i], a, b or None))  # type: ignore[arg-type]
                i += 1
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


class Mempool:
    """Pending verified transactions, per sender by nonce; ``nonce_of`` reads the committed state."""

    def __init__(self, nonce_of: Callable[[bytes], int], *, max_txs: int = 200_000, max_per_sender: int = 20_000,
                 max_rejected: int = 100_000) -> None:
        self.nonce_of = nonce_of
        self.max_txs = max_txs
        self.max_per_sender = max_per_sender
        self.max_rejected = max_rejected
        self.pending: dict[bytes, VerifiedTx] = {}
        self.by_sender: dict[bytes, dict[int, bytes]] = {}
        self.rejected: OrderedDict[bytes, str] = OrderedDict()
        self.counters: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def reject(self, tx_hash: bytes, reason: str) -> None:
        self.rejected[tx_hash] = reason
        self.rejected.move_to_end(tx_hash)
        while len(self.rejected) > self.max_rejected:
            self.rejected.popitem(last=False)
        self._count(f"rejected_{reason}")

    def add(self, vtx: VerifiedTx) -> str | None:
        """Add a verified tx; returns None (added or already pending) or a rejection reason."""
        h = vtx.hash
        if h in self.pending:
            return None
        sender, nonce = vtx.sender, vtx.nonce
        if nonce < self.nonce_of(sender):
            self.reject(h, BAD_NONCE)
            return BAD_NONCE
        slots = self.by_sender.setdefault(sender, {})
        if nonce in slots:
            self._count("rejected_" + NONCE_IN_USE)
            return NONCE_IN_USE
        if len(self.pending) >= self.max_txs:
            self._count("rejected_" + MEMPOOL_FULL)
            return MEMPOOL_FULL
        if len(slots) >= self.max_per_sender:
            self._count("rejected_" + SENDER_LIMIT)
            return SENDER_LIMIT
        slots[nonce] = h
        self.pending[h] = vtx
        self.rejected.pop(h, None)
        self._count("accepted")
        return None

    def next_nonce(self, sender: bytes) -> int:
        """The account's next nonce counting the contiguous pending run."""
        n = self.nonce_of(sender)
        slots = self.by_sender.get(sender)
        if slots:
            while n in slots:
                n += 1
        return n

    def select(self, limit: int) -> list[VerifiedTx]:
        """Candidates for a block: per sender the contiguous nonces from the account's nonce."""
        out: list[VerifiedTx] = []
        for sender, slots in self.by_sender.items():
            n = self.nonce_of(sender)
            while n in slots and len(out) < limit:
                out.append(self.pending[slots[n]])
                n += 1
            if len(out) >= limit:
                break
        return out

    def get(self, tx_hash: bytes) -> VerifiedTx | None:
        return self.pending.get(tx_hash)

    def remove(self, vtxs: Iterable[VerifiedTx]) -> None:
        """Drop what a committed block included, then anything its senders' nonces made stale."""
        senders = set()
        for v in vtxs:
            if self.pending.pop(v.hash, None) is not None:
                sender, nonce = v.sender, v.nonce
                slots = self.by_sender.get(sender)
                if slots is not None and slots.get(nonce) == v.hash:
                    del slots[nonce]
                senders.add(sender)
            else:
                senders.add(v.sender)
        for s in senders:
            slots = self.by_sender.get(s)
            if slots is None:
                continue
            n = self.nonce_of(s)
            for nonce in [k for k in slots if k < n]:
                h = slots.pop(nonce)
                self.pending.pop(h, None)
                self.reject(h, BAD_NONCE)
            if not slots:
                del self.by_sender[s]

    def drop(self, tx_hash: bytes, reason: str) -> None:
        """A pending tx that a block build rejected (state rule): out, with its reason."""
        v = self.pending.pop(tx_hash, None)
        if v is not None:
            slots = self.by_sender.get(v.sender)
            if slots is not None and slots.get(v.nonce) == tx_hash:
                del slots[v.nonce]
                if not slots:
                    del self.by_sender[v.sender]
        self.reject(tx_hash, reason)


def tx_hash(raw: bytes) -> bytes:
    return keccak256(raw)
