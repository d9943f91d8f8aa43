"""The web application: one ``Web`` object (settings, stores, guard) and the Starlette app.

Each route module (``routes_*.py``) exposes ``ROUTES``; they share the helpers
here: ``visit`` (who is asking), ``form`` (Origin + CSRF checked), ``render``
(a page, with a form token for signed-out visitors too) and ``redirect``.
SQLite connections are per thread (routes are async and run on the event
loop's thread; a test client may use another one).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway import db as gdb
from gateway.devices import DeviceRegistry
from gateway.web.accounts import Account, Accounts
from gateway.web.config import WebConfig
from gateway.web.formatting import FILTERS
from gateway.web.guard import Guard, Refused, SecurityHeaders
from gateway.web.passwords import Hasher
from gateway.web.readmodel import Complex, Sources
from gateway.web.sealing import Sealer, load_or_create_secret
from gateway.web.sessions import ANON, FULL, Session, Sessions
from gateway.web.throttle import ensure_throttle_schema

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_BODY = 64 * 1024
PURGE_EVERY_S = 600


class Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


@dataclass
class Store:
    """One thread's connection and the tables over it."""

    conn: sqlite3.Connection
    accounts: Accounts
    sessions: Sessions
    devices: DeviceRegistry


@dataclass(frozen=True)
class Visit:
    session: Session | None
    account: Account | None   # set only for a signed-in (``full``) session


