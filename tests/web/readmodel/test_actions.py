"""Actions the household page triggers, through the market's own code on the market day: a manual order
placed (signed as a firm order), shown to its household only, cancelled on the chain; the trading policy
changed; every bad input refused with its reason and counted."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

import pytest

from gateway.chain_client.rpc import JsonRpcClient
from gateway.db import connect
from gateway.web.readmodel import (Complex, ReadModelError, cancel_manual_order, chain_client, household_view,
                                   place_manual_order, set_policy)

from .conftest import L, Day


def refused(cx: Complex, reason: str, fn, *a, **kw) -> None:  # type: ignore[no-untyped-def]
    before = cx.counters[reason]
    with pytest.raises(ReadModelError) as e:
        r = fn(*a, **kw)
        if asyncio.iscoroutine(r):
            asyncio.run(r)
    assert e.value.reason == reason, e.value
    assert cx.counters[reason] == before + 1


def test_a_manual_sell_is_signed_shown_to_its_household_only_and_cancelled_on_chain(day: Day) -> None:
    cx = day.cx
    nxt = (day.now // L + 1) * L
    o = place_manual_order(cx, "sun-1", "sell", nxt, 500, "123.45", now=day.now)
    assert (o.household, o.side, o.wh, o.state, o.interval_start) == ("sun-1", "sell", 500, "signed", nxt)
    assert o.price_per_wh == 123_450_000_000_000_000 and o.signed_order is not None
    so = o.signed_order.order
    assert so.maker == day.market.address["sun-1"] and so.noia == 500 * o.price_per_wh and so.expiry == nxt
    b = place_manual_order(cx, "dark-2", "buy", nxt + L, 300, 200, now=day.now)
    assert b.state == "open" and b.side == "buy"
    mine = asyncio.run(household_view(cx, "sun-1", day.now)).orders
    theirs = asyncio.run(household_view(cx, "dark-2", day.now)).orders
    assert [x.id for x in mine] == [o.id] and [x.id for x in theirs] == [b.id]
    refused(cx, "not_yours", cancel_manual_order, cx, "dark-2", o.id, now=day.now)
    refused(cx, "bad_order_id", cancel_manual_order, cx, "sun-1", "../../x")

    async def cancel() -> object:
        chain = chain_client(cx)
        chain.start()
        try:
            return await cancel_manual_order(cx, "sun-1", o.id, chain, timeout=60, now=day.now)
        finally:
            await chain.aclose()
    done = asyncio.run(cancel())
    assert done.state == "cancelled"   # type: ignore[attr-defined]
    # the cancel went out once, through the outbox that holds the household's fills, and is final on the chain
    conn = connect(day.folder / "market" / "market-outbox.db", readonly=True)
    (state, tx_hash), = conn.execute("SELECT state, tx_hash FROM chain_outbox WHERE key = ?", (f"cancel:{o.id}",))
    conn.close()

    async def receipt() -> dict:
        async with JsonRpcClient(day.market.chain.url) as rpc:
            return await rpc.call("chain_getTransactionReceipt", "0x" + bytes(tx_hash).hex())
    r = asyncio.run(receipt())
    assert state == "final" and r["status"] == "final" and r["type"] == "cancel"
    refused(cx, "already_cancelled", cancel_manual_order, cx, "sun-1", o.id, now=day.now)
    withdrawn = asyncio.run(cancel_manual_order(cx, "dark-2", b.id, now=day.now))   # never signed: just withdrawn
    assert withdrawn.state == "cancelled"


@pytest.mark.parametrize("args,reason", [
    (("sun-1", "give", 1, 100, "100"), "bad_side"),
    (("sun-1", "sell", 0, 100, "100"), "interval_past"),
    (("sun-1", "sell", "soon", 100, "100"), "bad_interval"),
    (("sun-1", "sell", 1, 0, "100"), "bad_wh"),
    (("sun-1", "sell", 1, 10**6, "100"), "bad_wh"),
    (("sun-1", "sell", 1, True, "100"), "bad_wh"),
    (("sun-1", "sell", 1, 100, "abc"), "bad_price"),
    (("sun-1", "sell", 1, 100, "1.234"), "bad_price"),
    (("sun-1", "sell", 1, 100, "-5"), "bad_price"),
    (("sun-1", "sell", 1, 100, "0"), "bad_price"),
    (("sun-1", "sell", 1, 100, "NaN"), "bad_price"),
    (("sun-1", "sell", 1, 100, "Infinity"), "bad_price"),
    (("sun-1", "sell", 1, 100, 10**9), "bad_price"),
    (("nobody", "sell", 1, 100, "100"), "unknown_household"),
    (("../x", "sell", 1, 100, "100"), "bad_household"),
])
def test_bad_orders_are_refused_with_their_reason_and_counted(day: Day, args, reason) -> None:
    h, side, k, wh, price = args
    nxt = (day.now // L + 1) * L
    start = {0: day.now // L * L, 1: nxt}.get(k, k) if not isinstance(k, str) else k
    refused(day.cx, reason, place_manual_order, day.cx, h, side, start, wh, price, now=day.now)


def test_interval_rules_and_a_closed_wallet_or_market(day: Day) -> None:
    cx = day.cx
    nxt = (day.now // L + 1) * L
    refused(cx, "bad_interval", place_manual_order, cx, "sun-1", "sell", nxt + 60, 100, "100", now=day.now)
    refused(cx, "interval_too_far", place_manual_order, cx, "sun-1", "sell", nxt + 3 * 86400, 100, "100", now=day.now)
    refused(cx, "bad_mechanism", place_manual_order, cx, "sun-1", "sell", nxt, 100, "100", mechanism="x", now=day.now)
    closed = Complex(cx.sources)
    refused(closed, "wallet_closed", place_manual_order, closed, "sun-1", "sell", nxt, 100, "100", now=day.now)
    refused(closed, "wallet_closed", set_policy, closed, "sun-1", reserve_wh=1)
    nodomain = dataclasses.replace(cx, domain=None)
    refused(nodomain, "market_closed", place_manual_order, nodomain, "sun-1", "sell", nxt, 100, "100", now=day.now)


def test_policy_changes_through_the_wallet_and_reads_back(day: Day) -> None:
    cx = day.cx
    before = day.market.wallet.policy("sun-3")
    assert before is not None
    v = set_policy(cx, "sun-3", sell_floor_won_kwh="150.5", reserve_wh=200)
    assert (v.sell_floor_won_kwh, v.reserve_wh) == (Decimal("150.5"), 200)
    after = day.market.wallet.policy("sun-3")
    assert after is not None and after.sell_floor_per_wh == 150_500_000_000_000_000
    assert (after.buy_cap_per_wh, after.interval_wh, after.daily_noia) == \
        (before.buy_cap_per_wh, before.interval_wh, before.daily_noia)        # untouched fields kept
    v = set_policy(cx, "sun-3", buy_cap_won_kwh=None, daily_noia=500)
    assert v.buy_cap_won_kwh is None and v.daily_noia == 500 and v.sell_floor_won_kwh == Decimal("150.5")
    assert asyncio.run(household_view(cx, "sun-3", day.now)).policy == v
    for kw, reason in (({"reserve_wh": -1}, "bad_reserve"), ({"sell_floor_won_kwh": "x"}, "bad_floor"),
                       ({"buy_cap_won_kwh": "0"}, "bad_cap"), ({"interval_wh": 10**7}, "bad_interval_wh"),
                       ({"daily_noia": "lots"}, "bad_daily_noia")):
        refused(cx, reason, set_policy, cx, "sun-3", **kw)
    assert day.market.wallet.policy("sun-3") == day.market.wallet.policy("sun-3")
    assert asyncio.run(household_view(cx, "sun-3", day.now)).policy == v          # nothing changed by a refusal
    refused(cx, "unknown_household", set_policy, cx, "nobody", reserve_wh=1)


def test_a_tampered_policy_shows_as_such_and_is_never_loosened(day: Day) -> None:
    """Someone with write access to wallet.db but not the master secret edits a policy: the MAC fails,
    the page says so, nothing signs under it, and set_policy refuses rather than building on it."""
    import sqlite3
    conn = sqlite3.connect(day.market.wallet.db_path)
    conn.execute("UPDATE wallet_policies SET policy = replace(policy, ?, ?) WHERE household = 'sun-1'",
                 ('"reserve_wh": ', '"reserve_wh": 1'))
    conn.commit()
    conn.close()
    v = asyncio.run(household_view(day.cx, "sun-1", day.now))
    assert v.policy is None and v.policy_error == "tampered"
    refused(day.cx, "tampered", set_policy, day.cx, "sun-1", reserve_wh=0)


def test_a_household_whose_meter_was_revoked_keeps_its_history_but_cannot_trade(day: Day) -> None:
    from gateway.devices import DeviceRegistry
    before = asyncio.run(household_view(day.cx, "dark-2", day.now))
    conn = connect(day.db)
    DeviceRegistry(conn).revoke(day.devices["dark-2"].device_id, "meter replaced")
    conn.close()
    after = asyncio.run(household_view(day.cx, "dark-2", day.now))
    assert (after.live.devices, after.live.power_w) == (0, None) and before.live.devices == 1
    assert (after.today, after.fills, after.bill) == (before.today, before.fills, before.bill)
    nxt = (day.now // L + 1) * L
    refused(day.cx, "unknown_household", place_manual_order, day.cx, "dark-2", "buy", nxt, 100, "100", now=day.now)
