"""A homeowner's way out: take back a fill's escrow when its interval was never settled.

The chain lets anyone reclaim an unsettled fill once its interval ended ``settle_timeout``
seconds ago (docs/chain.md, "Reclaim"); the money can only go to the taker. The gateway
offers it to homeowners for *their own* fills: ``reclaim_fill`` reads the escrow from the
chain, checks that the household is its taker and that the deadline has passed (on the
gateway's clock; the chain decides on the block time and says ``reclaim_too_early`` if the
clocks disagree), then submits ``Reclaim`` through the outbox under the idempotency key
``reclaim:0x{fill id}``, so a repeated request is the same transaction, applied once.

A reclaim spends nothing (the NOIA comes back), so it needs no policy or homeowner
authorisation beyond the household's wish; ``Wallet.sign_tx`` signs it like a cancel.
``reclaim_candidates`` finds a household's fills worth trying in the gateway's ``trades``
table (bought, final, never settled, deadline passed); the chain still has the last word.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.chain_client import Intent, OutboxChainClient, Receipt
from gateway.validator.errors import RECLAIM_TOO_EARLY
from gateway.validator.genesis import ChainParams
from gateway.validator.tx import Reclaim

from .trades import FINAL, RECLAIMED, TradeLog
from .wallet_policy import WalletError

NOT_ESCROWED = "not_escrowed"   # no escrow on the chain: unknown, settled or already reclaimed
NOT_TAKER = "not_taker"         # the household did not take this fill: its escrow is not theirs to ask for


class ReclaimRefused(WalletError):
    """The gateway will not submit this reclaim (``reason``: one of the codes above, or ``reclaim_too_early``)."""


@dataclass(frozen=True)
class ReclaimResult:
    fill_id: bytes
    refund: int          # the escrow the chain held
    deadline: int        # first block time at which the chain allows it
    receipt: Receipt     # final or rejected (with the chain's reason)

    def to_json(self) -> dict[str, object]:
        r = self.receipt
        return {"fill_id": "0x" + self.fill_id.hex(), "refund": str(self.refund), "deadline": self.deadline,
                "status": r.status, "reason": r.reason, "height": r.height,
                "tx_hash": None if r.tx_hash is None else "0x" + r.tx_hash.hex()}


def key_of(fill_id: bytes) -> str:
    """The outbox idempotency key of a fill's reclaim."""
    return "reclaim:0x" + fill_id.hex()


async def reclaim_fill(client: OutboxChainClient, taker: bytes, fill_id: bytes, params: ChainParams, *,
                       wait_s: float = 60.0, clock: Callable[[], float] = time.time,
                       sender: bytes | None = None) -> ReclaimResult:
    """Reclaim ``fill_id``'s escrow for ``taker`` (a household's address); raises ``ReclaimRefused`` before
    submitting anything the chain would refuse for a reason the gateway can see. ``sender``: the account
    that sends it (default: the taker; the watchtower sends from its own)."""
    if len(fill_id) != 32:
        raise ValueError("a fill id is 32 bytes")
    esc = await client.escrow(fill_id)
    if esc is None:
        raise ReclaimRefused(NOT_ESCROWED, f"no escrow for 0x{fill_id.hex()} (unknown, settled or reclaimed)")
    if esc.taker != taker:
        raise ReclaimRefused(NOT_TAKER, "the fill's taker is another account")
    deadline = params.reclaim_deadline(esc.interval_start)
    if clock() < deadline:
        raise ReclaimRefused(RECLAIM_TOO_EARLY, f"reclaimable from {deadline} (unix s)")
    sid = await client.submit(Intent(key_of(fill_id), taker if sender is None else sender, Reclaim(fill_id)))
    return ReclaimResult(fill_id, esc.noia, deadline, await client.wait_final(sid, wait_s))


def reclaim_candidates(conn: sqlite3.Connection, household: str, params: ChainParams, now: float) -> list[bytes]:
    """Fill ids the household bought (``trades``: state final, so never marked settled) whose reclaim
    deadline is at or before ``now``, oldest interval first."""
    TradeLog(conn)  # the table exists
    latest = int(now) - params.interval_seconds - params.settle_timeout  # deadline <= now <=> start <= latest
    return [bytes(f) for (f,) in conn.execute(
        "SELECT fill_id FROM trades WHERE taker_household = ? AND state = ? AND interval_start <= ? "
        "ORDER BY interval_start, fill_id", (household, FINAL, latest))]


def mark_reclaimed(conn: sqlite3.Connection, fill_id: bytes) -> None:
    """Move the fill's ``trades`` row (if any, and if still ``final``) to ``reclaimed``. No transaction of
    its own: settlement calls it inside one."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trades'").fetchone():
        conn.execute("UPDATE trades SET state = ?, updated_at = ? WHERE fill_id = ? AND state = ?",
                     (RECLAIMED, int(time.time()), fill_id, FINAL))
