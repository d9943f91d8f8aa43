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
