"""The operator view of the complex: only accounts with the operator role, signed in with TOTP.

Figures from ``gateway.web.readmodel.operator_view``; the page adds the web
application's own security counters (sign-in failures, CSRF, rate limits), kept in the
gateway's database (``throttle.py``), so they count across restarts.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.web.app import Redirect, web_of
from gateway.web.readmodel import balance_chart, operator_view
from gateway.web.routes_household import hhmm, kst


async def operator(request: Request) -> Response:
    web = web_of(request)
    v, account = web.signed_in(request, operator=True)
    if not account.totp_enabled or account.totp_reenrol:   # after a recovery sign-in: enrol again first
        raise Redirect("/account/2fa?next=/operator")
    view = await operator_view(web.complex(), web.config.clock())
    return web.render(request, v, "operator.html", view=view,
                      chart=balance_chart(view, interval_s=web.config.interval_s),
                      security=sorted(web.guard.counters.items()), hhmm=hhmm, kst=kst)


ROUTES = [Route("/operator", operator)]
