"""Changing one's password (on the Security page).

It takes the current password (counted against the same per-login bucket as
sign-in, so it is no way around that limit) and, once two-factor
authentication is on, a fresh TOTP code. A new password ends every other
session of the account: whoever knew the old one is signed out everywhere.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.web.app import Refused, web_of
from gateway.web.passwords import AccountInputError, check_password
from gateway.web.routes_account import CODE_ERRORS, check_code
from gateway.web.sessions import FULL

log = logging.getLogger(__name__)


async def change_password(request: Request) -> Response:
    web = web_of(request)
    v, account = web.signed_in_any(request)
    form = await web.form(request, v)
    store = web.store()
    web.guard.limit("signin_per_login", account.login, "signin")
    _acc, stored = store.accounts.password_hash(account.login)
    if not await web.verify_password(stored, str(form.get("current", ""))):
        web.guard.count("password_change_wrong_password")
        raise Refused(403, "wrong_password", "Your current password is not right.")
    new = str(form.get("new", ""))
    try:
        check_password(new, account.login)
        if new != str(form.get("new2", "")):
            raise AccountInputError("password_mismatch", "The two new passwords differ.")
    except AccountInputError as exc:
        web.guard.count(f"password_change_{exc.reason}")
        raise Refused(400, exc.reason, str(exc)) from None
    if account.totp_enabled and (result := check_code(web, account, form.get("code"))) != "ok":
        raise Refused(403, f"totp_{result}", CODE_ERRORS[result])
    store.accounts.set_password_hash(account.id, await web.hash_password(new))
    store.sessions.delete_account(account.id)
    session = store.sessions.create(web.now(), account_id=account.id, stage=FULL)
    log.info("web account id=%s changed its password; other sessions ended", account.id)
    return web.redirect("/account/2fa?done=password", session)


ROUTES = [Route("/account/password", change_password, methods=["POST"])]
