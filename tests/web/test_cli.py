"""`metanoia gateway web add-operator|link-household|serve` refusals and effects."""

from __future__ import annotations

import io

from gateway import db as gdb
from gateway.cli import main as cli_main
from gateway.web.accounts import Accounts
from gateway.web.config import Argon2Cost
from gateway.web.passwords import Hasher
from gateway.web.sealing import Sealer, load_or_create_secret

PASSWORD = "amber-kettle-orbit-42"


def _accounts(db):  # type: ignore[no-untyped-def]
    return Accounts(gdb.connect(db), Hasher(Argon2Cost(1, 8192, 1)),
                    Sealer(load_or_create_secret(db.with_name(db.name + ".web-secret")), b"totp"))


def test_add_operator_reads_the_password_from_stdin_never_argv(tmp_path, monkeypatch, capsys) -> None:
    db = tmp_path / "gateway.db"
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli_main(["gateway", "web", "add-operator", "Ops@Utility.example", "--db", str(db), "--password-stdin"]) == 0
    out = capsys.readouterr()
    assert "ops@utility.example" in out.out and PASSWORD not in out.out + out.err
    accounts = _accounts(db)
    acc, stored = accounts.password_hash("ops@utility.example")
    assert acc is not None and acc.is_operator and accounts.hasher.verify(stored, PASSWORD)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli_main(["gateway", "web", "add-operator", "two@utility.example", "--db", str(db), "--password-stdin"]) == 1
    assert "at least 10" in capsys.readouterr().err


def test_link_household(tmp_path, capsys) -> None:
    db = tmp_path / "gateway.db"
    accounts = _accounts(db)
    accounts.create("kim@example.com", PASSWORD, "homeowner", 0)
    accounts.create("lee@example.com", PASSWORD, "homeowner", 0)
    assert cli_main(["gateway", "web", "link-household", "kim@example.com", "101-A", "--db", str(db)]) == 0
    assert accounts.by_login("kim@example.com").household == "101-A"  # type: ignore[union-attr]
    assert cli_main(["gateway", "web", "link-household", "lee@example.com", "101-A", "--db", str(db)]) == 1
    assert "another account" in capsys.readouterr().err
    assert cli_main(["gateway", "web", "link-household", "kim@example.com", "102-B", "--db", str(db)]) == 1
    assert cli_main(["gateway", "web", "link-household", "nobody@example.com", "103-C", "--db", str(db)]) == 1


def test_serve_refuses_an_insecure_cookie_off_loopback(tmp_path, capsys) -> None:
    rc = cli_main(["gateway", "web", "serve", "--db", str(tmp_path / "g.db"), "--grid", "demo", "--listen",
                   "0.0.0.0:8080", "--public-url", "http://192.168.0.10:8080", "--insecure-cookie"])
    assert rc == 2 and "loopback" in capsys.readouterr().err


def test_serve_refuses_a_wallet_without_its_master_secret(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("METANOIA_WALLET_SECRET", raising=False)
    rc = cli_main(["gateway", "web", "serve", "--db", str(tmp_path / "g.db"), "--grid", "demo",
                   "--wallet-dir", str(tmp_path / "wallet"), "--insecure-cookie"])
    assert rc == 2 and "METANOIA_WALLET_SECRET" in capsys.readouterr().err


def test_reset_2fa_forgets_the_secret_and_ends_sessions(tmp_path, capsys) -> None:
    from tests.web.kit import Clock, enrol, make_web, signup
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    user = signup(web, "kim@example.com")
    enrol(web, user, clock)
    assert web.store().accounts.by_login("kim@example.com").totp_enabled  # type: ignore[union-attr]
    assert cli_main(["gateway", "web", "reset-2fa", "kim@example.com", "--db", str(web.config.db)]) == 0
    assert not web.store().accounts.by_login("kim@example.com").totp_enabled  # type: ignore[union-attr]
    assert user.c.get("/home").status_code == 303   # signed out everywhere
    assert cli_main(["gateway", "web", "reset-2fa", "nobody@example.com", "--db", str(web.config.db)]) == 1


def test_serve_behind_a_proxy_limits_each_client_address(tmp_path) -> None:
    """With --proxy, X-Forwarded-For of that proxy is the client: one client's sign-in burst does not lock
    out the others (without it, everyone shares the proxy's address)."""
    import re
    import subprocess
    import sys

    import httpx

    from hil.broker import free_port, wait_port
    from tests.web.browser_kit import ROOT

    def attempts(proxy: bool, db_name: str) -> tuple[list[int], list[int]]:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "gateway", "web", "serve", "--db",
                                 str(tmp_path / db_name), "--grid", "demo", "--listen", f"127.0.0.1:{port}",
                                 "--insecure-cookie", *(["--proxy", "127.0.0.1"] if proxy else [])], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port("127.0.0.1", port, timeout=60)
            base = f"http://127.0.0.1:{port}"

            def signin(client_ip: str, login: str) -> int:
                with httpx.Client(base_url=base, headers={"x-forwarded-for": client_ip}) as c:
                    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/signin").text).group(1)  # type: ignore[union-attr]
                    return c.post("/signin", data={"csrf": token, "login": login, "password": "wrong-password-1"},
                                  headers={"origin": base}).status_code
            burst = []
            while 429 not in burst and len(burst) < 80:   # until this client's address is limited
                burst.append(signin("203.0.113.7", f"guess{len(burst)}@example.com"))
            return burst, [signin("198.51.100.2", "kim@example.com") for _ in range(3)]
        finally:
            proc.terminate()
            proc.wait(10)

    burst, other = attempts(True, "a.db")
    assert burst[-1] == 429 and len(burst) > 30 and other == [401] * 3   # the other client is not locked out
    burst, other = attempts(False, "b.db")
    # without --proxy, X-Forwarded-For is ignored: one address, one bucket (a token refills every 5 s, so
    # at most one of three quick attempts can get through)
    assert burst[-1] == 429 and other.count(429) >= 2
