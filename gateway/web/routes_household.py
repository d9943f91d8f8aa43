"""The household page (a homeowner sees only their own household) and its live power.

What the page shows comes from ``gateway.web.readmodel`` (pure functions over
the gateway's databases); this module only checks who is asking and renders.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.web.app import web_of

log = logging.getLogger(__name__)

LIVE_EVERY_S = 5


def _live(conn, household: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The household's latest grid power (sum over its meters' last readings)."""
    rows = conn.execute(
        "SELECT r.power_w, r.time FROM devices d JOIN readings r ON r.device_id = d.device_id "
        "AND r.seq = (SELECT MAX(seq) FROM readings WHERE device_id = d.device_id) "
        "WHERE d.household = ? AND d.status = 'active'", (household,)).fetchall()
    if not rows:
        return {"power": "no reading yet", "power_at": ""}
    watts = sum(int(r[0]) for r in rows)
    return {"power": f"{watts:+,} W", "power_at": str(max(int(r[1]) for r in rows))}


async def home(request: Request) -> Response:
    web = web_of(request)
    v, account = web.signed_in(request)
    store = web.store()
    if account.household is None:
        return web.render(request, v, "home_unpaired.html")
    devices = [d for d in store.devices.list() if d.household == account.household]
    return web.render(request, v, "home.html", household=account.household, devices=devices,
                      live=_live(store.conn, account.household), live_every=LIVE_EVERY_S)


async def live(request: Request) -> Response:
    web = web_of(request)
    _v, account = web.signed_in(request)
    if account.household is None:
        return JSONResponse({"power": "no meter paired", "power_at": ""})
    return JSONResponse(_live(web.store().conn, account.household))


ROUTES = [Route("/home", home), Route("/home/live.json", live)]
