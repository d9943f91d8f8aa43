"""Proposals a validator may be locked on, kept on disk before it precommits them.

A precommit is a lock: once it is in the vote log, a restarted node comes back
locked on that block (consensus.py restores the lock from its own votes) and
will prevote nothing else at that height until it sees a newer proof of lock.
If the block itself was only in memory, a node killed after signing the
precommit but before its commit transaction finished would be locked on a
block it no longer has. With peers it may get it again; a single authority has
nobody to ask and would never make another block.

So the node writes the signed proposal and its block here (tmp + fsync +
rename + folder fsync, in a thread) *before* it signs a precommit for it, and
on restart replays every held proposal above the durable head through the
ordinary proposal path (signature, proposer, re-execution), which lets the
restored lock decide again. Files at or below the committed head are deleted.

File: ``{height:012d}-{round:06d}-{hash16}.prop`` = signed proposal (142 bytes) ‖ block.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from gateway.fsutil import replace_durably

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{12})-(\d{6})-([0-9a-f]{16})\.prop$")


class HeldProposals:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writes: dict[tuple[int, int, bytes], asyncio.Future[None]] = {}  # (height, round, hash) -> write
        self.files: dict[Path, int] = {}                       # file -> height
        self.pruned = -1                                       # highest committed height pruned

    def _path(self, height: int, round: int, block_hash: bytes) -> Path:
        return self.folder / f"{height:012d}-{round:06d}-{block_hash.hex()[:16]}.prop"

    def load(self, above: int) -> dict[int, list[bytes]]:
        """Held proposals above ``above`` (the durable head), per height in round order; the rest is deleted."""
        out: dict[int, list[bytes]] = {}
        for p in sorted(self.folder.iterdir()):
            m = _NAME.match(p.name)
            if m is None:
                if p.name.endswith(".tmp"):     # a write that never finished: never precommitted
                    p.unlink(missing_ok=True)
                continue
            height = int(m.group(1))
            if height <= above:
                p.unlink(missing_ok=True)
                continue
            out.setdefault(height, []).append(p.read_bytes())
            self.files[p] = height
        return out

    def keep(self, height: int, round: int, block_hash: bytes, payload: bytes) -> asyncio.Future[None]:
        """Start writing ``payload`` (the signed proposal for (height, round) + its block) durably; the
        future is done when it is on disk. Idempotent (a failed write is tried again)."""
        key = (height, round, block_hash)
        fut = self.writes.get(key)
        if fut is not None and not (fut.done() and fut.exception() is not None):
            return fut
        path = self._path(height, round, block_hash)
        self.files[path] = height
        fut = asyncio.ensure_future(asyncio.to_thread(replace_durably, path, payload))
        fut.add_done_callback(lambda f: self._written(f, path, height))
        self.writes[key] = fut
        return fut

    def _written(self, fut: asyncio.Future[None], path: Path, height: int) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:   # the precommit that waits for it is not signed (node.py counts it)
            log.error("held proposal %s not written: %r", path.name, exc)
        elif height <= self.pruned:   # its height was committed while it was being written
            self.files.pop(path, None)
            path.unlink(missing_ok=True)

    def mark_durable(self, height: int, round: int, block_hash: bytes) -> None:
        """A proposal replayed from this folder is on disk already."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        self.writes.setdefault((height, round, block_hash), fut)

    def prune(self, height: int) -> None:
        """The block at ``height`` is committed: held proposals up to it are no longer needed (one
        still being written is deleted when its write finishes)."""
        self.pruned = max(self.pruned, height)
        for p in [p for p, h in self.files.items() if h <= height]:
            del self.files[p]
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # pragma: no cover - a disk problem: the next prune retries
                log.warning("held proposal %s: %s", p, exc)
                self.files[p] = height
        self.writes = {k: f for k, f in self.writes.items() if k[0] > height or not f.done()}

    def __len__(self) -> int:
        return len(self.files)

