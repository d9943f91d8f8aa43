"""The operator page's figures: devices, the complex's balance, the chain, settlements, the VPP.

Devices come from ``gateway.status.gateway_status`` (the same figures as
``metanoia gateway status``) plus each device's rejections by reason; the
balance per interval from ``IntervalEngine.balance`` with the P2P Wh of the
``trades`` and ``settlement_fills`` tables; the chain from its validators
(``chain.py``); settlements from ``settlement.interval_rows`` and the chain
client outboxes; the aggregated resources from ``Aggregator``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import db as gdb
from gateway.aggregator.checks import NOTES
from gateway.aggregator.intervals import IntervalEngine
from gateway.market.aggregation import AggregationError, Aggregator
from gateway.market.settlement import interval_rows
from gateway.status import gateway_status

from .chain import ChainView, chain_view
from .household import kst_day_start
from .sources import Complex, tables


@dataclass(frozen=True)
class DeviceRow:
    device_id: str                 # 18 hex digits
    name: str | None               # the installer's label
    household: str | None          # None until paired
    registry: str                  # active | revoked
    profile: str | None
    state: str                     # online | offline (retained state / last will) | unknown (readings, no
                                   # state message yet) | never_seen (nothing at all)
    online: bool                   # state online AND a reading within Sources.stale_s
    fw: str | None                 # firmware version from the state message
    state_since: float | None      # unix s (gateway clock) the device entered its state
    last_reading_time: int | None  # device clock of its latest stored reading
    last_received_s_ago: float | None
    last_power_w: int | None
    acked: int | None
    gap: int | None                # readings stored beyond a hole, not yet acknowledged
    rejections: dict[str, int]     # this device's rejections by reason


@dataclass(frozen=True)
class BalancePoint:
    start: int
    import_wh: int
    export_wh: int
    pv_wh: int
    p2p_wh: int                    # Wh traded between households for the interval (fills, not rejected)
    delivered_wh: int              # of which settled as delivered (final batches)
    devices: int
    reporting: int
    estimated: int


@dataclass(frozen=True)
class BatchRow:
    part: int
    state: str                     # planned | final | rejected
    entries: int
    tx_hash: str | None
    height: int | None
    reason: str | None


@dataclass(frozen=True)
class SettlementRow:
    start: int
    state: str                     # open | settled | failed
    fills: int
    delivered_wh: int
    payment: int                   # NOIA units
    refund: int
    root: str | None               # the evidence root cited
    reason: str | None
    batches: tuple[BatchRow, ...]
    late_root_versions: tuple[int, ...]


@dataclass(frozen=True)
class OutboxRowView:
    key: str
    kind: str
    state: str
    attempts: int
    tx_hash: str | None
    reason: str | None


@dataclass(frozen=True)
class OutboxView:
    database: str                  # file name
    by_state: dict[str, int]       # submissions by state (pending/signed/submitted/final/rejected)
    live: tuple[OutboxRowView, ...]    # not final yet, oldest first
    rejected: tuple[OutboxRowView, ...]


@dataclass(frozen=True)
class BidView:
    trading_day: str
    revision: int
    total_wh: int
    periods: int
    settled_periods: int
    delivered_wh: int
    deviation_wh: int
    penalty_won: int


@dataclass(frozen=True)
class ResourceView:
    id: str
    name: str
    members: tuple[str, ...]
    bids: tuple[BidView, ...]      # newest trading day first


@dataclass(frozen=True)
class OperatorView:
    grid: str
    now: int
    devices: tuple[DeviceRow, ...]
    devices_online: int
    readings_stored: int
    rejected: int
    rejections: dict[str, int]
    notes: dict[str, int]
    quarantined: int
    refusals: dict[str, int]       # requests the pages refused in this process, by reason
    balance: tuple[BalancePoint, ...]  # the KST day of ``now``
    chain: ChainView
    settlements: tuple[SettlementRow, ...]
    settlement_states: dict[str, int]
    outboxes: tuple[OutboxView, ...]
    resources: tuple[ResourceView, ...]


def _device_rejections(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    if "ingest_counters" not in tables(conn):
        return out
    for name, dev, n in conn.execute("SELECT name, device_id, count FROM ingest_counters ORDER BY name"):
        if name not in NOTES and dev:
            out.setdefault(bytes(dev).hex(), {})[name] = int(n)
    return out


def devices(conn: sqlite3.Connection, db_path: Path, grid: str, now: float,
            stale_s: int) -> tuple[dict[str, Any], list[DeviceRow]]:
    st = gateway_status(conn, db_path, grid, now=now, stale_s=stale_s)
    rej = _device_rejections(conn)
    rows = []
    for key, d in sorted(st["devices"].items(), key=lambda kv: (kv[1].get("name") or "", kv[0])):
        last = d.get("last_reading") or {}
        since = d.get("state_since_ms")
        rows.append(DeviceRow(key, d.get("name"), d.get("household"), d.get("registry", "unknown"), d.get("profile"),
                              d["state"], bool(d["online"]), d.get("fw"), None if since is None else since / 1000,
                              last.get("time"), d.get("last_received_s_ago"), last.get("power_w"), d.get("acked"),
                              d.get("gap"), rej.get(key, {})))
    return st, rows


def balance(conn: sqlite3.Connection, grid: str, start: int, end: int, interval_s: int) -> list[BalancePoint]:
    have = tables(conn)
    if "devices" not in have or "interval_energy" not in have:
        return []
    p2p: dict[int, int] = {}
    if "trades" in have:
        p2p = {s: int(w) for s, w in conn.execute(
            "SELECT interval_start, SUM(wh) FROM trades WHERE grid = ? AND state != 'rejected' AND interval_start >= ? "
            "AND interval_start < ? GROUP BY 1", (grid, start, end))}
    delivered: dict[int, int] = {}
    if "settlement_fills" in have:
        delivered = {s: int(w) for s, w in conn.execute(
            "SELECT start, SUM(delivered_wh) FROM settlement_fills WHERE grid = ? AND state = 'final' AND start >= ? "
            "AND start < ? GROUP BY 1", (grid, start, end))}
    return [BalancePoint(b.start, b.import_wh, b.export_wh, b.pv_wh, p2p.get(b.start, 0), delivered.get(b.start, 0),
                         b.devices, b.reporting, b.estimated)
            for b in IntervalEngine(conn, interval_s=interval_s).balance(grid, start, end)]


def settlements(conn: sqlite3.Connection, grid: str, limit: int) -> tuple[list[SettlementRow], dict[str, int]]:
    if "settlement_intervals" not in tables(conn):
        return [], {}
    found: list[dict[str, Any]] = interval_rows(conn, grid, limit)  # type: ignore[assignment]
    rows = [SettlementRow(r["start"], r["state"], r["fills"], r["delivered_wh"], int(r["payment"]), int(r["refund"]),
                          r["root"], r["reason"],
                          tuple(BatchRow(b["part"], b["state"], b["entries"], b["tx_hash"], b["height"], b["reason"])
                                for b in r["batches"]), tuple(r["late_root_versions"]))
            for r in found]
    states = {s: int(n) for s, n in conn.execute(
        "SELECT state, COUNT(*) FROM settlement_intervals WHERE grid = ? GROUP BY state", (grid,))}
    return rows, states


def outbox(path: Path, limit: int = 20) -> OutboxView | None:
    if not path.exists():
        return None
    conn = gdb.connect(path, readonly=True)
    try:
        if "chain_outbox" not in tables(conn):
            return None
        by_state = {s: int(n) for s, n in conn.execute("SELECT state, COUNT(*) FROM chain_outbox GROUP BY state")}

        def rows(where: str, order: str) -> tuple[OutboxRowView, ...]:
            return tuple(OutboxRowView(k, kind, st, att, None if h is None else "0x" + bytes(h).hex(), reason)
                         for k, kind, st, att, h, reason in conn.execute(
                             f"SELECT key, kind, state, attempts, tx_hash, reason FROM chain_outbox WHERE {where} "
                             f"ORDER BY seq {order} LIMIT ?", (limit,)))
        return OutboxView(path.name, by_state, rows("state IN ('pending', 'signed', 'submitted')", "ASC"),
                          rows("state = 'rejected'", "DESC"))
    finally:
        conn.close()


def resources(conn: sqlite3.Connection, grid: str, interval_s: int, days: int = 7) -> list[ResourceView]:
    if "agg_resources" not in tables(conn):
        return []
    agg = Aggregator(conn, interval_s=interval_s)
    out = []
    for r in agg.resources():
        if r["grid"] != grid:
            continue
        bids = []
        for day, rev in conn.execute("SELECT trading_day, revision FROM agg_bids WHERE resource_id = ? "
                                     "ORDER BY trading_day DESC LIMIT ?", (r["id"], days)).fetchall():
            try:
                bid = agg.bid(r["id"], day)
            except AggregationError:
                continue
            n, dwh, dev, pen = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(delivered_wh), 0), COALESCE(SUM(deviation_wh), 0), "
                "COALESCE(SUM(penalty_won), 0) FROM agg_settlements WHERE resource_id = ? AND trading_day = ?",
                (r["id"], day)).fetchone()
            bids.append(BidView(day, rev, bid.total_wh, len(bid.periods), n, dwh, dev, pen))
        out.append(ResourceView(r["id"], r["name"], tuple(r["members"]), tuple(bids)))
    return out


async def operator_view(cx: Complex, now: float | None = None, *, day: float | None = None,
                        settlements_limit: int = 48) -> OperatorView:
    """Everything the operator page shows (the caller has checked the operator role).

    ``now``: the gateway clock (a device is offline when its last reading arrived more than
    ``Sources.stale_s`` before it); ``day``: any time in the KST day to chart (default: now's)."""
    now = time.time() if now is None else now
    src = cx.sources
    d0 = kst_day_start(now if day is None else day)
    with cx.db() as conn:
        st, devs = devices(conn, src.gateway_db, src.grid, now, src.stale_s)
        bal = balance(conn, src.grid, d0, d0 + 86400, src.interval_s)
        sets, set_states = settlements(conn, src.grid, settlements_limit)
        res = resources(conn, src.grid, src.interval_s)
    boxes = tuple(v for p in src.all_outboxes if (v := outbox(p)) is not None)
    chain = await chain_view(src.validators, src.rpc_timeout_s)
    return OperatorView(src.grid, int(now), tuple(devs), sum(1 for d in devs if d.online), st["readings_stored"],
                        st["rejected"], dict(st["rejections"]), dict(st["notes"]), st["quarantined"],
                        dict(cx.counters), tuple(bal), chain, tuple(sets), set_states, boxes, tuple(res))
