"""The web application's settings, with defaults that work for the demo.

``cookie_secure`` may be off only when ``public_url`` is plain http on a
loopback address (tests, the demo on one machine): a session cookie without
``Secure`` on a real network would travel in clear text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class WebConfigError(ValueError):
    """A setting that would make the pages unsafe or unusable."""


@dataclass(frozen=True)
class Limits:
    """Token buckets: (per second, burst). Sign-in counts every attempt, claims and
    TOTP codes count every attempt; a burst is what a person mistyping needs."""

    signin_per_login: tuple[float, float] = (1 / 30, 10)
    signin_per_ip: tuple[float, float] = (1 / 5, 30)
    signup_per_ip: tuple[float, float] = (1 / 60, 10)
    claim_per_account: tuple[float, float] = (1 / 60, 5)
    claim_per_device: tuple[float, float] = (1 / 60, 5)
    totp_per_account: tuple[float, float] = (1 / 30, 5)


@dataclass(frozen=True)
class Argon2Cost:
    """argon2id cost (argon2-cffi's RFC 9106 low-memory profile by default)."""

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4


@dataclass(frozen=True)
class WebConfig:
    db: Path                                  # the gateway's SQLite database
    grid: str                                 # the complex's grid id
    public_url: str = "http://127.0.0.1:8080"  # what QR labels point at (no trailing slash)
    cookie_secure: bool = True
    session_idle_s: int = 30 * 60
    session_absolute_s: int = 12 * 3600
    anon_session_s: int = 3600                # a signed-out visitor's form token lives this long
    secret_file: Path | None = None           # server secret (seals TOTP secrets); default DB.web-secret
    wallet_dir: Path | None = None            # the wallet service (manual orders, policy, export)
    wallet_secret_file: Path | None = None    # its master secret (default $METANOIA_WALLET_SECRET)
    genesis: Path | None = None               # the chain's genesis (domain of manual orders)
    validators: tuple[str, ...] = ()          # JSON-RPC URLs of the bundled chain (balances, chain status)
    outbox_dbs: tuple[Path, ...] = ()         # chain client outboxes besides the gateway db (fill txs)
    tariff: str = "residential-low"           # the KEPCO table the bills use
    interval_s: int = 900
    phone_country: str = "82"                 # a phone number starting with 0 is national
    limits: Limits = field(default_factory=Limits)
    argon2: Argon2Cost = field(default_factory=Argon2Cost)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        url = urlsplit(self.public_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise WebConfigError(f"public_url {self.public_url!r} must be http(s)://HOST[:PORT]")
        if self.public_url.endswith("/"):
            object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        if not self.cookie_secure and not (url.scheme == "http" and url.hostname in LOOPBACK_HOSTS):
            raise WebConfigError("cookies without Secure are allowed only for http:// on a loopback address")
        if self.session_idle_s <= 0 or self.session_absolute_s < self.session_idle_s:
            raise WebConfigError("session_idle_s > 0 and session_absolute_s >= session_idle_s")

    @property
    def origin(self) -> str:
        """scheme://host[:port] of ``public_url``: the only Origin a form may be posted from."""
        url = urlsplit(self.public_url)
        return f"{url.scheme}://{url.netloc}".lower()

    @property
    def server_secret_path(self) -> Path:
        return self.secret_file or self.db.with_name(self.db.name + ".web-secret")
