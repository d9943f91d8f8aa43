"""Sign up, sign in (password, then the TOTP code once enrolled, or a recovery code), sign out,
TOTP enrolment and recovery codes.

Sign-in failures say only "wrong login or password" and cost the same time
whether or not the login exists. Every change of who is signed in rotates the
session. The enrolment page shows the pending secret as a QR code (inline
SVG) and as text; the secret becomes active when a code from it is confirmed,
and the answer to that confirmation shows ten recovery codes, once (never
stored in clear, never sent again). A recovery code signs in (it draws on the
TOTP bucket) but spends nothing: the account must enrol TOTP again first
(``recovery.py``). A signed-in account makes a new set with a fresh TOTP code.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import pyotp
import segno
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.web.accounts import HOMEOWNER, Account, AccountError
from gateway.web.app import Refused, Web, safe_next, web_of
from gateway.web.passwords import AccountInputError, check_password, normalise_login
from gateway.web.sessions import FULL, MFA

log = logging.getLogger(__name__)


def home_of(account: object) -> str:
    return "/operator" if getattr(account, "is_operator", False) else "/home"


async def index(request: Request) -> Response:
    web = web_of(request)
    v = web.visit(request)
    return web.redirect(home_of(v.account) if v.account else "/signin")


async def signup(request: Request) -> Response:
    web = web_of(request)
    v = web.visit(request)
    nxt = safe_next(request.query_params.get("next"), "")
    if request.method == "GET":
        return web.render(request, v, "signup.html", next=nxt, login="")
    form = await web.form(request, v)
    nxt = safe_next(form.get("next"), "")
    raw_login, password = str(form.get("login", "")), str(form.get("password", ""))
    web.guard.limit("signup_per_ip", _ip(request), "signup")
    try:
        login = normalise_login(raw_login, web.config.phone_country)
        check_password(password, login)
        if password != str(form.get("password2", "")):
            raise AccountInputError("password_mismatch", "The two passwords differ.")
        store = web.store()
        if store.accounts.by_login(login) is not None:
            raise AccountError("login_taken", "An account with this email or phone number exists. Sign in instead.")
        account = store.accounts.create(login, password, HOMEOWNER, web.now(), await web.hash_password(password))
    except (AccountInputError, AccountError) as exc:
        web.guard.count(f"signup_{exc.reason}")
        return web.render(request, v, "signup.html", status=400, error=str(exc), next=nxt, login=raw_login[:254])
    session = web.store().sessions.rotate(v.session, web.now(), account_id=account.id, stage=FULL)
    return web.redirect("/account/2fa" + (f"?next={quote(nxt, safe='')}" if nxt else ""), session)


async def signin(request: Request) -> Response:
    web = web_of(request)
    v = web.visit(request)
    nxt = safe_next(request.query_params.get("next"), "")
    if request.method == "GET":
        if v.account is not None:
            return web.redirect(nxt or home_of(v.account))
        return web.render(request, v, "signin.html", next=nxt, login="")
    form = await web.form(request, v)
    nxt = safe_next(form.get("next"), "")
    raw_login, password = str(form.get("login", "")), str(form.get("password", ""))
    web.guard.limit("signin_per_ip", _ip(request), "signin")
    try:
        login = normalise_login(raw_login, web.config.phone_country)
    except AccountInputError:
        login = raw_login.strip().lower()[:254]
    web.guard.limit("signin_per_login", login, "signin")
    store = web.store()
    account, stored = store.accounts.password_hash(login)
    if not await web.verify_password(stored, password) or account is None:
        web.guard.count("signin_failed")
        return web.render(request, v, "signin.html", status=401, error="Wrong login or password.", next=nxt,
                          login=raw_login[:254])
    assert stored is not None
    if web.hasher.needs_rehash(stored):
        store.accounts.set_password_hash(account.id, await web.hash_password(password))
    stage = MFA if account.totp_enabled else FULL
    session = store.sessions.rotate(v.session, web.now(), account_id=account.id, stage=stage)
    log.info("web sign-in account=%s stage=%s", account.id, stage)
    if stage == MFA:
        return web.redirect("/signin/code" + (f"?next={quote(nxt, safe='')}" if nxt else ""), session)
    return web.redirect(nxt or home_of(account), session)


async def signin_code(request: Request) -> Response:
    web = web_of(request)
    v = web.visit(request)
    store = web.store()
    form = await web.form(request, v) if request.method == "POST" else None
    if v.session is None or v.session.stage != MFA or v.session.account_id is None:
        return web.redirect("/signin")
    account = store.accounts.get(v.session.account_id)
    assert account is not None
    if form is None:
        return web.render(request, v, "signin_code.html", next=safe_next(request.query_params.get("next"), ""))
    nxt = safe_next(form.get("next"), "")
    if str(form.get("recovery") or "").strip():
        result = _use_recovery(web, account, str(form.get("recovery")))
        if result != "ok":
            return web.render(request, v, "signin_code.html", status=401, error=RECOVERY_ERRORS[result], next=nxt,
                              recovery_open=True)
        session = store.sessions.rotate(v.session, web.now(), account_id=account.id, stage=FULL)
        log.warning("web sign-in account=%s with a recovery code; TOTP must be enrolled again", account.id)
        return web.redirect("/account/2fa?recovered=1" + (f"&next={quote(nxt, safe='')}" if nxt else ""), session)
    result = check_code(web, account, form.get("code"), signing_in=True)
    if result != "ok":
        return web.render(request, v, "signin_code.html", status=401, error=CODE_ERRORS[result], next=nxt)
    session = store.sessions.rotate(v.session, web.now(), account_id=account.id, stage=FULL)
    return web.redirect(nxt or home_of(account), session)


RECOVERY_ERRORS = {
    "bad_code": "That recovery code is not right. Type it as printed (the hyphens may be left out).",
    "used": "That recovery code was already used. Each code works once; use another one.",
}


def _use_recovery(web: Web, account: Account, typed: str) -> str:
    """A recovery code in place of a TOTP code at sign-in: the same bucket, counted."""
    web.guard.limit("totp_per_account", str(account.id), "totp")
    result = web.store().accounts.recovery.use(account.id, typed[:64], web.now())
    web.guard.count("recovery_code_used" if result == "ok" else f"recovery_{result}")
    return result


CODE_ERRORS = {
    "missing": "Type the 6-digit code from your authenticator app.",
    "bad_code": "That code is not right. Check your phone's clock and try the current code.",
    "replayed": "That code was already used. Wait for the next code (every 30 seconds).",
    "not_enrolled": "Turn on two-factor authentication first.",
    "reenrol": "You signed in with a recovery code: set up your authenticator app again (Security page) first.",
}


def check_code(web: Web, account: Account, code: object, *, signing_in: bool = False) -> str:
    """Check a TOTP code (rate-limited per account, counted): ``ok`` or the reason. No code at all
    is not a guess: it costs no attempt. Except for signing in, nothing takes a code from an account
    that signed in with a recovery code and has not enrolled TOTP again (``reenrol``)."""
    if account.totp_reenrol and not signing_in:
        web.guard.count("totp_reenrol_required")
        return "reenrol"
    if not str(code or "").strip():
        return "missing"
    web.guard.limit("totp_per_account", str(account.id), "totp")
    result = web.store().accounts.check_totp(account, str(code or ""), web.config.clock())
    if result != "ok":
        web.guard.count(f"totp_{result}")
    return result


def require_code(web: Web, account: Account, code: object) -> None:
    """Refuse (403) unless ``code`` is a fresh TOTP code of ``account``: spending, export, withdrawal."""
    result = check_code(web, account, code)
    if result != "ok":
        raise Refused(403, f"totp_{result}", CODE_ERRORS[result])


async def signout(request: Request) -> Response:
    web = web_of(request)
    v = web.visit(request)
    await web.form(request, v)
    if v.session is not None:
        web.store().sessions.delete(v.session.token)
    resp = web.redirect("/signin")
    resp.delete_cookie(web.cookie_name, path="/", secure=web.config.cookie_secure, httponly=True, samesite="lax")
    return resp


async def two_factor(request: Request) -> Response:
    web = web_of(request)
    v = web.visit(request)
    if v.account is None:
        return web.redirect("/signin?next=" + quote("/account/2fa", safe=""))
    account = v.account
    store = web.store()
    nxt = safe_next(request.query_params.get("next"), "")
    error = None
    status = 200
    enabled = account.totp_enabled and not account.totp_reenrol
    if request.method == "POST":
        form = await web.form(request, v)
        nxt = safe_next(form.get("next"), "")
        if enabled:
            return web.redirect(nxt or home_of(account))
        web.guard.limit("totp_per_account", str(account.id), "totp")
        result = store.accounts.confirm_enrolment(account, str(form.get("code", "")), web.config.clock())
        if result == "ok":
            return _show_recovery_codes(web, request, store.accounts.recovery.issue(account.id), nxt)
        web.guard.count(f"totp_enrol_{result}")
        error, status = "That code is not right. Type the 6 digits your app shows now.", 400
    if enabled:
        done = "Your password is changed; other sessions are signed out." \
            if request.query_params.get("done") == "password" else None
        return web.render(request, v, "two_factor.html", enabled=True, next=nxt, done=done,
                          recovery_left=store.accounts.recovery.remaining(account.id))
    secret = store.accounts.pending_secret(account) or store.accounts.start_enrolment(account)
    uri = pyotp.TOTP(secret).provisioning_uri(name=account.login, issuer_name=f"Metanoia {web.config.grid}")
    qr = segno.make(uri, error="m").svg_inline(scale=4, dark="#111", light="#fff", omitsize=True)
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return web.render(request, v, "two_factor.html", status=status, enabled=False, qr=qr, secret=grouped,
                      next=nxt, error=error, reenrol=account.totp_reenrol)


def _show_recovery_codes(web: Web, request: Request, codes: list[str], nxt: str) -> Response:
    """The one time the codes are shown: in the answer to the POST that made them (no-store, like
    every page), never in a URL or a later page."""
    v = web.visit(request)
    assert v.account is not None
    return web.render(request, v, "recovery_codes.html", codes=codes, next=nxt or home_of(v.account))


async def new_recovery_codes(request: Request) -> Response:
    """A new set of recovery codes (the old set stops working), for a fresh TOTP code."""
    web = web_of(request)
    v, account = web.signed_in_any(request)
    form = await web.form(request, v)
    result = check_code(web, account, form.get("code"))
    if result != "ok":
        raise Refused(403, f"totp_{result}", CODE_ERRORS[result])
    log.info("web account id=%s made a new set of recovery codes", account.id)
    return _show_recovery_codes(web, request, web.store().accounts.recovery.issue(account.id), "")


def _ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


ROUTES = [
    Route("/", index),
    Route("/signup", signup, methods=["GET", "POST"]),
    Route("/signin", signin, methods=["GET", "POST"]),
    Route("/signin/code", signin_code, methods=["GET", "POST"]),
    Route("/signout", signout, methods=["POST"]),
    Route("/account/2fa", two_factor, methods=["GET", "POST"]),
    Route("/account/2fa/recovery", new_recovery_codes, methods=["POST"]),
]

