"""Who reaches what: signed out, household A, household B, operator, on every endpoint.

One household never sees or changes another's data; only operators (with TOTP)
reach the operator view; operators cannot act as a household."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from tests.web.kit import (ORIGIN, PASSWORD, add_reading, client, csrf_of, enrol, homeowner, make_trading_web,
                           post)
from gateway.web.accounts import OPERATOR
from gateway.web.routes_household import next_intervals

GETS = ("/home", "/home/live.json", "/operator", "/account/2fa")


@pytest.fixture()
def world(tmp_path):  # type: ignore[no-untyped-def]
    t = make_trading_web(tmp_path)
    a, dev_a = homeowner(t, "kim@example.com", "101-A")
    b, dev_b = homeowner(t, "lee@example.com", "102-B")
    now = int(t.clock())
    add_reading(t.web, dev_a, 1, 1234, now)
    add_reading(t.web, dev_b, 1, -987, now)
    t.web.store().accounts.create("ops@utility.example", PASSWORD, OPERATOR, now)
    ops = client(t.web)
    assert post(ops, "/signin", {"login": "ops@utility.example", "password": PASSWORD}).status_code == 303
    from tests.web.kit import User
    op = User(ops, "ops@utility.example")
    enrol(t.web, op, t.clock)
    t.clock.t += 60  # every enrolment code is spent; a new step for what follows
    return t, a, dev_a, b, dev_b, op


def test_every_get_route_is_in_the_matrix(tmp_path) -> None:
    t = make_trading_web(tmp_path)
    gets = {r.path for r in t.web.app.routes if isinstance(r, Route) and "GET" in (r.methods or ())}
    assert gets - set(GETS) == {"/", "/signup", "/signin", "/signin/code", "/pair"}  # public or self-checking


def test_signed_out_reaches_nothing_private(world) -> None:
    t, *_ = world
    c = client(t.web)
    for path in GETS:
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin"), path
    token = csrf_of(c.get("/signin").text)  # a signed-out visitor's own token
    for path in ("/home/order", "/home/policy", "/home/export", "/home/order/cancel", "/home/withdraw"):
        r = c.post(path, data={"csrf": token, "side": "buy"}, headers={"origin": ORIGIN})
        assert r.status_code == 303 and r.headers["location"].startswith("/signin"), path


def test_each_household_sees_only_its_own(world) -> None:
    t, a, dev_a, b, dev_b, _op = world
    page_a, page_b = a.c.get("/home").text, b.c.get("/home").text
    assert "Household 101-A" in page_a and dev_a in page_a and dev_b not in page_a and "102-B" not in page_a
    assert "Household 102-B" in page_b and dev_b in page_b and dev_a not in page_b and "101-A" not in page_b
    assert a.c.get("/home/live.json").json()["power"] == "+1,234 W"
    assert b.c.get("/home/live.json").json()["power"] == "-987 W"
    # the household comes from the session, never from the request
    assert "Household 101-A" in a.c.get("/home", params={"household": "102-B"}).text
    assert a.c.get("/home/live.json", params={"household": "102-B"}).json()["power"] == "+1,234 W"


def test_one_household_cannot_touch_anothers_orders_or_policy(world) -> None:
    t, a, _dev_a, b, _dev_b, _op = world
    start = next_intervals(t.clock(), 900)[1]
    page = a.c.get("/home").text
    r = a.c.post("/home/order", data={"csrf": csrf_of(page), "side": "buy", "interval": str(start), "wh": "200",
                                      "price": "200", "code": a.code(t.clock), "household": "102-B"},
                 headers={"origin": ORIGIN})
    assert r.status_code == 303
    with t.web.complex().db() as conn:
        (order_id, owner), = conn.execute("SELECT id, household FROM manual_orders").fetchall()
    assert owner == "101-A"
    assert order_id not in b.c.get("/home").text
    page = b.c.get("/home").text
    r = b.c.post("/home/order/cancel", data={"csrf": csrf_of(page), "order": order_id}, headers={"origin": ORIGIN})
    assert r.status_code == 400 and "not_yours" in r.text
    with t.web.complex().db() as conn:
        assert conn.execute("SELECT state FROM manual_orders").fetchone()[0] == "open"
    page = b.c.get("/home").text
    r = b.c.post("/home/policy", data={"csrf": csrf_of(page), "sell_floor": "100", "buy_cap": "", "reserve_wh": "0",
                                       "interval_wh": "500", "daily_noia": "0", "code": b.code(t.clock),
                                       "household": "101-A"}, headers={"origin": ORIGIN})
    assert r.status_code == 303
    wallet = t.web.complex().wallet
    assert wallet.policy("101-A") is None and wallet.policy("102-B").sell_floor_per_wh == 100 * 10 ** 15
    # and a token of A's session is no good in B's
    r = b.c.post("/home/policy", data={"csrf": csrf_of(a.c.get("/home").text), "buy_cap": ""},
                 headers={"origin": ORIGIN})
    assert r.status_code == 403


def test_only_operators_reach_the_operator_view(world) -> None:
    t, a, dev_a, b, dev_b, op = world
    for user in (a, b):
        r = user.c.get("/operator")
        assert r.status_code == 403 and 'data-reason="wrong_role"' in r.text
    r = op.c.get("/operator")
    assert r.status_code == 200 and dev_a in r.text and dev_b in r.text and "101-A" in r.text
    for path in ("/home", "/home/live.json"):
        assert op.c.get(path).status_code == 403
    page = op.c.get("/operator").text
    for path in ("/home/order", "/home/policy", "/home/export", "/home/order/cancel", "/home/withdraw"):
        r = op.c.post(path, data={"csrf": csrf_of(page)}, headers={"origin": ORIGIN})
        assert r.status_code == 403 and 'data-reason="wrong_role"' in r.text, path
    assert t.web.guard.counters["wrong_role"] >= 8


def test_an_operator_without_totp_is_sent_to_enrol(tmp_path) -> None:
    t = make_trading_web(tmp_path)
    t.web.store().accounts.create("ops@utility.example", PASSWORD, OPERATOR, int(t.clock()))
    c = client(t.web)
    post(c, "/signin", {"login": "ops@utility.example", "password": PASSWORD})
    r = c.get("/operator")
    assert r.status_code == 303 and r.headers["location"] == "/account/2fa?next=/operator"
