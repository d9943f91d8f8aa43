"""Pairing a meter with a household from its QR label.

The label's QR holds ``{public_url}/pair?d={device id hex}&c={claim code}``
(the contract with ``metanoia device label``). Signed out, the page offers
sign-in and sign-up and comes back here; signed in as a homeowner, it checks
the claim code (rate-limited per account and per device, constant time),
shows the meter and the household it will join, and pairs on confirmation
with ``DeviceRegistry.pair`` in the same transaction that gives the account
its household (accounts.py says how a household id is chosen). A wallet key
is created for a new household when the wallet service is configured.
"""

from __future__ import annotations

import hmac
import logging
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.db import transaction
from gateway.devices import (BadRecordError, ClaimError, DeviceRecord, DeviceRegistryError, claim_hash_of,
                             parse_device_id)
from gateway.installer.claim import canonical_claim_code
from gateway.web.accounts import AccountError
from gateway.web.app import Refused, Visit, Web, web_of

log = logging.getLogger(__name__)

MAX_CLAIM = 128


def pair_path(device_hex: str, claim: str) -> str:
    return f"/pair?d={quote(device_hex, safe='')}&c={quote(claim, safe='')}"


def _link(d: object, c: object) -> tuple[bytes, str]:
    """The device id and claim code of a pairing link (or of the typed form: the
    id may carry the label's spaces, the code any case and Crockford's look-alike
    letters), or 400."""
    try:
        device_id = parse_device_id("".join(str(d or "").split()))
    except BadRecordError:
        raise Refused(400, "bad_pair_link", "This is not a Metanoia meter link (the device id is wrong).") from None
    claim = canonical_claim_code(str(c or "").strip())
    if not 0 < len(claim) <= MAX_CLAIM or not claim.isprintable():
        raise Refused(400, "bad_pair_link", "This is not a Metanoia meter link (the claim code is missing).")
    return device_id, claim


def _checked(web: Web, account_id: int, device_id: bytes, claim: str) -> DeviceRecord:
    """The device if ``claim`` is its code (one attempt from each bucket), else a refusal (counted)."""
    web.guard.limit("claim_per_account", str(account_id), "claim")
    web.guard.limit("claim_per_device", device_id.hex(), "claim")
    rec = web.store().devices.get(device_id)
    try:
        presented = claim_hash_of(claim)
    except BadRecordError:
        presented = b""
    if rec is None or not hmac.compare_digest(presented, rec.claim_hash):
        web.guard.count("claim_failed")
        raise Refused(403, "claim_failed", "This meter and claim code do not match. Check the label and scan it "
                                           "again.")
    if not rec.active:
        raise Refused(409, "device_revoked", "This meter was taken out of service by the operator.")
    return rec


async def pair(request: Request) -> Response:
    web = web_of(request)
    v = web.visit(request)
    if v.account is not None and v.account.is_operator:
        web.guard.count("wrong_role")
        raise Refused(403, "wrong_role", "Operators do not pair meters; sign in as the homeowner.")
    if request.method == "POST":
        return await _confirm(web, request, v)
    if "d" not in request.query_params and "c" not in request.query_params:
        # No QR at hand (a damaged label, a laptop): type what the label says.
        return web.render(request, v, "pair_enter.html")
    device_id, claim = _link(request.query_params.get("d"), request.query_params.get("c"))
    here = pair_path(device_id.hex(), claim)
    if v.account is None:
        return web.render(request, v, "pair_signed_out.html", device=device_id.hex(),
                          next=quote(here, safe=""))
    rec = _checked(web, v.account.id, device_id, claim)
    if rec.household is not None:
        mine = rec.household == v.account.household
        return web.render(request, v, "pair_done.html", status=200 if mine else 409, device=rec.id_hex,
                          household=rec.household if mine else None, already=True)
    joins = v.account.household or rec.name or "a new household"
    return web.render(request, v, "pair.html", device=rec.id_hex, profile=rec.profile, name=rec.name, joins=joins,
                      claim=claim)


async def _confirm(web: Web, request: Request, v: Visit) -> Response:
    form = await web.form(request, v)
    if v.account is None:
        raise Refused(401, "signed_out", "Sign in to pair a meter.")
    device_id, claim = _link(form.get("d"), form.get("c"))
    account = v.account
    rec = _checked(web, account.id, device_id, claim)
    if rec.household is not None:
        web.guard.count("pair_claim_used")
        raise Refused(409, "claim_used", "This meter is already paired.")
    store = web.store()
    try:
        with transaction(store.conn):
            household = store.accounts.household_for_pairing(account, rec.name)
            paired = store.devices.pair(device_id, household, claim)
    except AccountError as exc:
        web.guard.count(f"pair_{exc.reason}")
        raise Refused(409, exc.reason, str(exc)) from None
    except ClaimError as exc:
        web.guard.count(f"pair_{exc.reason}")
        raise Refused(409, exc.reason, "This meter is already paired." if exc.reason == "claim_used"
                      else "This meter and claim code do not match.") from None
    except DeviceRegistryError as exc:
        web.guard.count(f"pair_{exc.reason}")
        raise Refused(409, exc.reason, "This meter cannot be paired (ask your operator).") from None
    log.info("web pairing: device %s joined household %s (account %s)", paired.id_hex, household, account.id)
    _ensure_wallet_key(web, household)
    return web.render(request, web.visit(request), "pair_done.html", device=paired.id_hex, household=household,
                      already=False)


def _ensure_wallet_key(web: Web, household: str) -> None:
    wallet = web.wallet()
    if wallet is None or household in wallet.households():
        return
    wallet.create(household)


ROUTES = [Route("/pair", pair, methods=["GET", "POST"])]
