"""What the next block builds on: the durable store plus the decided blocks still being written.

A decided block is handed to the store's writer thread (``SqliteStore.stage``) and
the node moves on to the next height at once; until the write has committed, the
block is a ``Candidate`` in ``committing`` and ``Tip`` reads through it, so the next
proposal is built or validated over the decided chain while the disk catches up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block import Block, Header
from .execute import BlockResult
from .storage import SqliteStore
from .tx import VerifiedTx


class Tip:
    """What the next block builds on: the durable store plus the decided blocks still being written
    (oldest first). With nothing in flight it reads exactly the store."""

    def __init__(self, store: SqliteStore, committing: deque[Candidate]) -> None:
        self.store = store
        self.committing = committing

    def get(self, key: bytes) -> bytes | None:
        if self.committing:
            for cand in reversed(self.committing):
                w = cand.result.writes
                if key in w:
                    return w[key]
        return self.store.get(key)

    @property
    def head(self) -> Header:
        return self.committing[-1].block.header if self.committing else self.store.head

    @property
    def accumulator(self) -> int:
        return self.committing[-1].result.accumulator if self.committing else self.store.accumulator

    def header_at(self, height: int) -> Header | None:
        for cand in self.committing:
            if cand.block.header.height == height:
                return cand.block.header
        return self.store.header_at(height)

    def prefetch(self, keys: list[bytes]) -> None:
        self.store.prefetch(keys)


@dataclass(frozen=True)
class Candidate:
    """A block this node built or executed at the current height, ready to commit."""
    block: Block
    result: BlockResult
    verified: tuple[VerifiedTx, ...]
    hashes: frozenset[bytes]
