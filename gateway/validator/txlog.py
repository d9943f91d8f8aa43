"""The intake log: transactions this node accepted from clients, on disk before it says "accepted".

An append-only file of records ``len u32 | signed tx``. ``append`` queues records and
returns once they are written and fsync'd; concurrent appends share one fsync (group
commit, in a thread, so the event loop keeps running). On start the node reads the log
back (``load``; a torn last record was never acknowledged and is dropped) and submits
every transaction again: the ones already final are recognised by the intake's dedupe,
the others return to the mempool and are relayed. ``compact(keep)`` rewrites the file
with the transactions still pending (tmp + fsync + rename + directory fsync), in the
same queue as the appends, so no acknowledged record is ever missing from the file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

from gateway.fsutil import replace_durably
from .tx import MAX_TX_SIZE

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")


def encode_records(raws: Sequence[bytes]) -> bytes:
    return b"".join(chain.from_iterable(zip(map(_LEN.pack, map(len, raws)), raws)))


def decode_records(data: bytes) -> tuple[list[bytes], int]:
    """The whole records in ``data`` and the length they cover (the rest is a torn tail)."""
    out: list[bytes] = []
    off, n = 0, len(data)
    while off + 4 <= n:
        (ln,) = _LEN.unpack_from(data, off)
        if ln == 0 or ln > MAX_TX_SIZE or off + 4 + ln > n:
            break
        out.append(data[off + 4:off + 4 + ln])
        off += 4 + ln
    return out, off


class TxLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: list[tuple[bytes | list[bytes], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._f = open(self.path, "ab", buffering=0)
        self.size = self.path.stat().st_size
        self.fsyncs = 0

    def load(self) -> list[bytes]:
        data = self.path.read_bytes()
        raws, whole = decode_records(data)
        if whole != len(data):
            log.warning("intake log %s: dropping a torn last record (%d bytes)", self.path, len(data) - whole)
            self._f.truncate(whole)
            os.fsync(self._f.fileno())
            self.size = whole
        return raws

    async def append(self, raws: Sequence[bytes]) -> None:
        """Returns when ``raws`` are on disk (fsync'd)."""
        if not raws:
            return
        await self._enqueue(encode_records(raws))

    async def compact(self, keep: list[bytes]) -> None:
        """Rewrite the log as ``keep`` (the transactions still pending)."""
        await self._enqueue(keep)

    def _enqueue(self, item: bytes | list[bytes]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await asyncio.to_thread(self._write, [item for item, _ in batch])
            except Exception as exc:   # the disk failed: nobody in this batch was acknowledged
                log.error("intake log %s: %s", self.path, exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _write(self, items: list[bytes | list[bytes]]) -> None:
        buf: list[bytes] = []
        for item in items:
            if isinstance(item, list):           # a compaction: what is queued before it is covered by `keep`
                self._rewrite(item)
                buf = []
            else:
                buf.append(item)
        if buf:
            data = b"".join(buf)
            self._f.write(data)
            os.fsync(self._f.fileno())
            self.size += len(data)
            self.fsyncs += 1

    def _rewrite(self, keep: list[bytes]) -> None:
        data = encode_records(keep)
        self._f.close()
        replace_durably(self.path, data)
        self._f = open(self.path, "ab", buffering=0)
        self.size = len(data)

    def close(self) -> None:
        self._f.close()
