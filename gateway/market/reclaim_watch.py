"""The reclaim watchtower: send the settle-timeout refund for every fill nobody settled, for whoever took it.

The chain lets *anyone* reclaim a fill once its interval ended ``settle_timeout`` seconds ago, and the
money can only go to the taker (docs/chain.md, "Reclaim: the settle timeout"). So a party that outlives
a dead gateway (the utility's validators, a neighbour's gateway, a homeowner with any key) can give every
stuck taker their NOIA back without holding their keys. ``Watchtower.run_once``:

1. indexes the chain's fills (``ChainFillIndex``, every grid) up to the final head;
2. takes those whose deadline (``ChainParams.reclaim_deadline``) is at or before the clock and that it has
   not closed yet (table ``reclaim_watch``);
3. reads each from the chain (``chain_fill_state``): settled or reclaimed ones are recorded and left alone;
   escrowed ones get ``Reclaim(fill id)`` from the watchtower's own account through the outbox (key
   ``reclaim:0x{fill id}``, so a restarted watchtower sends the same transaction, applied once), and the
   outcome is recorded. A ``reclaim_too_early`` (the gateway clock ahead of the block time) is retried on a
   later pass; other refusals (a settlement that landed first) are recorded with their reason.

The sender needs no NOIA: a reclaim costs only its nonce.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.chain_client import OutboxChainClient
from gateway.db import ensure_schema, transaction
from gateway.validator.errors import RECLAIM_TOO_EARLY
from gateway.validator.genesis import ChainParams

from .reclaim import mark_reclaimed, reclaim_fill
from .settlement_fills import ChainFillIndex, chain_fill_state, rpc_of

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reclaim_watch (
        fill_id   BLOB    PRIMARY KEY CHECK (length(fill_id) = 32),
        outcome   TEXT    NOT NULL,   -- reclaimed (by us) | was_settled | was_reclaimed | refused
        reason    TEXT,               -- the chain's reason when refused
        refund    TEXT,               -- decimal NOIA returned to the taker (reclaimed)
        tx_hash   BLOB,
        height    INTEGER,
        noted_ms  INTEGER NOT NULL
    ) WITHOUT ROWID""",
)


@dataclass(frozen=True)
class WatchOutcome:
    fill_id: bytes
    outcome: str
    reason: str | None = None
    refund: int | None = None

    def to_json(self) -> dict[str, object]:
        return {"fill_id": "0x" + self.fill_id.hex(), "outcome": self.outcome, "reason": self.reason,
                "refund": None if self.refund is None else str(self.refund)}


class Watchtower:
    """Reclaims expired, unsettled fills from ``sender``'s account (the client's keyring signs for it)."""

    def __init__(self, conn: sqlite3.Connection, client: OutboxChainClient, index: ChainFillIndex,
                 params: ChainParams, sender: bytes, *, clock: Callable[[], float] = time.time,
                 wait_s: float = 60.0, max_per_pass: int = 500) -> None:
        self.conn, self.client, self.index, self.params, self.sender = conn, client, index, params, sender
        self.clock, self.wait_s, self.max_per_pass = clock, wait_s, max_per_pass
        ensure_schema(conn, "reclaim_watch", SCHEMA)

    def due(self) -> list[bytes]:
        """Indexed fills past their deadline that this watchtower has not closed, oldest first."""
        latest = int(self.clock()) - self.params.interval_seconds - self.params.settle_timeout
        return [bytes(f) for (f,) in self.conn.execute(
            "SELECT c.fill_id FROM settlement_chain_fills c WHERE c.interval_start <= ? AND NOT EXISTS "
            "(SELECT 1 FROM reclaim_watch w WHERE w.fill_id = c.fill_id) ORDER BY c.interval_start, c.fill_id "
            "LIMIT ?", (latest, self.max_per_pass))]

    def _note(self, o: WatchOutcome, tx_hash: bytes | None = None, height: int | None = None) -> None:
        with transaction(self.conn) as c:
            c.execute("INSERT OR REPLACE INTO reclaim_watch VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (o.fill_id, o.outcome, o.reason, None if o.refund is None else str(o.refund), tx_hash, height,
                       int(time.time() * 1000)))
            if o.outcome in ("reclaimed", "was_reclaimed"):
                mark_reclaimed(c, o.fill_id)

    async def run_once(self) -> list[WatchOutcome]:
        call = rpc_of(self.client.backend)
        if call is not None:
            await self.index.sync(call, max_blocks=10**9)
        out: list[WatchOutcome] = []
        for fid in self.due():
            st = await chain_fill_state(self.client.backend, fid)
            if st.status == "unknown":
                continue  # indexed from a final block, so only a backend that cannot tell: try again later
            if st.status != "escrowed" or st.escrow is None:
                o = WatchOutcome(fid, "was_settled" if st.status == "settled" else "was_reclaimed")
                self._note(o)
                out.append(o)
                continue
            res = await reclaim_fill(self.client, st.escrow.taker, fid, self.params, wait_s=self.wait_s,
                                     clock=self.clock, sender=self.sender)
            r = res.receipt
            if r.ok:
                o = WatchOutcome(fid, "reclaimed", refund=res.refund)
                log.info("reclaim watch: 0x%s refunded %d to its taker (tx 0x%s)", fid.hex(), res.refund,
                         (r.tx_hash or b"").hex())
            elif r.reason == RECLAIM_TOO_EARLY:
                continue  # the chain's clock is behind ours: next pass
            else:
                o = WatchOutcome(fid, "refused", reason=r.reason)
                log.warning("reclaim watch: 0x%s refused by the chain: %s", fid.hex(), r.reason)
            self._note(o, r.tx_hash, r.height)
            out.append(o)
        return out

    async def run(self, stop: asyncio.Event, every_s: float = 60.0) -> None:
        """``run_once`` every ``every_s`` seconds until ``stop`` is set; a failing pass is logged and retried."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # the loop outlives any one failure (chain down, ...)
                log.exception("reclaim watch: pass failed; retrying")
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except asyncio.TimeoutError:
                pass
