"""Aggregated resources (a VPP of households): day-ahead bids from forecasts, settled against the meters
(docs/aggregation.md).

- An operator groups households of one grid into a **resource** (id, name, grid,
  members); a household is a member of at most one resource at a time.
- A **bid** for a trading day (a KST calendar day) has one quantity per period
  (15 min or 1 h): the members' summed forecast net export (PV - load, from
  ``Forecaster``; a member's import counts against the others' export), less a
  confidence margin (``margin_pct`` of the forecast, rounded up, plus
  ``margin_wh``), floored at 0 and rounded down to ``quantum_wh``. The forecast is
  made as of ``lead_s`` before the day starts (default 14 h: D-1 10:00 KST).
- **Settlement** of a period, once every interval in it has an evidence root:
  delivered = the bid's members' metered ``export_wh - import_wh`` summed over the
  period's intervals; deviation = delivered - bid; a tolerance band and a penalty
  per kWh outside it come from ``DeviationRules`` (data). The roots are cited.

The export format (``bid_json`` / ``bid_csv``) is ours, modelled on the shape of a
Korean small-scale brokerage day-ahead bid; it is not KPX's official schema.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from gateway.aggregator.intervals import INTERVAL_S, IntervalEngine, registry_columns
from gateway.db import ensure_schema, transaction
from gateway.evidence.roots import EvidenceStore
from gateway.market.forecast import Forecaster

log = logging.getLogger(__name__)

BID_FORMAT = "metanoia-vpp-bid/1"
KST = timezone(timedelta(hours=9))
CSV_HEADER = ("resource_id", "trading_day", "period", "start", "end", "quantity_kwh", "price_won_per_kwh")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS agg_resources (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, grid TEXT NOT NULL, created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS agg_members (
        resource_id TEXT NOT NULL, household TEXT NOT NULL, added_at INTEGER NOT NULL, removed_at INTEGER,
        PRIMARY KEY (resource_id, household, added_at))""",
    """CREATE TABLE IF NOT EXISTS agg_bids (
        resource_id TEXT NOT NULL, trading_day TEXT NOT NULL, revision INTEGER NOT NULL,
        doc TEXT NOT NULL,                    -- the bid as exported (JSON)
        created_at INTEGER NOT NULL, created_by TEXT NOT NULL,
        PRIMARY KEY (resource_id, trading_day))""",
    """CREATE TABLE IF NOT EXISTS agg_settlements (
        resource_id TEXT NOT NULL, trading_day TEXT NOT NULL, period INTEGER NOT NULL,
        start INTEGER NOT NULL, bid_wh INTEGER NOT NULL, delivered_wh INTEGER NOT NULL,
        deviation_wh INTEGER NOT NULL, band_wh INTEGER NOT NULL, outside_wh INTEGER NOT NULL,
        penalty_won INTEGER NOT NULL, roots TEXT NOT NULL, rules TEXT NOT NULL, settled_at INTEGER NOT NULL,
        PRIMARY KEY (resource_id, trading_day, period))""",
    """CREATE TABLE IF NOT EXISTS agg_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, resource_id TEXT NOT NULL, at INTEGER NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, detail TEXT)""",
)


