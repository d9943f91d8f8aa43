"""Hostile input on every form and query: a specific refusal, never a server error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.web.config import Limits
from tests.web.kit import ORIGIN, csrf_of, homeowner, make_trading_web

FIELDS = ("login", "password", "password2", "next", "code", "d", "c", "side", "interval", "wh", "price", "order",
          "sell_floor", "buy_cap", "reserve_wh", "interval_wh", "daily_noia", "passphrase", "passphrase2", "to",
          "amount", "current", "new", "new2", "recovery")
POSTS = ("/signup", "/signin", "/signin/code", "/account/2fa", "/pair", "/home/order", "/home/order/cancel",
         "/home/policy", "/home/export", "/home/withdraw", "/account/password", "/account/2fa/recovery")
OK = {200, 202, 303, 400, 401, 403, 409, 413, 429}

nasty = st.one_of(st.text(max_size=300), st.sampled_from(["", "0", "-1", "1e309", "NaN", "Infinity", "0x" + "f" * 40,
                                                           "9" * 80, "\x00", "//evil.example", "' OR 1=1 --",
                                                           "<script>alert(1)</script>", "１２３４５６"]))


@pytest.fixture(scope="module")
def user(tmp_path_factory):  # type: ignore[no-untyped-def]
    big = (1000.0, 10_000)   # no rate limit in the way: the garbage must reach the deep checks
    t = make_trading_web(tmp_path_factory.mktemp("hostile"), limits=Limits(*([big] * 6)))
    kim, _ = homeowner(t, "kim@example.com", "101-A")
    return t, kim


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(POSTS), data=st.dictionaries(st.sampled_from(FIELDS), nasty, max_size=8))
def test_forms_refuse_garbage_without_a_server_error(user, path: str, data: dict[str, str]) -> None:
    t, kim = user
    token = csrf_of(kim.c.get("/home").text)
    r = kim.c.post(path, data={**data, "csrf": token}, headers={"origin": ORIGIN})
    assert r.status_code in OK, (path, data, r.status_code)
    assert "<script>alert(1)</script>" not in r.text   # whatever is echoed is escaped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(("/pair", "/signin", "/signup", "/home", "/account/2fa", "/signin/code")),
       params=st.dictionaries(st.sampled_from(("d", "c", "next", "done")), nasty, max_size=4))
def test_queries_refuse_garbage_without_a_server_error(user, path: str, params: dict[str, str]) -> None:
    _t, kim = user
    r = kim.c.get(path, params=params)
    assert r.status_code in OK, (path, params, r.status_code)
    assert "<script>alert(1)</script>" not in r.text


@pytest.mark.parametrize("field", ["sell_floor", "buy_cap", "reserve_wh", "interval_wh", "daily_noia"])
@pytest.mark.parametrize("value", ["NaN", "nan", "sNaN", "-NaN"])
def test_policy_nan_is_refused_not_a_server_error(user, field: str, value: str) -> None:
    """Decimal parses NaN but cannot compare it: found by the hypothesis test above in CI."""
    _t, kim = user
    token = csrf_of(kim.c.get("/home").text)
    r = kim.c.post("/home/policy", data={field: value, "csrf": token}, headers={"origin": ORIGIN})
    assert r.status_code in OK - {200, 202, 303}, (field, value, r.status_code)
