"""The household page (a homeowner sees only their own household) and its live power.

What the page shows comes from ``gateway.web.readmodel.household_view`` (pure
reads over the gateway's databases, for the signed-in account's household
only: the household id comes from the account, never from the request).
``render_home`` is shared with the actions (``routes_actions.py``), which show
their refusals on the same page.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.market.bill import KST
from gateway.web.accounts import Account
from gateway.web.app import Visit, Web, web_of
from gateway.web.readmodel import ReadModelError, household_chart, household_view
from gateway.web.readmodel.household import live_power, paired_devices

log = logging.getLogger(__name__)

LIVE_EVERY_S = 5
ORDER_INTERVALS = 8   # the order form offers the next this many delivery intervals

# what a successful action says (a fixed text per code: nothing from the request is reflected)
DONE = {"order": "Order placed.", "cancel": "Order withdrawn.", "policy": "Trading policy saved.",
        "withdraw": "Withdrawal sent to the chain."}


def hhmm(t: int | None) -> str:
    return "" if not t else datetime.fromtimestamp(t, KST).strftime("%H:%M")


def md_hhmm(t: int | None) -> str:
    return "" if not t else datetime.fromtimestamp(t, KST).strftime("%m-%d %H:%M")


def kst(t: int | None) -> str:
    return "" if not t else datetime.fromtimestamp(t, KST).strftime("%Y-%m-%d %H:%M")


def next_intervals(now: float, interval_s: int, n: int = ORDER_INTERVALS) -> list[int]:
    first = int(now) // interval_s * interval_s + interval_s
    return [first + k * interval_s for k in range(n)]


def _power(watts: int | None) -> str:
    return "no reading yet" if watts is None else f"{watts:+,} W"


async def render_home(web: Web, request: Request, v: Visit, account: Account, *, status: int = 200,
                      error: str | None = None, form: dict[str, Any] | None = None) -> Response:
    if account.household is None:
        return web.render(request, v, "home_unpaired.html", status=status, error=error)
    cx = web.complex()
    now = web.config.clock()
    try:
        view = await household_view(cx, account.household, now)
    except ReadModelError as exc:
        if exc.reason != "unknown_household":
            raise
        return web.render(request, v, "home_unpaired.html", status=status, error=error)
    devices = [d for d in web.store().devices.list(web.config.grid) if d.household == account.household]
    ok = DONE.get(request.query_params.get("done", "")) if error is None else None
    return web.render(request, v, "home.html", status=status, view=view, devices=devices, error=error, ok=ok,
                      chart=household_chart(view, interval_s=web.config.interval_s), power=_power(view.live.power_w),
                      live_every=LIVE_EVERY_S, intervals=next_intervals(now, web.config.interval_s),
                      hhmm=hhmm, md_hhmm=md_hhmm, kst=kst, form=form or {}, wallet=cx.wallet is not None,
                      market=cx.domain is not None, chain=bool(web.config.validators))


async def home(request: Request) -> Response:
    web = web_of(request)
    v, account = web.signed_in(request)
    return await render_home(web, request, v, account)


async def live(request: Request) -> Response:
    """The figures live.js refreshes: the household's grid power and when it was read."""
    web = web_of(request)
    _v, account = web.signed_in(request)
    if account.household is None:
        return JSONResponse({"power": "no meter paired", "power_at": ""})
    with web.complex().db() as conn:
        lp = live_power(conn, paired_devices(conn, web.config.grid, account.household), web.config.clock())
    return JSONResponse({"power": _power(lp.power_w), "power_at": hhmm(lp.reading_time) if lp.reading_time else ""})


ROUTES = [Route("/home", home), Route("/home/live.json", live)]
