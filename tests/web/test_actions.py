"""The household's actions: manual orders, policy, key export, each gated as documented."""

from __future__ import annotations

import json

from eth_account import Account as EthAccount

from gateway.market.orders import ManualOrders
from gateway.web.routes_household import next_intervals
from tests.web.kit import ORIGIN, csrf_of, homeowner, make_trading_web


def _form(user, path: str, data: dict[str, str]):  # type: ignore[no-untyped-def]
    token = csrf_of(user.c.get("/home").text)
    return user.c.post(path, data={"csrf": token, **data}, headers={"origin": ORIGIN})


def test_a_manual_order_needs_a_fresh_totp_code(tmp_path) -> None:
    t = make_trading_web(tmp_path)
    kim, _ = homeowner(t, "kim@example.com", "101-A")
    start = next_intervals(t.clock(), 900)[1]
    order = {"side": "sell", "interval": str(start), "wh": "500", "price": "150"}
    r = _form(kim, "/home/order", order)
    assert r.status_code == 403 and "Type the 6-digit code" in r.text
    r = _form(kim, "/home/order", {**order, "code": "12345x"})
    assert r.status_code == 403 and "not right" in r.text
    r = _form(kim, "/home/order", {**order, "code": kim.code(t.clock)})  # the enrolment used this step
    assert r.status_code == 403 and "already used" in r.text
    code = kim.code(t.clock, ahead=1)
    r = _form(kim, "/home/order", {**order, "code": code})
    assert r.status_code == 303 and r.headers["location"] == "/home?done=order#orders"
    page = kim.c.get("/home?done=order").text
    assert "Order placed." in page and "150.00" in page and ">500<" in page
    cx = t.web.complex()
    with cx.db() as conn:
        rows = ManualOrders(conn, cx.wallet, "demo", cx.domain, clock=t.clock).list("101-A")
    assert [(o.side, o.wh, o.interval_start, o.state) for o in rows] == [("sell", 500, start, "signed")]
    assert rows[0].price_per_wh == 150 * 10 ** 18 // 1000
    r = _form(kim, "/home/order", {**order, "code": code})  # a code works once
    assert r.status_code == 403 and "already used" in r.text
    assert t.web.guard.counters["totp_replayed"] == 2


def test_order_refusals_are_specific_and_counted(tmp_path) -> None:
    t = make_trading_web(tmp_path)
    kim, _ = homeowner(t, "kim@example.com", "101-A")
    past = next_intervals(t.clock(), 900)[0] - 900
    r = _form(kim, "/home/order", {"side": "buy", "interval": str(past), "wh": "100", "price": "200",
                                   "code": kim.code(t.clock, ahead=1)})
    assert r.status_code == 400 and "already started" in r.text
    t.clock.t += 60
    r = _form(kim, "/home/order", {"side": "buy", "interval": str(past + 1800), "wh": "lots", "price": "200",
                                   "code": kim.code(t.clock, ahead=1)})
    assert r.status_code == 400 and "whole number of Wh" in r.text
    assert t.web.guard.counters["action_interval_past"] == 1 and t.web.guard.counters["action_bad_wh"] == 1


def test_withdrawing_an_open_order(tmp_path) -> None:
    t = make_trading_web(tmp_path)
    kim, _ = homeowner(t, "kim@example.com", "101-A")
    start = next_intervals(t.clock(), 900)[2]
    r = _form(kim, "/home/order", {"side": "buy", "interval": str(start), "wh": "300", "price": "180",
                                   "code": kim.code(t.clock, ahead=1)})
    assert r.status_code == 303
    with t.web.complex().db() as conn:
        (order_id,) = conn.execute("SELECT id FROM manual_orders").fetchone()
    r = _form(kim, "/home/order/cancel", {"order": order_id})
    assert r.status_code == 303
    assert 'data-order="%s"' % order_id in kim.c.get("/home").text and "cancelled" in kim.c.get("/home").text


def test_policy_tightening_needs_no_code_loosening_does(tmp_path) -> None:
    t = make_trading_web(tmp_path)
    kim, _ = homeowner(t, "kim@example.com", "101-A")
    wallet = t.web.complex().wallet
    policy = {"sell_floor": "120", "buy_cap": "250", "reserve_wh": "50", "interval_wh": "1000", "daily_noia": "500"}
    r = _form(kim, "/home/policy", policy)  # from no policy: lets the agents trade at all
    assert r.status_code == 403 and wallet.policy("101-A") is None
    r = _form(kim, "/home/policy", {**policy, "code": kim.code(t.clock, ahead=1)})
    assert r.status_code == 303
    p = wallet.policy("101-A")
    assert (p.sell_floor_per_wh, p.buy_cap_per_wh, p.reserve_wh, p.interval_wh, p.daily_noia) == (
        120 * 10 ** 15, 250 * 10 ** 15, 50, 1000, 500 * 10 ** 18)
    stricter = {**policy, "buy_cap": "", "daily_noia": "100", "reserve_wh": "80"}  # stop buying: no code needed
    assert _form(kim, "/home/policy", stricter).status_code == 303
    assert wallet.policy("101-A").buy_cap_per_wh is None
    for looser in ({"daily_noia": "101"}, {"sell_floor": "119"}, {"reserve_wh": "79"}, {"buy_cap": "1"},
                   {"interval_wh": "1001"}, {"daily_noia": "1e9"}):
        r = _form(kim, "/home/policy", {**stricter, **looser})
        assert r.status_code == 403, looser
    assert wallet.policy("101-A").daily_noia == 100 * 10 ** 18
    t.clock.t += 120
    r = _form(kim, "/home/policy", {**stricter, "sell_floor": "-5", "code": kim.code(t.clock)})
    assert r.status_code == 400 and "sell floor" in r.text


def test_key_export_needs_a_code_and_opens_with_the_passphrase(tmp_path) -> None:
    t = make_trading_web(tmp_path)
    kim, _ = homeowner(t, "kim@example.com", "101-A")
    data = {"passphrase": "my own long passphrase", "passphrase2": "my own long passphrase"}
    r = _form(kim, "/home/export", data)
    assert r.status_code == 403 and "application/json" not in r.headers["content-type"]
    r = _form(kim, "/home/export", {**data, "passphrase2": "something else entirely"})
    assert r.status_code == 400
    r = _form(kim, "/home/export", {**data, "code": kim.code(t.clock, ahead=1)})
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('"101-A-keystore.json"')
    key = EthAccount.decrypt(json.loads(r.text), data["passphrase"])
    assert EthAccount.from_key(key).address.lower() == "0x" + t.web.complex().wallet.address("101-A").hex()
