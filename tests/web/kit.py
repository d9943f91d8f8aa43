"""Helpers for the web tests: a real app on a temporary gateway database, driven
with Starlette's TestClient (httpx), plus devices in the real registry."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient

from gateway.devices import DeviceRegistry
from gateway.web.app import Web
from gateway.web.config import Argon2Cost, Limits, WebConfig

ORIGIN = "http://127.0.0.1:8080"
PASSWORD = "amber-kettle-orbit-42"
LIGHT_ARGON2 = Argon2Cost(time_cost=1, memory_kib=8192, parallelism=1)


@dataclass
class Clock:
    """The app's clock, moved by the test (expiry, TOTP steps); starts at the wall clock, as the
    market's own code (order states) reads the wall clock."""

    t: float = field(default_factory=lambda: float(int(time.time())))

    def __call__(self) -> float:
        return self.t


def make_web(tmp: Path, *, clock: Clock | None = None, limits: Limits | None = None, **kw: Any) -> Web:
    cfg = WebConfig(db=tmp / "gateway.db", grid="demo", public_url=kw.pop("public_url", ORIGIN),
                    cookie_secure=kw.pop("cookie_secure", False), argon2=LIGHT_ARGON2,
                    limits=limits or Limits(), clock=clock or Clock(), **kw)
    return Web(cfg)


def client(web: Web) -> TestClient:
    return TestClient(web.app, base_url=web.config.public_url, follow_redirects=False)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def post(c: TestClient, path: str, data: dict[str, str], *, page: str | None = None) -> Any:
    """POST a form the way a browser does: token from the page, our Origin."""
    token = csrf_of(c.get(page or path).text)
    return c.post(path, data={"csrf": token, **data}, headers={"origin": ORIGIN})


@dataclass
class User:
    c: TestClient
    login: str
    secret: str | None = None
    steps_used: list[int] = field(default_factory=list)
    recovery: list[str] = field(default_factory=list)   # shown once at enrolment

    def code(self, clock: Clock, ahead: int = 0) -> str:
        assert self.secret
        return pyotp.TOTP(self.secret).at(clock.t + 30 * ahead)


def signup(web: Web, login: str, password: str = PASSWORD) -> User:
    c = client(web)
    r = post(c, "/signup", {"login": login, "password": password, "password2": password})
    assert r.status_code == 303, r.text
    return User(c, login)


def enrol(web: Web, user: User, clock: Clock) -> None:
    page = user.c.get("/account/2fa").text
    m = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page)
    assert m
    user.secret = m.group(1).replace(" ", "")
    r = user.c.post("/account/2fa", data={"csrf": csrf_of(page), "code": user.code(clock)},
                    headers={"origin": ORIGIN})
    assert r.status_code == 200 and 'id="recovery-codes"' in r.text, r.text
    user.recovery = recovery_codes_of(r.text)


def recovery_codes_of(html: str) -> list[str]:
    return re.findall(r"<li><code>([0-9A-Z]{4}(?:-[0-9A-Z]{4}){3})</code></li>", html)


def add_device(web: Web, name: str | None = "101-A", claim: str | None = None) -> tuple[str, str]:
    """A provisioned device in the registry: (device id hex, claim code)."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    claim = claim or secrets.token_urlsafe(12)
    device = secrets.token_hex(9)
    DeviceRegistry(web.store().conn).add({"device_id": device, "public_key_pem": pem, "grid": "demo",
                                          "name": name, "profile": "sdm630"}, claim_code=claim)
    return device, claim


def pair(user: User, device: str, claim: str) -> Any:
    page = user.c.get("/pair", params={"d": device, "c": claim})
    assert page.status_code == 200, page.text
    return user.c.post("/pair", data={"csrf": csrf_of(page.text), "d": device, "c": claim},
                       headers={"origin": ORIGIN})


def make_operator(web: Web, login: str = "ops@utility.example") -> User:
    from gateway.web.accounts import OPERATOR
    web.store().accounts.create(login, PASSWORD, OPERATOR, web.now())
    c = client(web)
    r = post(c, "/signin", {"login": login, "password": PASSWORD})
    assert r.status_code == 303
    return User(c, login)


@dataclass
class Trading:
    """A gateway with the wallet service and a chain genesis (the market's domain)."""

    web: Web
    clock: Clock
    wallet_dir: Path
    secret_file: Path


def make_trading_web(tmp: Path, clock: Clock | None = None, **kw: Any) -> Trading:
    from gateway.cli import main as cli_main
    from gateway.market.wallet import Wallet, WalletKdf

    clock = clock or Clock()
    secret_file = tmp / "wallet.secret"
    secret_file.write_text("a-master-secret-for-the-tests-only\n")
    secret_file.chmod(0o600)
    wallet_dir = tmp / "wallet"
    Wallet(wallet_dir, secret_file.read_bytes().strip(), kdf=WalletKdf.light()).close()  # light scrypt for tests
    assert cli_main(["validator", "init", "--authorities", "1", "--out", str(tmp / "chain")]) == 0
    web = make_web(tmp, clock=clock, wallet_dir=wallet_dir, wallet_secret_file=secret_file,
                   genesis=tmp / "chain" / "genesis.json", **kw)
    return Trading(web, clock, wallet_dir, secret_file)


def homeowner(t: Trading, login: str, flat: str) -> tuple[User, str]:
    """A signed-up homeowner with TOTP on and a paired meter of flat ``flat``: (user, device hex)."""
    user = signup(t.web, login)
    enrol(t.web, user, t.clock)
    device, claim = add_device(t.web, flat)
    assert pair(user, device, claim).status_code == 200
    return user, device


def add_reading(web: Web, device_hex: str, seq: int, power_w: int, t: int) -> None:
    """A stored reading as the ingest leaves it (the browser test drives the real ingest)."""
    web.store().conn.execute(
        "INSERT INTO readings (device_id, seq, time, import_wh, export_wh, pv_wh, power_w, flags, raw, received_at) "
        "VALUES (?, ?, ?, 0, 0, 0, ?, 0, x'00', ?)", (bytes.fromhex(device_hex), seq, t, power_w, t * 1000))
