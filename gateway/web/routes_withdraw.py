"""Withdrawal: a homeowner sends NOIA from the household's address to an address of their own.

The wallet signs nothing the homeowner did not approve: the request (with a
fresh TOTP code) becomes a single-use homeowner order in the wallet
(``Wallet.approve``, kind ``transfer``, this recipient, at most this amount),
the transfer is authorised and recorded against it (``Wallet.sign_tx`` with
``ByHomeowner``: it counts towards the day's spending), and the chain client
submits it exactly once (idempotency key ``withdraw:<approval id>``) and
follows it to finality. The page waits up to ``FINAL_WAIT_S`` for the result.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.chain_client import FinalityTimeout, Intent, OutboxChainClient
from gateway.chain_client.errors import ChainClientError
from gateway.market.wallet_policy import ByHomeowner, WalletError
from gateway.validator.tx import Transfer, Tx
from gateway.web.readmodel import ReadModelError, chain_client
from gateway.web.routes_actions import begin, code_or_page, refusal
from gateway.web.routes_household import render_home

log = logging.getLogger(__name__)

NOIA_UNITS = 10 ** 18
MAX_DECIMALS = 6
APPROVAL_TTL_S = 600
FINAL_WAIT_S = 20.0
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def parse_amount(text: str) -> int | None:
    """NOIA (at most 6 decimals) as smallest units, or None."""
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        return None
    if not d.is_finite() or d <= 0 or d != d.quantize(Decimal(1).scaleb(-MAX_DECIMALS)) or d > 10 ** 12:
        return None
    return int(d * NOIA_UNITS)


async def withdraw(request: Request) -> Response:
    web, v, form = await begin(request)
    assert v.account is not None and v.account.household is not None
    household = v.account.household
    to_text, amount = form.get("to", "").strip(), parse_amount(form.get("amount", ""))
    if not _ADDRESS.match(to_text) or amount is None:
        web.guard.count("action_bad_withdrawal")
        return await render_home(web, request, v, v.account, status=400, form=form,
                                 error="Give an address (0x and 40 hex digits) and an amount of NOIA "
                                       f"(at most {MAX_DECIMALS} decimals).")
    cx = web.complex()
    if cx.wallet is None or cx.domain is None or not web.config.validators:
        return await render_home(web, request, v, v.account, status=409, error="Withdrawals need the chain; "
                                 "this gateway has no validator configured.")
    if (page := await code_or_page(web, request, v, form.get("code"), form)) is not None:
        return page
    to = bytes.fromhex(to_text[2:])
    client: OutboxChainClient | None = None
    try:
        made = chain_client(cx)
        assert isinstance(made, OutboxChainClient)
        client = made
        client.start()
        sender = cx.wallet.address(household)
        nonce = await client.nonce(sender)   # the chain answers before anything is approved
        if await client.balance(sender) < amount:
            web.guard.count("action_insufficient_balance")
            return await render_home(web, request, v, v.account, status=400, form=form,
                                     error="The household's balance is smaller than that.")
        approval = cx.wallet.approve(household, "transfer", ttl_s=APPROVAL_TTL_S, noia=amount, to=to)
        tx = Tx(cx.domain.chain_id, sender, nonce, Transfer(to, amount))
        cx.wallet.sign_tx(household, tx, cx.domain, ByHomeowner(approval.id))   # authorised and recorded
        sid = await client.submit(Intent(f"withdraw:{approval.id}", sender, Transfer(to, amount)))
        receipt = await client.wait_final(sid, FINAL_WAIT_S)
    except (ReadModelError, WalletError) as exc:
        return await render_home(web, request, v, v.account, status=400, error=refusal(web, exc), form=form)
    except FinalityTimeout:
        return await render_home(web, request, v, v.account, status=202,
                                 error="The withdrawal is sent but not final yet; check your balance shortly.")
    except ChainClientError as exc:
        web.guard.count("action_chain_unavailable")
        log.warning("web: withdrawal of %s failed: %s", household, exc)
        return await render_home(web, request, v, v.account, status=503,
                                 error="The chain is not reachable; nothing was sent. Try again later.")
    finally:
        if client is not None:
            await client.aclose()
    if not receipt.ok:
        web.guard.count(f"action_{receipt.reason or 'rejected'}")
        return await render_home(web, request, v, v.account, status=400,
                                 error=f"The chain refused the withdrawal: {receipt.reason}.")
    log.info("web: household %s withdrew %d units to 0x%s (tx 0x%s)", household, amount, to.hex(),
             (receipt.tx_hash or b"").hex())
    return web.redirect("/home?done=withdraw#meters")


ROUTES = [Route("/home/withdraw", withdraw, methods=["POST"])]
