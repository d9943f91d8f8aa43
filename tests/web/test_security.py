"""CSRF and Origin checks on every state-changing request, security headers,
brute-force limits on sign-in and TOTP, and no secret in the logs."""

from __future__ import annotations

import logging

import pytest
from starlette.routing import Mount, Route

from gateway.web.config import Limits
from tests.web.kit import (ORIGIN, PASSWORD, Clock, add_device, client, csrf_of, enrol, make_web, pair, post,
                           signup)

# every POST endpoint and a page (GET) of the same session that carries a token
POSTS = {"/signup": "/signup", "/signin": "/signin", "/signin/code": "/home", "/signout": "/home",
         "/account/2fa": "/account/2fa", "/pair": "/home", "/home/order": "/home", "/home/order/cancel": "/home",
         "/home/policy": "/home", "/home/export": "/home", "/home/withdraw": "/home",
         "/account/password": "/account/2fa", "/account/2fa/recovery": "/account/2fa"}


def _post_routes(web) -> set[str]:  # type: ignore[no-untyped-def]
    return {r.path for r in web.app.routes if isinstance(r, Route) and "POST" in (r.methods or ())}


def test_the_csrf_list_covers_every_post_route(tmp_path) -> None:
    web = make_web(tmp_path)
    assert _post_routes(web) == set(POSTS), "a POST route is missing from the CSRF tests"
    assert not any(isinstance(r, Mount) and r.path != "/static" for r in web.app.routes)


@pytest.mark.parametrize("path", sorted(POSTS))
def test_post_without_or_with_a_wrong_token_is_refused(tmp_path, path: str) -> None:
    web = make_web(tmp_path)
    user = signup(web, "kim@example.com")
    if path in ("/signup", "/signin"):  # forms of signed-out visitors
        user.c = client(web)
    page = user.c.get(POSTS[path])
    token = csrf_of(page.text)
    r = user.c.post(path, data={"login": "x"}, headers={"origin": ORIGIN})
    assert r.status_code == 403 and 'data-reason="csrf_missing"' in r.text
    r = user.c.post(path, data={"csrf": token[:-2] + "xx"}, headers={"origin": ORIGIN})
    assert r.status_code == 403 and 'data-reason="csrf_mismatch"' in r.text
    other = client(web)  # a token from another session is as good as none
    other_token = csrf_of(other.get("/signin").text)
    r = user.c.post(path, data={"csrf": other_token}, headers={"origin": ORIGIN})
    assert r.status_code == 403 and 'data-reason="csrf_mismatch"' in r.text
    r = user.c.post(path, data={"csrf": token}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and 'data-reason="csrf_bad_origin"' in r.text
    r = user.c.post(path, data={"csrf": token}, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403 and 'data-reason="csrf_bad_origin"' in r.text
    assert web.guard.counters["csrf_missing"] == 1 and web.guard.counters["csrf_mismatch"] == 2
    assert web.guard.counters["csrf_bad_origin"] == 2
    assert user.c.get("/home").status_code == (303 if path in ("/signup", "/signin") else 200)


def test_security_headers_on_pages_and_no_store(tmp_path) -> None:
    web = make_web(tmp_path)
    user = signup(web, "kim@example.com")
    for path in ("/signin", "/signup", "/home", "/account/2fa", "/pair?d=00", "/nope"):
        r = user.c.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "same-origin"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
    r = user.c.get("/static/app.css")
    assert r.status_code == 200 and r.headers.get("cache-control") != "no-store"
    for page in ("/signin", "/home", "/account/2fa"):
        html = user.c.get(page).text
        assert "<script>" not in html and " style=" not in html and "onclick" not in html


def test_signin_is_rate_limited_per_login_and_per_address(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock, limits=Limits(signin_per_login=(1 / 30, 3), signin_per_ip=(1 / 5, 5)))
    signup(web, "kim@example.com")
    c = client(web)
    codes = [post(c, "/signin", {"login": "kim@example.com", "password": f"wrong-{i}-password"}).status_code
             for i in range(4)]
    assert codes == [401, 401, 401, 429]
    # even the right password waits: the bucket counts attempts
    r = post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert post(c, "/signin", {"login": "lee@example.com", "password": PASSWORD}).status_code == 429  # address
    clock.t += 60
    assert post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD}).status_code == 303
    assert web.guard.counters["signin_failed"] == 3 and web.guard.counters["signin_rate_limited"] == 3


def test_totp_codes_are_rate_limited(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock, limits=Limits(totp_per_account=(1 / 30, 4)))
    user = signup(web, "kim@example.com")
    enrol(web, user, clock)  # one attempt
    c = client(web)
    clock.t += 600
    post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD})
    wrong = "000000" if user.code(clock) != "000000" else "111111"
    codes = [post(c, "/signin/code", {"code": wrong}, page="/signin/code").status_code for _ in range(5)]
    assert codes == [401, 401, 401, 401, 429]
    r = post(c, "/signin/code", {"code": user.code(clock)}, page="/signin/code")
    assert r.status_code == 429
    clock.t += 60
    assert post(c, "/signin/code", {"code": user.code(clock)}, page="/signin/code").status_code == 303
    assert web.guard.counters["totp_bad_code"] == 4 and web.guard.counters["totp_rate_limited"] == 2


def test_no_password_totp_secret_claim_code_or_token_in_logs(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    device, claim = add_device(web, "101-A", claim="CLAIM-7f3a9c2e")
    user = signup(web, "kim@example.com")
    enrol(web, user, clock)
    user.c.get(f"/pair?d={device}&c=CLAIM-wrong-1")
    assert pair(user, device, claim).status_code == 200
    c = client(web)
    clock.t += 120
    post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD + "-typo"})
    post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD})
    code = user.code(clock)
    post(c, "/signin/code", {"code": code}, page="/signin/code")
    # the gateway's own records (httpx, the test's client, logs the URLs it requests)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("gateway", "uvicorn")))
    assert "web security event: claim_failed" in text and "/pair" in text  # the logs do say what happened
    assert user.secret
    for secret in (PASSWORD, user.secret, claim, "CLAIM-wrong-1", code, user.c.cookies["mn_session"],
                   c.cookies["mn_session"], csrf_of(user.c.get("/home").text)):
        assert secret not in text
