"""Sign-up, sign-in with TOTP, sign-out; session rotation, expiry and the cookie's flags."""

from __future__ import annotations

from tests.web.kit import ORIGIN, PASSWORD, Clock, client, csrf_of, enrol, make_web, post, signup


def _cookie_header(resp) -> str:  # type: ignore[no-untyped-def]
    return resp.headers["set-cookie"]


def test_cookie_flags_secure_config(tmp_path) -> None:
    web = make_web(tmp_path, public_url="https://gw.example", cookie_secure=True)
    r = client(web).get("/signin")
    cookie = _cookie_header(r)
    assert cookie.startswith("__Host-mn_session=")
    for flag in ("HttpOnly", "Secure", "Path=/", "SameSite=lax"):
        assert flag in cookie
    assert "Domain" not in cookie and "Max-Age" not in cookie and "expires" not in cookie.lower()
    assert r.headers["strict-transport-security"].startswith("max-age=")


def test_cookie_flags_loopback_demo(tmp_path) -> None:
    cookie = _cookie_header(client(make_web(tmp_path)).get("/signin"))
    assert cookie.startswith("mn_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie


def test_signup_signs_in_and_rotates_the_session(tmp_path) -> None:
    web = make_web(tmp_path)
    c = client(web)
    c.get("/signin")
    before = c.cookies["mn_session"]
    r = post(c, "/signup", {"login": "kim@example.com", "password": PASSWORD, "password2": PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == "/account/2fa"
    after = c.cookies["mn_session"]
    assert after != before
    assert c.get("/home").status_code == 200
    stale = client(web)
    stale.cookies.set("mn_session", before)
    assert stale.get("/home").status_code == 303  # the pre-sign-up token is worthless


def test_signup_refusals_are_specific(tmp_path) -> None:
    web = make_web(tmp_path)
    signup(web, "kim@example.com")
    c = client(web)
    cases = [({"login": "kim@example.com", "password": PASSWORD, "password2": PASSWORD}, "exists"),
             ({"login": "lee@example.com", "password": "short", "password2": "short"}, "at least 10"),
             ({"login": "lee@example.com", "password": PASSWORD, "password2": PASSWORD + "x"}, "differ"),
             ({"login": "not a login", "password": PASSWORD, "password2": PASSWORD}, "email address or a phone")]
    for data, words in cases:
        r = post(c, "/signup", data)
        assert r.status_code == 400 and words in r.text
    assert web.guard.counters["signup_login_taken"] == 1
    assert web.guard.counters["signup_weak_password"] == 1


def test_signin_with_totp_then_signout(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    user = signup(web, "010-5555-1234")
    enrol(web, user, clock)
    c = client(web)
    r = post(c, "/signin", {"login": "+82 10 5555 1234", "password": "wrong password here"})
    assert r.status_code == 401 and "Wrong login or password" in r.text
    r = post(c, "/signin", {"login": "no-such@example.com", "password": PASSWORD})
    assert r.status_code == 401 and "Wrong login or password" in r.text
    r = post(c, "/signin", {"login": "010 5555 1234", "password": PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == "/signin/code"
    assert c.get("/home").status_code == 303  # password alone is not enough once TOTP is on
    clock.t += 60
    r = post(c, "/signin/code", {"code": "000000" if user.code(clock) != "000000" else "111111"})
    assert r.status_code == 401
    mfa_token = c.cookies["mn_session"]
    r = post(c, "/signin/code", {"code": user.code(clock)})
    assert r.status_code == 303 and r.headers["location"] == "/home"
    assert c.cookies["mn_session"] != mfa_token
    assert c.get("/home").status_code == 200
    r = post(c, "/signout", {}, page="/home")
    assert r.status_code == 303 and c.get("/home").status_code == 303


def test_idle_and_absolute_expiry(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock, session_idle_s=600, session_absolute_s=1800)
    user = signup(web, "kim@example.com")
    clock.t += 599
    assert user.c.get("/home").status_code == 200
    clock.t += 601
    assert user.c.get("/home").status_code == 303  # idle too long
    c = client(web)
    assert post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD}).status_code == 303
    for _ in range(3):  # active every 500 s, but the absolute limit still ends it
        clock.t += 500
        assert c.get("/home").status_code == 200
    clock.t += 500
    assert c.get("/home").status_code == 303


def test_next_is_kept_local(tmp_path) -> None:
    web = make_web(tmp_path)
    signup(web, "kim@example.com")
    c = client(web)
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        page = c.get("/signin", params={"next": evil}).text
        r = c.post("/signin", data={"csrf": csrf_of(page), "login": "kim@example.com", "password": PASSWORD,
                                    "next": evil}, headers={"origin": ORIGIN})
        assert r.status_code == 303 and r.headers["location"] == "/home"
        post(c, "/signout", {}, page="/home")


def test_expired_sessions_are_purged_from_the_table(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock, session_idle_s=600, session_absolute_s=1800)
    signup(web, "kim@example.com")
    for _ in range(3):
        client(web).get("/signin")   # signed-out visitors who never come back
    count = lambda: web.store().conn.execute("SELECT COUNT(*) FROM web_sessions").fetchone()[0]  # noqa: E731
    assert count() == 4
    clock.t += 3601   # past the anonymous and the idle limits
    client(web).get("/signin")   # any request purges (at most every 10 minutes)
    assert count() == 1          # only the new visitor's


def test_changing_the_password_needs_the_old_one_and_a_code_and_ends_other_sessions(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    user = signup(web, "kim@example.com")
    enrol(web, user, clock)
    other = client(web)   # the same person (or someone else) signed in elsewhere
    post(other, "/signin", {"login": "kim@example.com", "password": PASSWORD})
    clock.t += 60
    post(other, "/signin/code", {"code": user.code(clock)}, page="/signin/code")
    assert other.get("/home").status_code == 200
    new = "violet-harbour-engine-77"

    def change(data):  # type: ignore[no-untyped-def]
        return post(user.c, "/account/password", data, page="/account/2fa")

    r = change({"current": "not-my-password", "new": new, "new2": new})
    assert r.status_code == 403 and 'data-reason="wrong_password"' in r.text
    r = change({"current": PASSWORD, "new": "short", "new2": "short"})
    assert r.status_code == 400 and 'data-reason="weak_password"' in r.text
    r = change({"current": PASSWORD, "new": new, "new2": new})
    assert r.status_code == 403 and 'data-reason="totp_missing"' in r.text
    r = change({"current": PASSWORD, "new": new, "new2": new, "code": user.code(clock, ahead=1)})
    assert r.status_code == 303 and r.headers["location"] == "/account/2fa?done=password"
    assert "Your password is changed" in user.c.get("/account/2fa?done=password").text
    assert user.c.get("/home").status_code == 200     # this session goes on (a new token)
    assert other.get("/home").status_code == 303      # every other one ended
    c = client(web)
    assert post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD}).status_code == 401
    assert post(c, "/signin", {"login": "kim@example.com", "password": new}).status_code == 303
