"""Decoding and signature verification of ``tele`` messages, in parallel processes.

One P-256 verify costs ~60-75 us, so 10,000 readings/s need most of a core for
signatures alone, more than one Python process can give while it also talks
MQTT and SQLite. ``Verifier`` sends *chunks of messages* (never one reading at
a time: the inter-process cost is per task) to a pool of worker processes, or
verifies in-process when ``workers == 0``.

The worker's job is stateless: strict decode (``decode_message``), kid ==
topic device id, ES256 signature under the key the caller looked up. Every
stateful decision (duplicates, clocks, counters, storage, acks) stays in the
ingest's single writer, which receives results in submission order.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

from gateway.telemetry import TelemetryError, decode_message, verify

log = logging.getLogger(__name__)

# One message to check: (topic device id, pinned 64-byte X||Y key, payload as received)
WorkItem = tuple[bytes, bytes, bytes]
# One COSE_Sign1's outcome: (reason | None, detail, seq, time, import, export, pv, power, flags, raw)
Outcome = tuple[str | None, str, int, int, int, int, int, int, int, bytes]
# One message's result: (reason | None for the whole message, detail, outcomes)
MessageResult = tuple[str | None, str, list[Outcome]]


def verify_messages(items: list[WorkItem]) -> list[MessageResult]:
    """Decode and verify each message; never raises for bad input."""
    out: list[MessageResult] = []
    for topic_id, key, payload in items:
        try:
            sign1s = decode_message(payload)
        except TelemetryError as e:
            out.append((e.reason, e.detail, []))
            continue
        except Exception as e:  # a decoder bug must not take the service down
            log.exception("decoder failed on a %d-byte message", len(payload))
            out.append(("internal_error", repr(e), []))
            continue
        outcomes: list[Outcome] = []
        for s in sign1s:
            r = s.reading
            reason: str | None = None
            detail = ""
            if s.kid != topic_id:
                reason, detail = "topic_mismatch", f"kid {s.kid.hex()} on topic of {topic_id.hex()}"
            else:
                try:
                    verify(s, key)
                except TelemetryError as e:
                    reason, detail = e.reason, e.detail
                except Exception as e:
                    log.exception("verify failed")
                    reason, detail = "internal_error", repr(e)
            outcomes.append((reason, detail, r.seq, r.time, r.import_wh, r.export_wh, r.pv_wh, r.power_w,
                             r.flags, s.raw))
        out.append((None, "", outcomes))
    return out


def _worker_init(parent_pid: int) -> None:
    """Workers ignore Ctrl-C (the parent stops them) and exit when the parent dies (kill -9)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _ready() -> int:
    return os.getpid()


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Verifier:
    """``submit(items) -> Future[list[MessageResult]]``; in-process when ``workers == 0``."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None
        if self.workers > 0:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                             initargs=(os.getpid(),))
            pids = {f.result(60) for f in [self._pool.submit(_ready) for _ in range(self.workers * 2)]}
            log.info("verifier: %d worker processes (%s)", self.workers, ", ".join(map(str, sorted(pids))))

    def submit(self, items: list[WorkItem]) -> Future[list[MessageResult]]:
        if self._pool is not None:
            return self._pool.submit(verify_messages, items)
        fut: Future[list[MessageResult]] = Future()
        fut.set_result(verify_messages(items))
        return fut

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
