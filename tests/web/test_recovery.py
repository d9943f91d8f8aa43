"""TOTP recovery codes: ten shown once at enrolment, hashes only in the database, each signs in
once in place of a TOTP code (rate-limited like one), a recovery sign-in spends nothing until TOTP
is enrolled again, a new set for a fresh TOTP code, and the operator's reset-2fa forgets them."""

from __future__ import annotations

import re

from gateway.cli import main as cli_main
from gateway.installer.claim import ALPHABET
from gateway.web.config import Limits
from tests.web.kit import (ORIGIN, PASSWORD, Clock, User, client, csrf_of, enrol, homeowner, make_trading_web,
                           make_web, post, recovery_codes_of, signup)


def _signin_password(web, login: str = "kim@example.com") -> User:  # type: ignore[no-untyped-def]
    c = client(web)
    r = post(c, "/signin", {"login": login, "password": PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == "/signin/code"
    return User(c, login)


def _recover(user: User, code: str):  # type: ignore[no-untyped-def]
    return post(user.c, "/signin/code", {"recovery": code}, page="/signin/code")


def test_enrolment_shows_ten_codes_once_and_stores_only_hashes(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    kim = signup(web, "kim@example.com")
    enrol(web, kim, clock)
    codes = kim.recovery
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(len(c.replace("-", "")) == 16 and set(c.replace("-", "")) <= set(ALPHABET) for c in codes)
    page = kim.c.get("/account/2fa").text      # never shown again
    assert not recovery_codes_of(page) and not any(c in page for c in codes)
    assert re.search(r'id="recovery-left">10<', page)
    rows = web.store().conn.execute("SELECT code_hash, used_at FROM web_recovery_codes").fetchall()
    assert len(rows) == 10 and all(len(bytes(h)) == 32 and u is None for h, u in rows)
    raw = (tmp_path / "gateway.db").read_bytes() + (tmp_path / "gateway.db-wal").read_bytes()
    assert not any(c.encode() in raw or c.replace("-", "").encode() in raw for c in codes)


def test_a_recovery_code_signs_in_once_and_forces_re_enrolment_before_spending(tmp_path) -> None:
    t = make_trading_web(tmp_path)
    kim, _device = homeowner(t, "kim@example.com", "101-A")
    t.clock.t += 120
    user = _signin_password(t.web)
    typed = kim.recovery[3].lower().replace("-", "").replace("0", "o")   # any case, no hyphens, O for 0
    r = _recover(user, typed)
    assert r.status_code == 303 and r.headers["location"].startswith("/account/2fa?recovered=1")
    assert t.web.guard.counters["recovery_code_used"] == 1
    page = user.c.get("/account/2fa")
    assert 'id="reenrol"' in page.text and 'id="totp-secret"' in page.text   # enrolment again, not "on"
    # no spending with the old authenticator until then: an order and a password change are refused
    home = user.c.get("/home").text
    r = user.c.post("/home/order", data={"csrf": csrf_of(home), "side": "sell", "interval": "x", "wh": "500",
                                         "price": "150", "code": kim.code(t.clock)}, headers={"origin": ORIGIN})
    assert r.status_code == 403 and "signed in with a recovery code" in r.text
    r = post(user.c, "/account/password", {"current": PASSWORD, "new": "another-long-pass-99",
                                           "new2": "another-long-pass-99", "code": kim.code(t.clock)},
             page="/account/2fa")
    assert r.status_code == 403 and 'data-reason="totp_reenrol"' in r.text
    # the same code never works twice
    other = _signin_password(t.web)
    r = _recover(other, kim.recovery[3])
    assert r.status_code == 401 and "already used" in r.text
    # re-enrolling (a new key) issues a new set and ends the restriction; the old set is gone
    enrol(t.web, user, t.clock)
    assert len(user.recovery) == 10 and not set(user.recovery) & set(kim.recovery)
    assert 'id="recovery-left">10<' in user.c.get("/account/2fa").text
    assert _recover(_signin_password(t.web), kim.recovery[4]).status_code == 401
    t.clock.t += 60
    r = post(user.c, "/account/password", {"current": PASSWORD, "new": "another-long-pass-99",
                                           "new2": "another-long-pass-99", "code": user.code(t.clock)},
             page="/account/2fa")
    assert r.status_code == 303


def test_recovery_codes_draw_on_the_totp_limit(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock, limits=Limits(totp_per_account=(1 / 30, 4)))
    kim = signup(web, "kim@example.com")
    enrol(web, kim, clock)   # one attempt
    clock.t += 600
    user = _signin_password(web)
    codes = [_recover(user, f"AAAA-BBBB-CCCC-{i:04d}").status_code for i in range(4)] + \
        [post(user.c, "/signin/code", {"code": "000000"}, page="/signin/code").status_code]
    assert codes == [401, 401, 401, 401, 429]
    assert _recover(user, kim.recovery[0]).status_code == 429   # even a right code waits
    assert _recover(user, "not a code at all").status_code == 429
    clock.t += 60
    assert _recover(user, kim.recovery[0]).status_code == 303
    assert web.guard.counters["recovery_bad_code"] == 4 and web.guard.counters["totp_rate_limited"] == 3


def test_a_new_set_needs_a_fresh_totp_code_and_replaces_the_old(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    kim = signup(web, "kim@example.com")
    enrol(web, kim, clock)
    old = kim.recovery
    r = post(kim.c, "/account/2fa/recovery", {"code": "12345"}, page="/account/2fa")
    assert r.status_code == 403
    clock.t += 30
    r = post(kim.c, "/account/2fa/recovery", {"code": kim.code(clock)}, page="/account/2fa")
    new = recovery_codes_of(r.text)
    assert r.status_code == 200 and len(new) == 10 and not set(new) & set(old)
    clock.t += 300
    assert _recover(_signin_password(web), old[0]).status_code == 401
    assert _recover(_signin_password(web), new[0]).status_code == 303


def test_operator_reset_2fa_forgets_the_recovery_codes(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    kim = signup(web, "kim@example.com")
    enrol(web, kim, clock)
    assert cli_main(["gateway", "web", "reset-2fa", "kim@example.com", "--db", str(web.config.db)]) == 0
    assert web.store().conn.execute("SELECT count(*) FROM web_recovery_codes").fetchone()[0] == 0
    c = client(web)
    r = post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == "/home"   # no second factor left: enrols again


def test_an_operator_after_a_recovery_sign_in_enrols_again_and_the_counters_survive_a_restart(tmp_path) -> None:
    from gateway.web.accounts import OPERATOR
    from gateway.web.app import Web

    t = make_trading_web(tmp_path)
    t.web.store().accounts.create("ops@utility.example", PASSWORD, OPERATOR, int(t.clock()))
    ops = User(client(t.web), "ops@utility.example")
    assert post(ops.c, "/signin", {"login": "ops@utility.example", "password": PASSWORD}).status_code == 303
    enrol(t.web, ops, t.clock)
    t.clock.t += 60
    post(client(t.web), "/signin", {"login": "ops@utility.example", "password": "a-wrong-password-1"})
    restarted = Web(t.web.config)      # a new app on the same database
    user = _signin_password(restarted, "ops@utility.example")
    assert _recover(user, ops.recovery[0]).status_code == 303
    r = user.c.get("/operator")
    assert r.status_code == 303 and r.headers["location"] == "/account/2fa?next=/operator"
    enrol(restarted, user, t.clock)
    page = user.c.get("/operator").text
    assert re.search(r"<td>signin_failed</td><td class=\"n\">1</td>", page)
    assert re.search(r"<td>recovery_code_used</td><td class=\"n\">1</td>", page)


def test_no_recovery_code_in_the_logs(tmp_path, caplog) -> None:
    import logging
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    kim = signup(web, "kim@example.com")
    enrol(web, kim, clock)
    clock.t += 60
    user = _signin_password(web)
    assert _recover(user, "WRNG-CODE-0000-1111").status_code == 401
    assert _recover(user, kim.recovery[1]).status_code == 303
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("gateway", "uvicorn")))
    assert "web security event: recovery_code_used" in text and "with a recovery code" in text
    for code in [*kim.recovery, "WRNG-CODE-0000-1111"]:
        assert code not in text and code.replace("-", "") not in text
