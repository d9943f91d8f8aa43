"""The mempool: verified transactions waiting for a block.

Raw transactions come in (JSON-RPC or gossip), are deduplicated by tx hash,
verified in batches in worker processes (verifier.py), then kept per sender by
nonce. The proposer takes, for each sender, the
contiguous run of nonces starting at the account's nonce (``select``); a gap
waits for the missing nonce. Limits: total transactions, per sender, and a
bounded memory of recent rejections (so a status query can say why).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable

from .crypto import keccak256
from .errors import BAD_NONCE
from .tx import VerifiedTx

log = logging.getLogger(__name__)

MEMPOOL_FULL = "mempool_full"
SENDER_LIMIT = "sender_limit"
NONCE_IN_USE = "nonce_in_use"     # another pending tx has this sender's nonce


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
        return self.add_many((vtx,))[0]

    def add_many(self, vtxs: Iterable[VerifiedTx]) -> list[str | None]:
        """``add`` for each, in order (the sender and nonce read straight from the raw tx, the
        ``accepted`` counter bumped once for the batch)."""
        pending, by_sender, nonce_of, rejected = self.pending, self.by_sender, self.nonce_of, self.rejected
        out: list[str | None] = []
        accepted = 0
        for vtx in vtxs:
            h = vtx.hash
            if h in pending:
                out.append(None)
                continue
            raw = vtx.raw
            sender, nonce = raw[9:29], int.from_bytes(raw[29:37], "big")
            err: str | None = None
            slots = by_sender.get(sender)
            if nonce < nonce_of(sender):
                self.reject(h, BAD_NONCE)
                out.append(BAD_NONCE)
                continue
            if slots is not None and nonce in slots:
                err = NONCE_IN_USE
            elif len(pending) >= self.max_txs:
                err = MEMPOOL_FULL
            elif slots is not None and len(slots) >= self.max_per_sender:
                err = SENDER_LIMIT
            if err is not None:
                self._count("rejected_" + err)
                out.append(err)
                continue
            if slots is None:
                slots = by_sender[sender] = {}
            slots[nonce] = h
            pending[h] = vtx
            if h in rejected:
                del rejected[h]
            accepted += 1
            out.append(None)
        if accepted:
            self._count("accepted", accepted)
        return out

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
        pending, by_sender = self.pending, self.by_sender
        senders = set()
        for v in vtxs:
            h, raw = v.hash, v.raw
            sender = raw[9:29]
            senders.add(sender)
            if pending.pop(h, None) is not None:
                slots = by_sender.get(sender)
                if slots is not None:
                    nonce = int.from_bytes(raw[29:37], "big")
                    if slots.get(nonce) == h:
                        del slots[nonce]
        for s in senders:
            slots = by_sender.get(s)
            if slots is None:
                continue
            if slots:
                n = self.nonce_of(s)
                for nonce in [k for k in slots if k < n]:
                    h = slots.pop(nonce)
                    pending.pop(h, None)
                    self.reject(h, BAD_NONCE)
            if not slots:
                del by_sender[s]

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
