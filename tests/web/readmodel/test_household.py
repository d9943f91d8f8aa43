"""The household view on a real market day: every figure against an independent computation
(counter differences of the stored readings, the chain's escrows and balances, bill.py on metered energy)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from gateway.chain_client.rpc import JsonRpcClient
from gateway.db import connect
from gateway.market.bill import p2p_comparison
from gateway.web.readmodel import ReadModelError, household_view, to_json

from .conftest import GRID, HOUSES, Day


@pytest.fixture(scope="module")
def day(shared_day: Day) -> Day:
    """This module only reads the market day: the one the read-only modules share."""
    return shared_day


def view(day: Day, h: str):
    return asyncio.run(household_view(day.cx, h, day.now))


def counters(day: Day, h: str) -> list[tuple[int, int, int, int, int]]:
    conn = connect(day.db, readonly=True)
    try:
        return conn.execute("SELECT time, import_wh, export_wh, pv_wh, power_w FROM readings WHERE device_id = ? "
                            "ORDER BY seq", (day.devices[h].device_id,)).fetchall()
    finally:
        conn.close()


async def chain_escrow(url: str, fill_id: str) -> dict:
    async with JsonRpcClient(url) as rpc:
        return await rpc.call("chain_getEscrow", fill_id)


async def chain_balance(url: str, address: str) -> int:
    async with JsonRpcClient(url) as rpc:
        return int(await rpc.call("chain_getBalance", address))


@pytest.mark.parametrize("h", [h for h, _, _ in HOUSES])
def test_live_power_and_today_match_the_stored_readings(day: Day, h: str) -> None:
    v = view(day, h)
    rows = counters(day, h)
    first, last = rows[0], rows[-1]
    assert v.live.power_w == last[4] and v.live.reading_time == last[0] and v.live.age_s == day.now - last[0]
    # today (the whole run is inside one KST day): the counters' difference, to the Wh
    assert (v.today.import_wh, v.today.export_wh, v.today.pv_wh) == \
        (last[1] - first[1], last[2] - first[2], last[3] - first[3])
    assert sum(p.import_wh for p in v.intervals) == v.today.import_wh
    assert [p.start for p in v.intervals] == sorted(p.start for p in v.intervals)


def test_fills_carry_their_chain_transactions_and_settlement_as_the_chain_holds_them(day: Day) -> None:
    seen = 0
    for h, _, _ in HOUSES:
        v = view(day, h)
        for f in v.fills:
            seen += 1
            assert f.state != "rejected" and f.settlement == "final"
            assert f.fill_tx is not None and f.fill_tx.startswith("0x") and f.settle_tx is not None
            e = asyncio.run(chain_escrow(day.market.chain.url, f.fill_id))
            assert e["status"] == "settled"
            assert (f.delivered_wh, f.payment, f.refund) == (e["deliveredWh"], int(e["payment"]), int(e["refund"]))
            assert f.payment + f.refund == f.noia
            assert f.won_per_kwh == (Decimal(f.noia) * 1000 / (Decimal(f.wh) * 10**18)).quantize(Decimal("0.01"))
        # bought/sold per interval on the chart = the household's fills
        assert sum(p.bought_wh for p in v.intervals) == sum(f.wh for f in v.fills if f.side == "buy")
        assert sum(p.sold_wh for p in v.intervals) == sum(f.wh for f in v.fills if f.side == "sell")
    assert seen > 0, "the day traded"
    print(f"fills seen from both sides: {seen}")
    # the fill tx of the view is the one the market's outbox recorded
    conn = connect(day.folder / "market" / "market-outbox.db", readonly=True)
    hashes = {"0x" + bytes(r[0]).hex() for r in conn.execute("SELECT tx_hash FROM chain_outbox WHERE kind = 'fill'")}
    conn.close()
    assert {f.fill_tx for h, _, _ in HOUSES for f in view(day, h).fills} <= hashes


@pytest.mark.parametrize("h", [h for h, _, _ in HOUSES])
def test_balance_and_bill_agree_with_the_chain_and_bill_py(day: Day, h: str) -> None:
    v = view(day, h)
    assert v.address is not None
    units = asyncio.run(chain_balance(day.market.chain.url, v.address))
    assert v.balance_noia == Decimal(units) / 10**18 and v.balance_error is None
    assert units == day.audit["households"][h]["balance"]
    # the bill without P2P: bill.py on the metered month (the run is the month to date)
    rows = counters(day, h)
    imp, exp = rows[-1][1] - rows[0][1], rows[-1][2] - rows[0][2]
    a = day.audit["households"][h]    # from the chain's escrows: delivered Wh, payments
    expect = p2p_comparison("residential-low", v.bill.month, import_wh=imp, export_wh=exp, bought_wh=a["bought_wh"],
                            sold_wh=a["sold_wh"], paid_won=Decimal(a["paid"]) / 10**18,
                            received_won=Decimal(a["received"]) / 10**18)
    assert v.bill.error is None and v.bill.comparison is not None
    assert (v.bill.import_wh, v.bill.export_wh, v.bill.bought_wh, v.bill.sold_wh) == \
        (imp, exp, a["bought_wh"], a["sold_wh"])
    assert v.bill.comparison.to_json() == expect.to_json()
    assert v.bill.savings_won == expect.savings_won
    from gateway.market.bill import kst_date
    from gateway.market.oracle import Oracle
    marginal = Oracle().buyer_ceiling(kst_date(day.now), Decimal(expect.with_p2p.billed_kwh))
    assert v.bill.next_kwh_won == marginal.won_per_kwh
    assert v.bill.next_kwh_won > 100                                   # KEPCO's first tier is 120 won/kWh before levies


def test_policy_recs_and_json(day: Day) -> None:
    v = view(day, "sun-1")
    p = day.market.wallet.policy("sun-1")
    assert v.policy is not None and p is not None
    assert v.policy.buy_cap_won_kwh == Decimal(p.buy_cap_per_wh) * 1000 / 10**18 == 300
    assert v.policy.reserve_wh == p.reserve_wh and v.policy.interval_wh == p.interval_wh
    assert view(day, "dark-2").policy.sell_floor_won_kwh is None     # type: ignore[union-attr]  # no PV: no selling
    conn = connect(day.db, readonly=True)
    counted = conn.execute("SELECT COALESCE(SUM(delta_wh), 0) FROM rec_claims WHERE household = 'sun-1'").fetchone()[0]
    conn.close()
    assert v.recs.counted_wh == counted > 0 and v.recs.certificates == ()
    doc = to_json(v)
    assert doc["household"] == "sun-1" and isinstance(doc["bill"]["comparison"]["with_p2p"]["bill"]["lines"], list)


def test_two_households_in_one_database_see_only_their_own(day: Day) -> None:
    conn = connect(day.db, readonly=True)
    try:
        for h, _, _ in HOUSES:
            v = view(day, h)
            own = {("0x" + bytes(f).hex()) for (f,) in conn.execute(
                "SELECT fill_id FROM trades WHERE grid = ? AND (maker_household = ? OR taker_household = ?)",
                (GRID, h, h))}
            assert {f.fill_id for f in v.fills} == own
            others = {("0x" + bytes(f).hex()) for (f,) in conn.execute(
                "SELECT fill_id FROM trades WHERE maker_household != ? AND taker_household != ?", (h, h))}
            assert not others & {f.fill_id for f in v.fills}
            mine = conn.execute("SELECT SUM(import_wh) FROM interval_energy WHERE device_id = ?",
                                (day.devices[h].device_id,)).fetchone()[0]
            assert v.today.import_wh == mine
            assert all(o.household == h for o in v.orders)
            assert v.address == "0x" + day.market.address[h].hex()
    finally:
        conn.close()
    a, b = view(day, "sun-1"), view(day, "dark-2")
    assert a.today != b.today and a.address != b.address


def test_unknown_and_malformed_households_are_refused_and_counted(day: Day) -> None:
    before = dict(day.cx.counters)
    for bad, reason in (("../etc/passwd", "bad_household"), ("", "bad_household"), ("nobody", "unknown_household")):
        with pytest.raises(ReadModelError) as e:
            view(day, bad)
        assert e.value.reason == reason
    assert day.cx.counters["unknown_household"] == before.get("unknown_household", 0) + 1
    assert day.cx.counters["bad_household"] == before.get("bad_household", 0) + 2


def test_a_chain_that_does_not_answer_leaves_the_page_with_no_balance(day: Day) -> None:
    import dataclasses
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    s.close()
    cx = dataclasses.replace(day.cx, sources=dataclasses.replace(day.cx.sources, validators=(dead,),
                                                                 rpc_timeout_s=0.5))
    v = asyncio.run(household_view(cx, "sun-1", day.now))
    assert v.balance_noia is None and v.balance_error == "unavailable"
    assert v.fills and v.bill.comparison is not None           # everything from the database is still there
    none = dataclasses.replace(cx, sources=dataclasses.replace(cx.sources, validators=()))
    assert asyncio.run(household_view(none, "sun-1", day.now)).balance_error == "no_validator"


def test_another_day_and_a_shorter_fill_list(day: Day) -> None:
    v = view(day, "sun-1")
    before = asyncio.run(household_view(day.cx, "sun-1", day.now, day=day.start - 86400, fills_limit=2))
    assert before.intervals == () and before.today.import_wh == 0 and before.today.since == v.today.since - 86400
    assert before.fills == v.fills[:2] and before.live == v.live and before.bill == v.bill
