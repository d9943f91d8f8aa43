"""Logins, password rules, argon2id, TOTP codes that work once."""

from __future__ import annotations

import pyotp
import pytest

from gateway.web.accounts import HOMEOWNER, AccountError
from gateway.web.config import WebConfig, WebConfigError
from gateway.web.passwords import AccountInputError, check_password, normalise_login
from tests.web.kit import PASSWORD, Clock, make_web


@pytest.mark.parametrize("raw, login", [
    ("  Kim@Example.COM ", "kim@example.com"),
    ("010-1234-5678", "+821012345678"),
    ("+82 10 1234 5678", "+821012345678"),
    ("0049 30 1234567", "+49301234567"),
])
def test_logins_are_normalised(raw: str, login: str) -> None:
    assert normalise_login(raw) == login


@pytest.mark.parametrize("raw", ["", "kim@", "@x.com", "12345", "phone me", "+1234567890123456"])
def test_bad_logins_are_refused(raw: str) -> None:
    with pytest.raises(AccountInputError) as e:
        normalise_login(raw)
    assert e.value.reason == "bad_login"


@pytest.mark.parametrize("password", ["short", "password123", "aaaaaaaaaaaa", "kimkim-secret-1", "x" * 129])
def test_weak_passwords_are_refused(password: str) -> None:
    with pytest.raises(AccountInputError) as e:
        check_password(password, "kimkim@example.com")
    assert e.value.reason == "weak_password"


def test_password_is_stored_as_argon2id_and_verified(tmp_path) -> None:
    web = make_web(tmp_path)
    acc = web.store().accounts.create("kim@example.com", PASSWORD, HOMEOWNER, 0)
    account, stored = web.store().accounts.password_hash("kim@example.com")
    assert account == acc and stored is not None and stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert web.hasher.verify(stored, PASSWORD)
    assert not web.hasher.verify(stored, PASSWORD + "x")
    assert not web.hasher.verify(None, PASSWORD)  # unknown login: no, at the same cost
    with pytest.raises(AccountError) as e:
        web.store().accounts.create("kim@example.com", PASSWORD, HOMEOWNER, 0)
    assert e.value.reason == "login_taken"


def test_a_totp_code_is_accepted_once_and_only_in_its_window(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    accounts = web.store().accounts
    acc = accounts.create("kim@example.com", PASSWORD, HOMEOWNER, 0)
    secret = accounts.start_enrolment(acc)
    assert accounts.check_totp(acc, pyotp.TOTP(secret).at(clock.t), clock.t) == "not_enrolled"
    assert accounts.confirm_enrolment(acc, "000000" if pyotp.TOTP(secret).at(clock.t) != "000000" else "111111",
                                      clock.t) == "bad_code"
    totp = pyotp.TOTP(secret)
    assert accounts.confirm_enrolment(acc, totp.at(clock.t), clock.t) == "ok"
    # the confirmation used the current step: the same code again is a replay
    assert accounts.check_totp(acc, totp.at(clock.t), clock.t) == "replayed"
    assert accounts.check_totp(acc, totp.at(clock.t + 30), clock.t) == "ok"   # next step (phone clock ahead)
    assert accounts.check_totp(acc, totp.at(clock.t + 30), clock.t) == "replayed"
    assert accounts.check_totp(acc, totp.at(clock.t + 90), clock.t) == "bad_code"  # outside the window
    clock.t += 60
    assert accounts.check_totp(acc, totp.at(clock.t), clock.t) == "ok"
    assert accounts.check_totp(acc, "12345", clock.t) == "bad_code"
    assert accounts.check_totp(acc, "abcdef", clock.t) == "bad_code"


def test_totp_secret_is_sealed_at_rest(tmp_path) -> None:
    web = make_web(tmp_path)
    accounts = web.store().accounts
    acc = accounts.create("kim@example.com", PASSWORD, HOMEOWNER, 0)
    secret = accounts.start_enrolment(acc)
    (sealed,) = web.store().conn.execute("SELECT totp_pending FROM web_accounts").fetchone()
    assert secret.encode() not in bytes(sealed)
    assert (tmp_path / "gateway.db.web-secret").stat().st_mode & 0o077 == 0


def test_insecure_cookie_only_on_loopback_http(tmp_path) -> None:
    with pytest.raises(WebConfigError):
        WebConfig(db=tmp_path / "g.db", grid="demo", public_url="http://192.168.1.10:8080", cookie_secure=False)
    with pytest.raises(WebConfigError):
        WebConfig(db=tmp_path / "g.db", grid="demo", public_url="https://127.0.0.1", cookie_secure=False)
    WebConfig(db=tmp_path / "g.db", grid="demo", public_url="http://127.0.0.1:9", cookie_secure=False)
