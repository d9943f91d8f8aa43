"""The household page's figures, each from the gateway's own data (docs/web-readmodel.md).

``household_view(cx, household, now)`` answers for one household only: the
household id is a parameter of every query (readings of its paired devices,
its intervals, fills where it is maker or taker, its settlements, its wallet
policy and orders, its RECs), so nothing of a neighbour can come back. Days and
months are KST calendar days, as the bill and the tariffs count them.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from gateway.aggregator.intervals import IntervalEngine
from gateway.market.bill import KST, P2PComparison, kst_date, p2p_comparison
from gateway.market.oracle import Oracle
from gateway.market.orders import ManualOrderRow, ManualOrders
from gateway.market.recs import RecRegistry
from gateway.market.tariffs import TariffError
from gateway.market.trades import TradeLog
from gateway.market.wallet_policy import WalletError

from .chain import balance_of
from .fills import FillView, fill_views, settled_money
from .sources import NOIA_UNITS, Complex, ReadModelError, check_household, household_address, tables


@dataclass(frozen=True)
class LivePower:
    power_w: int | None            # + import / - export: the latest reading of each paired device, summed
    reading_time: int | None       # the device clock of the oldest of those readings (unix s)
    age_s: float | None            # now - reading_time
    devices: int                   # paired devices in service (not revoked)


@dataclass(frozen=True)
class IntervalPoint:
    start: int
    import_wh: int
    export_wh: int
    pv_wh: int
    bought_wh: int                 # P2P fills of the interval (ordered Wh, not rejected)
    sold_wh: int
    estimated: bool


@dataclass(frozen=True)
class Totals:
    since: int                     # the KST day's start (unix s)
    import_wh: int
    export_wh: int
    pv_wh: int


@dataclass(frozen=True)
class BillView:
    month: str                     # YYYY-MM (KST)
    tariff: str
    import_wh: int                 # metered this month to date
    export_wh: int
    bought_wh: int                 # delivered P2P, settled (final)
    sold_wh: int
    paid_won: Decimal              # NOIA paid for it, in won
    received_won: Decimal
    comparison: P2PComparison | None   # bill.p2p_comparison: KEPCO's bill with and without P2P
    next_kwh_won: Decimal | None   # the Oracle: the next kWh from KEPCO at the month's billed kWh so far (all-in)
    error: str | None = None       # a tariff reason when the bill cannot be computed

    @property
    def savings_won(self) -> Decimal | None:
        return None if self.comparison is None else self.comparison.savings_won


@dataclass(frozen=True)
class PolicyView:
    sell_floor_won_kwh: Decimal | None   # None: the agent does not sell
    buy_cap_won_kwh: Decimal | None      # None: the agent does not buy
    reserve_wh: int
    interval_wh: int
    daily_noia: Decimal                  # NOIA (not units)


@dataclass(frozen=True)
class RecCertificateView:
    serial: str
    state: str
    mwh: int
    vintage_start: int
    vintage_end: int
    produced: bool                 # this household produced it
    owned: bool                    # this household owns it now


@dataclass(frozen=True)
class RecView:
    counted_wh: int                # metered PV counted towards certificates
    available_wh: int              # not yet in a certificate
    debt_wh: int
    certificates: tuple[RecCertificateView, ...]


@dataclass(frozen=True)
class HouseholdView:
    household: str
    grid: str
    now: int
    live: LivePower
    today: Totals                          # the KST day shown (``now``'s unless ``day`` was given)
    intervals: tuple[IntervalPoint, ...]   # that day's intervals
    fills: tuple[FillView, ...]            # newest interval first
    address: str | None                    # the household's chain address
    balance_noia: Decimal | None           # from the chain; None when no validator answered
    balance_error: str | None
    bill: BillView
    policy: PolicyView | None              # None: no policy, or the wallet is not open here
    policy_error: str | None
    orders: tuple[ManualOrderRow, ...]
    recs: RecView


def kst_day_start(t: float) -> int:
    d = kst_date(int(t))
    return int(datetime(d.year, d.month, d.day, tzinfo=KST).timestamp())


def kst_month(t: float) -> tuple[str, int, int]:
    """("YYYY-MM", month start, next month start) of the KST month holding ``t``."""
    d = kst_date(int(t))
    start = datetime(d.year, d.month, 1, tzinfo=KST)
    nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=KST)
    return f"{d.year:04d}-{d.month:02d}", int(start.timestamp()), int(nxt.timestamp())


def _won(units: int, won_per_noia: int) -> Decimal:
    return Decimal(units) * won_per_noia / NOIA_UNITS


def _per_wh_to_won_kwh(v: int | None, won_per_noia: int) -> Decimal | None:
    return None if v is None else (Decimal(v) * 1000 * won_per_noia / NOIA_UNITS).normalize()


def paired_devices(conn: sqlite3.Connection, grid: str, household: str, *, active_only: bool = True) -> list[bytes]:
    """The household's meter devices in ``grid`` (a revoked one, e.g. a replaced meter, keeps its history)."""
    if "devices" not in tables(conn):
        return []
    return [bytes(r[0]) for r in conn.execute(
        "SELECT device_id FROM devices WHERE grid = ? AND household = ? AND (status = 'active' OR ?) "
        "ORDER BY device_id", (grid, household, not active_only))]