class AggregationError(Exception):
    """``reason``: ``bad_request``, ``duplicate_resource``, ``unknown_resource``, ``unknown_household``,
    ``member_elsewhere``, ``already_member``, ``not_member``, ``no_members``, ``no_bid``, ``settled``,
    ``bad_bid`` (an export that does not parse)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class BidConfig:
    resolution_s: int = 900          # 900 (per 15 min) or 3600 (per hour)
    margin_pct: int = 10             # of the positive forecast, rounded up
    margin_wh: int = 0               # plus this
    quantum_wh: int = 1000           # quantities rounded down to this (1 kWh)
    lead_s: int = 14 * 3600          # forecast as of day start - lead (D-1 10:00 KST)
    price_won_per_kwh: int | None = None   # None: a price-taker bid

    def __post_init__(self) -> None:
        if self.resolution_s not in (900, 3600):
            raise AggregationError("bad_request", "resolution is 900 or 3600 s")
        if not 0 <= self.margin_pct <= 100 or self.margin_wh < 0 or self.quantum_wh <= 0 or self.lead_s < 0:
            raise AggregationError("bad_request", "margin_pct 0..100, margin_wh >= 0, quantum_wh > 0, lead_s >= 0")


@dataclass(frozen=True)
class DeviationRules:
    """Tolerance band and penalties (data; ``from_json`` reads a rules file)."""

    tolerance_pct: int = 8           # band = tolerance_pct % of the basis, rounded up ...
    min_band_wh: int = 500           # ... and at least this
    basis: str = "bid"               # "bid": the period's bid; "capacity": capacity_wh per period
    capacity_wh: int | None = None
    under_won_per_kwh: int = 50      # per kWh delivered short beyond the band
    over_won_per_kwh: int = 0        # per kWh delivered over beyond the band

    def __post_init__(self) -> None:
        if self.basis not in ("bid", "capacity") or (self.basis == "capacity" and not self.capacity_wh):
            raise AggregationError("bad_request", "basis is bid, or capacity with capacity_wh")
        if min(self.tolerance_pct, self.min_band_wh, self.under_won_per_kwh, self.over_won_per_kwh) < 0:
            raise AggregationError("bad_request", "rules are non-negative")

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DeviationRules:
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise AggregationError("bad_request", f"unknown rule keys {sorted(unknown)}")
        return cls(**doc)

    def band(self, bid_wh: int) -> int:
        basis = bid_wh if self.basis == "bid" else int(self.capacity_wh or 0)
        return max(self.min_band_wh, -(-basis * self.tolerance_pct // 100))

    def penalty(self, deviation_wh: int, band_wh: int) -> tuple[int, int]:
        """(Wh outside the band, won): under-delivery and over-delivery at their own rates, rounded down."""
        outside = max(0, abs(deviation_wh) - band_wh)
        rate = self.under_won_per_kwh if deviation_wh < 0 else self.over_won_per_kwh
        return outside, outside * rate // 1000


@dataclass(frozen=True, slots=True)
class BidPeriod:
    period: int           # 1-based within the trading day (1..96 or 1..24)
    start: int            # unix s
    quantity_wh: int
    forecast_wh: int      # members' summed forecast net export (may be negative)
    margin_wh: int


@dataclass(frozen=True)
class Bid:
    resource_id: str
    grid: str
    trading_day: str      # YYYY-MM-DD, KST
    resolution_s: int
    members: tuple[str, ...]
    asof: int
    price_won_per_kwh: int | None
    margin_pct: int
    margin_wh: int
    quantum_wh: int
    periods: tuple[BidPeriod, ...] = field(repr=False)

    @property
    def total_wh(self) -> int:
        return sum(p.quantity_wh for p in self.periods)


def _kwh(wh: int) -> str:
    sign = "-" if wh < 0 else ""
    return f"{sign}{abs(wh) // 1000}.{abs(wh) % 1000:03d}"


def _wh(kwh: str) -> int:
    m = re.fullmatch(r"(-?)(\d+)(?:\.(\d{1,3}))?", kwh.strip())
    if m is None:
        raise AggregationError("bad_bid", f"quantity {kwh!r} is not kWh with up to 3 decimals")
    wh = int(m[2]) * 1000 + int((m[3] or "0").ljust(3, "0"))
    return -wh if m[1] else wh


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, KST).isoformat()


def _unix(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def day_start(trading_day: str) -> int:
    try:
        d = date.fromisoformat(trading_day)
    except ValueError:
        raise AggregationError("bad_request", f"trading day {trading_day!r} is not YYYY-MM-DD") from None
    return int(datetime(d.year, d.month, d.day, tzinfo=KST).timestamp())


def bid_json(bid: Bid) -> dict[str, Any]:
    """The bid as our JSON export (``metanoia-vpp-bid/1``)."""
    return {"format": BID_FORMAT, "resource_id": bid.resource_id, "grid": bid.grid, "trading_day": bid.trading_day,
            "timezone": "+09:00", "resolution_min": bid.resolution_s // 60, "unit": "kWh",
            "price_won_per_kwh": bid.price_won_per_kwh, "members": list(bid.members), "forecast_asof": _iso(bid.asof),
            "margin": {"pct": bid.margin_pct, "wh": bid.margin_wh, "quantum_wh": bid.quantum_wh},
            "total_kwh": _kwh(bid.total_wh),
            "periods": [{"period": p.period, "start": _iso(p.start), "end": _iso(p.start + bid.resolution_s),
                         "quantity_kwh": _kwh(p.quantity_wh), "forecast_kwh": _kwh(p.forecast_wh),
                         "margin_kwh": _kwh(p.margin_wh)} for p in bid.periods]}


def bid_from_json(doc: Mapping[str, Any]) -> Bid:
    try:
        if doc["format"] != BID_FORMAT:
            raise AggregationError("bad_bid", f"not a {BID_FORMAT} document")
        res = int(doc["resolution_min"]) * 60
        periods = tuple(BidPeriod(int(p["period"]), _unix(p["start"]), _wh(p["quantity_kwh"]), _wh(p["forecast_kwh"]),
                                  _wh(p["margin_kwh"])) for p in doc["periods"])
        m = doc["margin"]
        return Bid(str(doc["resource_id"]), str(doc["grid"]), str(doc["trading_day"]), res, tuple(doc["members"]),
                   _unix(doc["forecast_asof"]), doc["price_won_per_kwh"], int(m["pct"]), int(m["wh"]),
                   int(m["quantum_wh"]), periods)
    except (KeyError, TypeError, ValueError) as e:
        raise AggregationError("bad_bid", f"malformed bid: {e}") from None


def bid_csv(bid: Bid) -> str:
    """One row per period: resource_id, trading_day, period, start, end, quantity_kwh, price_won_per_kwh."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_HEADER)
    price = "" if bid.price_won_per_kwh is None else str(bid.price_won_per_kwh)
    for p in bid.periods:
        w.writerow((bid.resource_id, bid.trading_day, p.period, _iso(p.start), _iso(p.start + bid.resolution_s),
                    _kwh(p.quantity_wh), price))
    return out.getvalue()