def safe_next(value: object, default: str = "/") -> str:
    """A local path to return to after signing in (never another site)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//") and "\\" not in value \
            and len(value) <= 400 and value.isprintable():
        return value
    return default


class Web:
    """Everything the routes share; ``Web(config).app`` is the ASGI application."""

    def __init__(self, config: WebConfig, complex: Complex | None = None) -> None:
        """``complex``: an already open read-model handle (the demo's market holds the wallet open)."""
        self.config = config
        secret = load_or_create_secret(config.server_secret_path)
        self.hasher = Hasher(config.argon2)
        self.sealer = Sealer(secret, b"totp")
        self.guard = Guard(config.limits, config.origin, conn=lambda: self.store().conn, clock=config.clock)
        self.templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                                                 autoescape=True))
        self.templates.env.globals["grid"] = config.grid
        self.templates.env.filters.update(FILTERS)
        self._local = threading.local()
        self._cx: Complex | None = complex
        self._purged_at = 0
        self._cx_lock = threading.Lock()
        self.cookie_name = "__Host-mn_session" if config.cookie_secure else "mn_session"
        self.store()  # tables exist before the first request
        from gateway.web import (routes_account, routes_actions, routes_household, routes_operator, routes_pair,
                                 routes_password, routes_withdraw)
        routes = [*routes_account.ROUTES, *routes_pair.ROUTES, *routes_household.ROUTES, *routes_actions.ROUTES,
                  *routes_withdraw.ROUTES, *routes_password.ROUTES,
                  *routes_operator.ROUTES,
                  Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")]
        self.app = Starlette(
            routes=routes, max_body_size=MAX_BODY,
            middleware=[Middleware(SecurityHeaders, https=config.public_url.startswith("https:"))],
            exception_handlers={Refused: self._refused, Redirect: self._redirect})
        self.app.state.web = self

    # ---- stores ---------------------------------------------------------------------------

    def store(self) -> Store:
        s: Store | None = getattr(self._local, "store", None)
        if s is None:
            conn = gdb.connect(self.config.db)
            gdb.ensure_schema(conn, "readings", gdb.READINGS_SCHEMA)
            ensure_throttle_schema(conn)
            s = Store(conn, Accounts(conn, self.hasher, self.sealer),
                      Sessions(conn, idle_s=self.config.session_idle_s, absolute_s=self.config.session_absolute_s,
                               anon_s=self.config.anon_session_s),
                      DeviceRegistry(conn, clock=self.config.clock))
            self._local.store = s
        return s

    def complex(self) -> Complex:
        """The read model's handle on the complex (the wallet opened once, with the master secret)."""
        with self._cx_lock:
            if self._cx is None:
                c = self.config
                sources = Sources(grid=c.grid, gateway_db=c.db, wallet_dir=c.wallet_dir, outbox_dbs=c.outbox_dbs,
                                  validators=c.validators, genesis=c.genesis, tariff=c.tariff, interval_s=c.interval_s)
                secret = None
                if c.wallet_dir is not None:
                    from gateway.market.wallet import load_master_secret
                    secret = load_master_secret(file=c.wallet_secret_file)
                self._cx = Complex.open(sources, secret, clock=c.clock)
        return self._cx

    def wallet(self) -> Any:
        """The wallet service (``gateway.market.wallet.Wallet``), or None when not configured."""
        return self.complex().wallet

    def now(self) -> int:
        return int(self.config.clock())

    # ---- requests ---------------------------------------------------------------------------

    def visit(self, request: Request) -> Visit:
        store = self.store()
        now = self.now()
        if now - self._purged_at >= PURGE_EVERY_S:  # expired sessions nobody presents again
            self._purged_at = now
            store.sessions.purge(now)
            self.guard.purge()
        session = store.sessions.get(request.cookies.get(self.cookie_name), now)
        account = None
        if session is not None and session.stage == FULL and session.account_id is not None:
            account = store.accounts.get(session.account_id)
        return Visit(session, account)

    def signed_in(self, request: Request, *, operator: bool = False) -> tuple[Visit, Account]:
        """The signed-in account, or a redirect to sign in (and back); 403 for the wrong role."""
        v = self.visit(request)
        if v.account is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise Redirect("/signin?next=" + quote(target, safe=""))
        if v.account.is_operator != operator:
            self.guard.count("wrong_role")
            raise Refused(403, "wrong_role", "This page is not for your account.")
        return v, v.account

    def signed_in_any(self, request: Request) -> tuple[Visit, Account]:
        """The signed-in account of either role, or a redirect to sign in."""
        v = self.visit(request)
        if v.account is None:
            raise Redirect("/signin")
        return v, v.account

    async def form(self, request: Request, v: Visit) -> FormData:
        """The posted form, once its Origin and CSRF token are checked."""
        self.guard.check_origin(request.headers)
        form = await request.form(max_files=0, max_fields=40, max_part_size=16 * 1024)
        self.guard.check_csrf(v.session.csrf if v.session else None, form.get("csrf"))
        return form

    def render(self, request: Request, v: Visit, template: str, status: int = 200, **ctx: Any) -> Response:
        session = v.session
        new = session is None
        if session is None:
            session = self.store().sessions.create(self.now(), stage=ANON)
        ctx.setdefault("account", v.account)
        resp = self.templates.TemplateResponse(request, template, {"csrf": session.csrf, **ctx},
                                               status_code=status)
        if new:
            self.set_cookie(resp, session)
        return resp

    def set_cookie(self, resp: Response, session: Session) -> None:
        resp.set_cookie(self.cookie_name, session.token, httponly=True, secure=self.config.cookie_secure,
                        samesite="lax", path="/")

    def redirect(self, url: str, session: Session | None = None) -> Response:
        resp = RedirectResponse(url, status_code=303)
        if session is not None:
            self.set_cookie(resp, session)
        return resp

    async def hash_password(self, password: str) -> str:
        return await run_in_threadpool(self.hasher.hash, password)

    async def verify_password(self, stored: str | None, password: str) -> bool:
        return await run_in_threadpool(self.hasher.verify, stored, password)

    # ---- errors ---------------------------------------------------------------------------

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        v = self.visit(request)
        resp = self.render(request, v, "error.html", status=exc.status, message=str(exc), reason=exc.reason)
        if exc.retry_after is not None:
            resp.headers["retry-after"] = str(int(exc.retry_after) + 1)
        return resp

    async def _redirect(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Redirect)
        return self.redirect(exc.url)


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def build_app(config: WebConfig) -> Starlette:
    return Web(config).app
