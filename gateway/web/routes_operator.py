"""The operator view of the complex: only accounts with the operator role, signed in with TOTP."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.web.app import Redirect, web_of


async def operator(request: Request) -> Response:
    web = web_of(request)
    v, account = web.signed_in(request, operator=True)
    if not account.totp_enabled:
        raise Redirect("/account/2fa?next=/operator")
    devices = web.store().devices.list(web.config.grid)
    return web.render(request, v, "operator.html", devices=devices,
                      security=sorted(web.guard.counters.items()))


ROUTES = [Route("/operator", operator)]
