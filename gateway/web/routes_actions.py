"""What a homeowner changes from the household page: manual orders, the trading
policy, key export (and withdrawal, when a chain is configured).

Every action acts on the signed-in account's own household (the id never comes
from the form) through the read model's actions and the wallet service. A
fresh TOTP code (single use) is required to place an order, to change the
policy in a way that lets the agents spend more or sell cheaper, and to export
the key; making the policy stricter or withdrawing an order needs none, so a
homeowner can always stop their agents quickly.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal, InvalidOperation

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.chain_client import OutboxChainClient
from gateway.market.wallet_policy import WalletError
from gateway.web.app import Refused, Visit, Web, web_of
from gateway.web.readmodel import KEEP, PolicyView, ReadModelError, cancel_manual_order, chain_client, \
    place_manual_order, set_policy
from gateway.web.readmodel.household import policy_view
from gateway.web.routes_account import check_code, CODE_ERRORS
from gateway.web.routes_household import render_home

log = logging.getLogger(__name__)

MIN_EXPORT_PASSPHRASE = 12
POLICY_FIELDS = ("sell_floor", "buy_cap", "reserve_wh", "interval_wh", "daily_noia")

# readable texts for the read model's and the wallet's reasons (anything else shows its code)
REASONS = {
    "interval_past": "That delivery interval has already started.",
    "interval_too_far": "Orders are taken up to two days ahead.",
    "bad_wh": "Give the energy as a whole number of Wh (1 to 100,000).",
    "bad_price": "Give the price in won per kWh (at most 2 decimals).",
    "bad_floor": "The sell floor is a price in won per kWh.",
    "bad_cap": "The buy cap is a price in won per kWh.",
    "bad_reserve": "The reserve is a whole number of Wh.",
    "bad_interval_wh": "The limit per interval is a whole number of Wh.",
    "bad_daily_noia": "The daily limit is a whole number of NOIA.",
    "wallet_closed": "Trading is not set up on this gateway yet.",
    "market_closed": "The market is not open on this gateway yet.",
    "weak_passphrase": f"Use an export passphrase of at least {MIN_EXPORT_PASSPHRASE} characters.",
}


def refusal(web: Web, exc: ReadModelError | WalletError) -> str:
    web.guard.count(f"action_{exc.reason}")
    return REASONS.get(exc.reason, f"Refused: {exc.reason}.")


async def begin(request: Request) -> tuple[Web, Visit, dict[str, str]]:
    web = web_of(request)
    v, account = web.signed_in(request)
    form = await web.form(request, v)
    if account.household is None:
        raise Refused(409, "no_household", "Pair your meter first.")
    return web, v, {k: str(val) for k, val in form.items() if isinstance(val, str)}


async def code_or_page(web: Web, request: Request, v: Visit, code: str | None, form: dict[str, str]) -> Response | None:
    """None if ``code`` is a fresh TOTP code of the account, else the page with the reason."""
    assert v.account is not None
    if not v.account.totp_enabled:
        return await render_home(web, request, v, v.account, status=403, form=form,
                                 error="Turn on two-factor authentication (Security) before trading.")
    result = check_code(web, v.account, code)
    if result == "ok":
        return None
    return await render_home(web, request, v, v.account, status=403, error=CODE_ERRORS[result], form=form)


async def order(request: Request) -> Response:
    web, v, form = await begin(request)
    assert v.account is not None and v.account.household is not None
    if (page := await code_or_page(web, request, v, form.get("code"), form)) is not None:
        return page
    try:
        row = place_manual_order(web.complex(), v.account.household, form.get("side"), form.get("interval"),
                                 form.get("wh"), form.get("price"), now=web.config.clock())
    except (ReadModelError, WalletError) as exc:
        return await render_home(web, request, v, v.account, status=400, error=refusal(web, exc), form=form)
    log.info("web: household %s placed manual order %s (%s)", v.account.household, row.id, row.side)
    return web.redirect("/home?done=order#orders")


async def cancel(request: Request) -> Response:
    web, v, form = await begin(request)
    assert v.account is not None and v.account.household is not None
    cx = web.complex()
    client: OutboxChainClient | None = None
    try:
        if web.config.validators and web.config.genesis is not None:
            made = chain_client(cx)
            assert isinstance(made, OutboxChainClient)
            client = made
            client.start()
        await cancel_manual_order(cx, v.account.household, form.get("order"), client)
    except (ReadModelError, WalletError) as exc:
        return await render_home(web, request, v, v.account, status=400, error=refusal(web, exc))
    finally:
        if client is not None:
            await client.aclose()
    return web.redirect("/home?done=cancel#orders")


def _dec(text: str | None) -> Decimal | None:
    """A form number for comparison (None: empty); unparsable or NaN counts as 'more' (needs the code)."""
    if text is None or not text.strip():
        return None
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        return Decimal("Infinity")
    # NaN/sNaN parse but cannot be compared (InvalidOperation): unparsable as a number, so 'more'
    return Decimal("Infinity") if d.is_nan() else d


def loosens(current: PolicyView | None, form: dict[str, str]) -> bool:
    """True if the requested policy lets the agents buy more or dearer, or sell more or cheaper."""
    floor, cap = _dec(form.get("sell_floor")), _dec(form.get("buy_cap"))
    old_floor = current.sell_floor_won_kwh if current else None
    old_cap = current.buy_cap_won_kwh if current else None
    if cap is not None and (old_cap is None or cap > old_cap):
        return True
    if floor is not None and (old_floor is None or floor < old_floor or floor.is_infinite()):
        return True
    old = {"reserve_wh": current.reserve_wh if current else 0, "interval_wh": current.interval_wh if current else 0,
           "daily_noia": current.daily_noia if current else 0}
    for name in ("interval_wh", "daily_noia"):
        new = _dec(form.get(name))
        if new is not None and new > old[name]:
            return True
    reserve = _dec(form.get("reserve_wh"))
    return reserve is not None and (reserve < old["reserve_wh"] or reserve.is_infinite())


async def policy(request: Request) -> Response:
    web, v, form = await begin(request)
    assert v.account is not None and v.account.household is not None
    cx = web.complex()
    current, _err = policy_view(cx, v.account.household)
    if loosens(current, form) and (page := await code_or_page(web, request, v, form.get("code"), form)) is not None:
        return page
    values = {k: form.get(k, "").strip() for k in POLICY_FIELDS}
    try:
        set_policy(cx, v.account.household,
                   sell_floor_won_kwh=values["sell_floor"] or None, buy_cap_won_kwh=values["buy_cap"] or None,
                   reserve_wh=values["reserve_wh"] or KEEP, interval_wh=values["interval_wh"] or KEEP,
                   daily_noia=values["daily_noia"] or KEEP)
    except (ReadModelError, WalletError) as exc:
        return await render_home(web, request, v, v.account, status=400, error=refusal(web, exc), form=form)
    log.info("web: household %s changed its trading policy", v.account.household)
    return web.redirect("/home?done=policy#policy")


async def export(request: Request) -> Response:
    web, v, form = await begin(request)
    assert v.account is not None and v.account.household is not None
    wallet = web.wallet()
    passphrase = form.get("passphrase", "")
    if wallet is None:
        return await render_home(web, request, v, v.account, status=409, error=REASONS["wallet_closed"])
    if len(passphrase) < MIN_EXPORT_PASSPHRASE or passphrase != form.get("passphrase2"):
        return await render_home(web, request, v, v.account, status=400,
                                 error=REASONS["weak_passphrase"] + " Type it twice, the same.")
    if (page := await code_or_page(web, request, v, form.get("code"), {})) is not None:
        return page
    try:
        keystore = await run_in_threadpool(wallet.export, v.account.household, passphrase)
    except WalletError as exc:
        return await render_home(web, request, v, v.account, status=400, error=refusal(web, exc))
    log.info("web: household %s exported its key", v.account.household)
    return Response(json.dumps(keystore, indent=1), media_type="application/json", headers={
        "content-disposition": f'attachment; filename="{v.account.household}-keystore.json"'})


ROUTES = [Route("/home/order", order, methods=["POST"]), Route("/home/order/cancel", cancel, methods=["POST"]),
          Route("/home/policy", policy, methods=["POST"]), Route("/home/export", export, methods=["POST"])]
