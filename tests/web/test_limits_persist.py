"""Brute-force limits and security counters survive a restart of the web server: a new app
object on the same database, and the real `metanoia gateway web serve` killed with SIGKILL."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx

from gateway.web.config import Limits
from tests.web.kit import PASSWORD, Clock, add_device, client, enrol, make_web, post, signup


def test_signin_limits_survive_a_new_app_on_the_same_database(tmp_path) -> None:
    clock = Clock()
    limits = Limits(signin_per_login=(1 / 30, 3), signin_per_ip=(1 / 5, 30))
    web = make_web(tmp_path, clock=clock, limits=limits)
    signup(web, "kim@example.com")
    c = client(web)
    codes = [post(c, "/signin", {"login": "kim@example.com", "password": f"wrong-{i}-password"}).status_code
             for i in range(4)]
    assert codes == [401, 401, 401, 429]
    restarted = make_web(tmp_path, clock=clock, limits=limits)
    c = client(restarted)
    r = post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD})
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 31
    # the counters the operator page shows carry over too
    assert restarted.guard.counters["signin_failed"] == 3 and restarted.guard.counters["signin_rate_limited"] == 2
    clock.t += 30   # one token back
    assert post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD}).status_code == 303


def test_totp_and_claim_limits_survive_a_new_app(tmp_path) -> None:
    clock = Clock()
    limits = Limits(totp_per_account=(1 / 30, 3), claim_per_account=(1 / 60, 5), claim_per_device=(1 / 60, 3))
    web = make_web(tmp_path, clock=clock, limits=limits)
    device, claim = add_device(web)
    kim = signup(web, "kim@example.com")
    enrol(web, kim, clock)   # one TOTP attempt
    c = client(web)
    clock.t += 600
    codes = [kim.c.get(f"/pair?d={device}&c=guess-{i:04d}").status_code for i in range(4)]
    assert codes == [403, 403, 403, 429]   # the device's bucket (3)
    post(c, "/signin", {"login": "kim@example.com", "password": PASSWORD})
    wrong = "000000" if kim.code(clock) != "000000" else "111111"
    assert [post(c, "/signin/code", {"code": wrong}, page="/signin/code").status_code for _ in range(4)] \
        == [401, 401, 401, 429]
    clock.t += 1   # the same 30 s step: no token back yet
    restarted = make_web(tmp_path, clock=clock, limits=limits)
    # the session is in the database too: the same browser continues on the new app
    c2 = client(restarted)
    c2.cookies.update(c.cookies)
    r = post(c2, "/signin/code", {"code": kim.code(clock)}, page="/signin/code")
    assert r.status_code == 429
    lee = signup(restarted, "lee@example.com")
    assert lee.c.get(f"/pair?d={device}&c={claim}").status_code == 429   # the device's bucket still empty
    clock.t += 60
    assert post(c2, "/signin/code", {"code": kim.code(clock)}, page="/signin/code").status_code == 303
    assert lee.c.get(f"/pair?d={device}&c={claim}").status_code == 200
    assert restarted.guard.counters["claim_failed"] == 3 and restarted.guard.counters["totp_rate_limited"] == 2


def test_buckets_full_again_are_purged_and_keys_are_not_stored_in_clear(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock, limits=Limits(signin_per_login=(1 / 30, 3)))
    c = client(web)
    post(c, "/signin", {"login": "typed-a-password-here", "password": "wrong-password-1"})
    conn = web.store().conn
    rows = conn.execute("SELECT bucket, key_hash FROM web_limits").fetchall()
    assert {b for b, _ in rows} == {"signin_per_ip", "signin_per_login"}
    assert all(b"typed-a-password" not in bytes(k) and len(bytes(k)) == 32 for _, k in rows)
    assert web.guard.purge() == 0          # both buckets are one token short
    clock.t += 29
    assert web.guard.purge() == 1          # the address bucket (1 per 5 s) is full again, the login's is not
    clock.t += 1
    assert web.guard.purge() == 1
    assert conn.execute("SELECT count(*) FROM web_limits").fetchone()[0] == 0


def _serve(db, port: int) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    from tests.web.browser_kit import ROOT
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "gateway", "web", "serve", "--db", str(db),
                             "--grid", "demo", "--listen", f"127.0.0.1:{port}", "--insecure-cookie"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_signin_limit_survives_sigkill_of_the_real_server(tmp_path) -> None:
    """The default per-login limit (10, then one per 30 s) holds across kill -9 and a restart:
    the restarted server still refuses the right password."""
    from hil.broker import free_port, wait_port

    db = tmp_path / "gateway.db"
    web = make_web(tmp_path)
    signup(web, "kim@example.com")
    web.store().conn.close()

    def signin(base: str, password: str) -> httpx.Response:
        with httpx.Client(base_url=base) as c:
            token = re.search(r'name="csrf" value="([^"]+)"', c.get("/signin").text).group(1)  # type: ignore[union-attr]
            return c.post("/signin", data={"csrf": token, "login": "kim@example.com", "password": password},
                          headers={"origin": base})

    port = free_port()
    proc = _serve(db, port)
    try:
        wait_port("127.0.0.1", port, timeout=60)
        base = f"http://127.0.0.1:{port}"
        codes = [signin(base, f"wrong-{i}-password").status_code for i in range(11)]
        assert codes == [401] * 10 + [429]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    port = free_port()
    proc = _serve(db, port)
    try:
        wait_port("127.0.0.1", port, timeout=60)
        r = signin(f"http://127.0.0.1:{port}", PASSWORD)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 31
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