def live_power(conn: sqlite3.Connection, devices: list[bytes], now: float) -> LivePower:
    latest = [r for d in devices if (r := conn.execute(
        "SELECT time, power_w FROM readings WHERE device_id = ? ORDER BY seq DESC LIMIT 1", (d,)).fetchone())]
    if not latest:
        return LivePower(None, None, None, len(devices))
    t = min(r[0] for r in latest)
    return LivePower(sum(r[1] for r in latest), t, round(now - t, 1) if t else None, len(devices))


def _p2p_by_interval(conn: sqlite3.Connection, grid: str, household: str, start: int, end: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    if "trades" not in tables(conn):
        return out
    for s, side, wh in conn.execute(
            "SELECT interval_start, CASE WHEN taker_household = ? THEN 0 ELSE 1 END, SUM(wh) FROM trades "
            "WHERE grid = ? AND (taker_household = ? OR maker_household = ?) AND state != 'rejected' AND "
            "interval_start >= ? AND interval_start < ? GROUP BY 1, 2", (household, grid, household, household,
                                                                         start, end)):
        out.setdefault(s, [0, 0])[side] += int(wh)
    return out


def bill_view(cx: Complex, conn: sqlite3.Connection, household: str, now: float) -> BillView:
    src = cx.sources
    month, m0, m1 = kst_month(now)
    eng = IntervalEngine(conn, interval_s=src.interval_s)
    ivs = eng.household_intervals(household, m0, m1)
    imp, exp = sum(i.import_wh for i in ivs), sum(i.export_wh for i in ivs)
    money = settled_money(conn, src.grid, household, m0, m1)
    paid, received = _won(money["paid"], src.won_per_noia), _won(money["received"], src.won_per_noia)
    comparison = nxt = None
    error = None
    try:
        comparison = p2p_comparison(src.tariff, month, import_wh=imp, export_wh=exp, bought_wh=money["bought_wh"],
                                    sold_wh=money["sold_wh"], paid_won=paid, received_won=received)
        oracle = Oracle(tariff=src.tariff, won_per_noia=src.won_per_noia)
        billed = comparison.with_p2p.billed_kwh      # what KEPCO bills so far (net metering, P2P Wh taken out)
        nxt = oracle.buyer_ceiling(kst_date(int(now)), Decimal(billed)).won_per_kwh
    except TariffError as e:
        error = e.reason
    return BillView(month, src.tariff, imp, exp, money["bought_wh"], money["sold_wh"], paid, received,
                    comparison, nxt, error)


def rec_view(conn: sqlite3.Connection, grid: str, household: str) -> RecView:
    if "rec_certificates" not in tables(conn):
        return RecView(0, 0, 0, ())
    reg = RecRegistry(conn)
    b = reg.balance(grid, household)
    certs = {c.serial: c for c in reg.list(grid=grid, producer=household) + reg.list(grid=grid, owner=household)}
    return RecView(b.counted_wh, b.available_wh, b.debt_wh, tuple(
        RecCertificateView(c.serial, c.state, c.mwh, c.vintage_start, c.vintage_end, c.household == household,
                           c.owner == household) for c in sorted(certs.values(), key=lambda c: c.serial)))


def policy_view(cx: Complex, household: str) -> tuple[PolicyView | None, str | None]:
    if cx.wallet is None:
        return None, "wallet_closed"
    try:
        p = cx.wallet.policy(household)
    except WalletError as e:
        return None, e.reason
    if p is None:
        return None, "no_policy"
    w = cx.sources.won_per_noia
    return PolicyView(_per_wh_to_won_kwh(p.sell_floor_per_wh, w), _per_wh_to_won_kwh(p.buy_cap_per_wh, w),
                      p.reserve_wh, p.interval_wh, Decimal(p.daily_noia) / NOIA_UNITS), None


def manual_orders(cx: Complex, conn: sqlite3.Connection, household: str, now: float) -> list[ManualOrderRow]:
    """The household's manual orders, newest first, their state brought up to date by the market's own rule
    (filled once a trade comes from one, expired once its interval started at ``now``)."""
    if "manual_orders" not in tables(conn) or cx.wallet is None or cx.domain is None:
        return []
    mo = ManualOrders(conn, cx.wallet, cx.sources.grid, cx.domain, trades=TradeLog(conn),
                      interval_s=cx.sources.interval_s, clock=lambda: now)
    return list(reversed(mo.list(household)))


async def household_view(cx: Complex, household: str, now: float | None = None, *, day: float | None = None,
                         fills_limit: int = 200) -> HouseholdView:
    """Everything the household page shows, for ``household`` only (already authenticated by the caller).

    ``now``: the gateway's clock (default the wall clock): this month, the age of the last reading, and the
    day shown unless ``day`` (any time in another KST day) is given; ``fills_limit``: newest fills listed."""
    try:
        check_household(household)
    except ReadModelError as e:
        raise cx.refuse(e.reason, e.detail) from None
    now = time.time() if now is None else now
    src = cx.sources
    with cx.db() as conn:
        if not paired_devices(conn, src.grid, household, active_only=False):
            raise cx.refuse("unknown_household", f"{household} has no paired device in grid {src.grid}")
        live = live_power(conn, paired_devices(conn, src.grid, household), now)
        d0 = kst_day_start(now if day is None else day)
        eng = IntervalEngine(conn, interval_s=src.interval_s)
        rows = eng.household_intervals(household, d0, d0 + 86400)
        p2p = _p2p_by_interval(conn, src.grid, household, d0, d0 + 86400)
        points = tuple(IntervalPoint(i.start, i.import_wh, i.export_wh, i.pv_wh, p2p.get(i.start, [0, 0])[0],
                                     p2p.get(i.start, [0, 0])[1], i.estimated) for i in rows)
        today = Totals(d0, sum(i.import_wh for i in rows), sum(i.export_wh for i in rows),
                       sum(i.pv_wh for i in rows))
        fills = tuple(fill_views(conn, src.all_outboxes, src.grid, household, won_per_noia=src.won_per_noia,
                                 limit=max(1, min(fills_limit, 1000))))
        bill = bill_view(cx, conn, household, now)
        orders = tuple(manual_orders(cx, conn, household, now))
        recs = rec_view(conn, src.grid, household)
    policy, policy_error = policy_view(cx, household)
    addr = household_address(src, household)
    bal = None
    bal_err: str | None = "no_address"
    if addr is not None:
        units, bal_err = await balance_of(src.validators, addr, src.rpc_timeout_s)
        bal = None if units is None else Decimal(units) / NOIA_UNITS   # NOIA (10**18 units each)
    return HouseholdView(household, src.grid, int(now), live, today, points, fills,
                         None if addr is None else "0x" + addr.hex(), bal, bal_err, bill, policy, policy_error,
                         orders, recs)