def parse_bid_csv(text: str) -> tuple[str, str, int, int | None, list[tuple[int, int, int]]]:
    """(resource_id, trading_day, resolution_s, price, [(period, start, quantity_wh)]) of a CSV export."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != CSV_HEADER or len(rows) < 2:
        raise AggregationError("bad_bid", f"a bid CSV starts with the header {','.join(CSV_HEADER)}")
    try:
        body = [(r[0], r[1], int(r[2]), _unix(r[3]), _unix(r[4]), _wh(r[5]), r[6]) for r in rows[1:]]
    except (IndexError, ValueError) as e:
        raise AggregationError("bad_bid", f"malformed row: {e}") from None
    if len({(r[0], r[1], r[4] - r[3], r[6]) for r in body}) != 1:
        raise AggregationError("bad_bid", "rows differ in resource, day, resolution or price")
    r0 = body[0]
    return r0[0], r0[1], r0[4] - r0[3], int(r0[6]) if r0[6] else None, [(r[2], r[3], r[5]) for r in body]


@dataclass(frozen=True, slots=True)
class PeriodSettlement:
    period: int
    start: int
    state: str                  # settled | pending (not every interval rooted yet)
    bid_wh: int
    delivered_wh: int = 0
    deviation_wh: int = 0
    band_wh: int = 0
    outside_wh: int = 0
    penalty_won: int = 0
    roots: tuple[tuple[int, int, str], ...] = ()     # (interval start, root version, root hex)

    @property
    def within_band(self) -> bool:
        return self.outside_wh == 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"within_band": self.within_band, "start_iso": _iso(self.start),
                               "roots": [{"start": s, "version": v, "root": r} for s, v, r in self.roots]}


@dataclass(frozen=True)
class DeviationReport:
    resource_id: str
    trading_day: str
    rules: DeviationRules
    periods: tuple[PeriodSettlement, ...]

    def to_json(self) -> dict[str, Any]:
        done = [p for p in self.periods if p.state == "settled"]
        return {"resource_id": self.resource_id, "trading_day": self.trading_day, "rules": asdict(self.rules),
                "settled": len(done), "pending": len(self.periods) - len(done),
                "bid_wh": sum(p.bid_wh for p in done), "delivered_wh": sum(p.delivered_wh for p in done),
                "deviation_wh": sum(p.deviation_wh for p in done),
                "outside_band": sum(not p.within_band for p in done),
                "penalty_won": sum(p.penalty_won for p in done), "periods": [p.to_json() for p in self.periods]}


class Aggregator:
    """Resources, bids and their settlement over one gateway database."""

    def __init__(self, conn: sqlite3.Connection, *, interval_s: int = INTERVAL_S,
                 forecaster: Forecaster | None = None, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.interval_s = interval_s
        self.meter = IntervalEngine(conn, interval_s=interval_s)
        self.evidence = EvidenceStore(conn, interval_s=interval_s)
        self.forecaster = forecaster or Forecaster(self.meter)
        self.clock = clock
        ensure_schema(conn, "aggregation", SCHEMA)

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.conn)

    def _event(self, rid: str, actor: str, action: str, detail: Mapping[str, Any]) -> None:
        self.conn.execute("INSERT INTO agg_events (resource_id, at, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
                          (rid, int(self.clock()), actor, action, json.dumps(dict(detail), sort_keys=True)))

    # ---- resources ----

    def create(self, resource_id: str, grid: str, *, name: str | None = None, by: str = "operator") -> None:
        if not _ID.match(resource_id or "") or not _ID.match(grid or ""):
            raise AggregationError("bad_request", "resource id and grid: 1-64 of [A-Za-z0-9._-]")
        with self._tx() as c:
            if c.execute("SELECT 1 FROM agg_resources WHERE id = ?", (resource_id,)).fetchone():
                raise AggregationError("duplicate_resource", resource_id)
            c.execute("INSERT INTO agg_resources (id, name, grid, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                      (resource_id, name or resource_id, grid, int(self.clock()), by))
            self._event(resource_id, by, "create", {"grid": grid, "name": name or resource_id})

    def resource(self, resource_id: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT id, name, grid, created_at FROM agg_resources WHERE id = ?",
                                (resource_id,)).fetchone()
        if row is None:
            raise AggregationError("unknown_resource", resource_id)
        return {"id": row[0], "name": row[1], "grid": row[2], "created_at": row[3],
                "members": self.members(resource_id)}

    def resources(self) -> list[dict[str, Any]]:
        return [self.resource(r[0]) for r in self.conn.execute("SELECT id FROM agg_resources ORDER BY id").fetchall()]

    def members(self, resource_id: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT household FROM agg_members WHERE resource_id = ? AND "
                                                "removed_at IS NULL ORDER BY household", (resource_id,))]

    def add(self, resource_id: str, households: Sequence[str], *, by: str = "operator") -> list[str]:
        with self._tx() as c:
            grid = self.resource(resource_id)["grid"]
            for hh in households:
                if "household" not in registry_columns(c) or not c.execute(
                        "SELECT 1 FROM devices WHERE grid = ? AND household = ?", (grid, hh)).fetchone():
                    raise AggregationError("unknown_household", f"{hh} has no paired device in grid {grid}")
                other = c.execute("SELECT resource_id FROM agg_members WHERE household = ? AND removed_at IS NULL",
                                  (hh,)).fetchone()
                if other is not None:
                    raise AggregationError("already_member" if other[0] == resource_id else "member_elsewhere",
                                           f"{hh} is a member of {other[0]}")
                c.execute("INSERT INTO agg_members (resource_id, household, added_at) VALUES (?, ?, ?)",
                          (resource_id, hh, int(self.clock())))
                self._event(resource_id, by, "add", {"household": hh})
        return self.members(resource_id)

    def remove(self, resource_id: str, households: Sequence[str], *, by: str = "operator") -> list[str]:
        with self._tx() as c:
            self.resource(resource_id)
            for hh in households:
                n = c.execute("UPDATE agg_members SET removed_at = ? WHERE resource_id = ? AND household = ? AND "
                              "removed_at IS NULL", (int(self.clock()), resource_id, hh)).rowcount
                if n != 1:
                    raise AggregationError("not_member", f"{hh} is not a member of {resource_id}")
                self._event(resource_id, by, "remove", {"household": hh})
        return self.members(resource_id)

    # ---- bids ----

    def make_bid(self, resource_id: str, trading_day: str, config: BidConfig | None = None, *,
                 asof: int | None = None) -> Bid:
        """The day's bid from the members' forecasts (nothing stored: see ``submit_bid``)."""
        cfg = config or BidConfig()
        res = self.resource(resource_id)
        members = tuple(res["members"])
        if not members:
            raise AggregationError("no_members", resource_id)
        d0 = day_start(trading_day)
        asof = d0 - cfg.lead_s if asof is None else asof
        L = self.forecaster.config.interval_s
        if L != self.interval_s or cfg.resolution_s % L:
            raise AggregationError("bad_request", f"resolution must be a multiple of the {L} s interval")
        histories = [self.forecaster.history(hh, asof) for hh in members]
        periods = []
        n = 86_400 // cfg.resolution_s
        for k in range(n):
            start = d0 + k * cfg.resolution_s
            f = sum(self.forecaster.forecast_from(h, s, asof).net_wh for h in histories
                    for s in range(start, start + cfg.resolution_s, L))
            margin = -(-max(f, 0) * cfg.margin_pct // 100) + cfg.margin_wh
            q = max(0, f - margin) // cfg.quantum_wh * cfg.quantum_wh
            periods.append(BidPeriod(k + 1, start, q, f, margin))
        return Bid(resource_id, res["grid"], trading_day, cfg.resolution_s, members, asof, cfg.price_won_per_kwh,
                   cfg.margin_pct, cfg.margin_wh, cfg.quantum_wh, tuple(periods))

    def submit_bid(self, bid: Bid, *, by: str = "operator") -> int:
        """Store the bid as the one to settle (a new revision replaces an unsettled one); returns the revision."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM agg_settlements WHERE resource_id = ? AND trading_day = ?",
                         (bid.resource_id, bid.trading_day)).fetchone():
                raise AggregationError("settled", f"{bid.trading_day} of {bid.resource_id} is being settled")
            row = c.execute("SELECT revision FROM agg_bids WHERE resource_id = ? AND trading_day = ?",
                            (bid.resource_id, bid.trading_day)).fetchone()
            rev = 1 if row is None else row[0] + 1
            c.execute("INSERT OR REPLACE INTO agg_bids (resource_id, trading_day, revision, doc, created_at, created_by) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (bid.resource_id, bid.trading_day, rev,
                                                    json.dumps(bid_json(bid), sort_keys=True), int(self.clock()), by))
            self._event(bid.resource_id, by, "bid", {"trading_day": bid.trading_day, "revision": rev,
                                                     "total_wh": bid.total_wh})
        log.info("aggregation: bid %s %s rev %d: %d Wh", bid.resource_id, bid.trading_day, rev, bid.total_wh)
        return rev

    def bid(self, resource_id: str, trading_day: str) -> Bid:
        row = self.conn.execute("SELECT doc FROM agg_bids WHERE resource_id = ? AND trading_day = ?",
                                (resource_id, trading_day)).fetchone()
        if row is None:
            raise AggregationError("no_bid", f"no bid of {resource_id} for {trading_day}")
        return bid_from_json(json.loads(row[0]))

    # ---- settlement ----

    def settle(self, resource_id: str, trading_day: str, rules: DeviationRules | None = None) -> DeviationReport:
        """Settle every period of the stored bid whose intervals are all rooted; settled periods stay as they were."""
        rules = rules or DeviationRules()
        bid = self.bid(resource_id, trading_day)
        L = self.interval_s
        out = []
        with self._tx() as c:
            for p in bid.periods:
                row = c.execute("SELECT bid_wh, delivered_wh, deviation_wh, band_wh, outside_wh, penalty_won, roots "
                                "FROM agg_settlements WHERE resource_id = ? AND trading_day = ? AND period = ?",
                                (resource_id, trading_day, p.period)).fetchone()
                if row is not None:
                    out.append(PeriodSettlement(p.period, p.start, "settled", row[0], row[1], row[2], row[3], row[4],
                                                row[5], tuple((s, v, r) for s, v, r in json.loads(row[6]))))
                    continue
                roots = [self.evidence.latest(bid.grid, s) for s in range(p.start, p.start + bid.resolution_s, L)]
                if any(r is None for r in roots):
                    out.append(PeriodSettlement(p.period, p.start, "pending", p.quantity_wh))
                    continue
                delivered = sum(e.export_wh - e.import_wh for hh in bid.members
                                for e in self.meter.household_intervals(hh, p.start, p.start + bid.resolution_s))
                dev = delivered - p.quantity_wh
                band = rules.band(p.quantity_wh)
                outside, won = rules.penalty(dev, band)
                cited = tuple((r.start, r.version, r.root.hex()) for r in roots if r is not None)
                c.execute("INSERT INTO agg_settlements (resource_id, trading_day, period, start, bid_wh, delivered_wh, "
                          "deviation_wh, band_wh, outside_wh, penalty_won, roots, rules, settled_at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (resource_id, trading_day, p.period, p.start, p.quantity_wh, delivered, dev, band, outside,
                           won, json.dumps(cited), json.dumps(asdict(rules), sort_keys=True), int(self.clock())))
                out.append(PeriodSettlement(p.period, p.start, "settled", p.quantity_wh, delivered, dev, band, outside,
                                            won, cited))
        return DeviationReport(resource_id, trading_day, rules, tuple(out))


__all__ = ["Aggregator", "AggregationError", "Bid", "BidConfig", "BidPeriod", "DeviationRules", "DeviationReport",
           "PeriodSettlement", "bid_json", "bid_from_json", "bid_csv", "parse_bid_csv", "day_start", "BID_FORMAT",
           "CSV_HEADER"]
