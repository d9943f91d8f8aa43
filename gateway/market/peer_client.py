"""The taker's side of the Peer protocol: build requests, check a maker's answer.

``check_quote`` is what a taker must do before filling: rebuild the order from
the answer's fields (never trust ``encoded`` alone), recover the signer with
the core's ``order_signer`` and compare it with the maker it asked, and
compare every field with what it asked for. The bench and the tests use it;
so will the taker agent.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.validator.crypto import ZERO_ADDRESS, parse_address
from gateway.validator.errors import DecodeError
from gateway.validator.order import Domain, Order, SignedOrder, grid_id, order_signer

_ids = itertools.count(1)


class QuoteInvalid(Exception):
    """A maker's answer that must not be filled; ``reason`` is a code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Ask:
    """What the taker asked for (None: not part of the request)."""

    grid: str
    interval_start: int
    taker: bytes = ZERO_ADDRESS
    wh: int | None = None
    noia: int | None = None


def request(method: str, ask: Ask, domain: Domain, *, rid: int | None = None) -> dict[str, Any]:
    """A JSON-RPC request object for ``method`` (one of the Peer's three)."""
    p: dict[str, Any] = {"grid": ask.grid, "intervalStart": ask.interval_start, "chainId": domain.chain_id,
                         "verifyingContract": "0x" + domain.verifying_contract.hex()}
    if method != "getMaxQuote" or ask.taker != ZERO_ADDRESS:
        p["taker"] = "0x" + ask.taker.hex()
    if ask.wh is not None:
        p["wh"] = ask.wh
    if ask.noia is not None:
        p["noia"] = str(ask.noia)
    return {"jsonrpc": "2.0", "id": next(_ids) if rid is None else rid, "method": method, "params": [p]}


def signed_order_of(result: Mapping[str, Any]) -> SignedOrder:
    """The order and signature of a signed answer (raises QuoteInvalid on a malformed one)."""
    try:
        o, sig = result["order"], result["signature"]
        order = Order(nonce=int(o["nonce"]), expiry=int(o["expiry"]), maker=parse_address(o["maker"]),
                      taker=parse_address(o["taker"]), wh=int(o["wh"]), interval_start=int(o["intervalStart"]),
                      noia=int(o["noia"]), grid=bytes.fromhex(o["grid"].removeprefix("0x")))
        r, s = bytes.fromhex(sig["r"].removeprefix("0x")), bytes.fromhex(sig["s"].removeprefix("0x"))
        v = sig["v"]
        if len(r) != 32 or len(s) != 32 or not isinstance(v, int) or not 0 <= v <= 255:
            raise ValueError("signature r, s are 32 bytes, v one byte")
        return SignedOrder(order, r + s + bytes((v,)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise QuoteInvalid("malformed", f"{type(exc).__name__}: {exc}") from None


def check_quote(result: Mapping[str, Any], domain: Domain, maker: bytes, ask: Ask, *,
                now: float | None = None) -> SignedOrder:
    """A signed answer the taker may fill, or QuoteInvalid (reason: malformed, bad_signature, wrong_signer,
    wrong_domain, wrong_grid, wrong_interval, wrong_taker, wrong_amount, expired, encoding_mismatch)."""
    signed = signed_order_of(result)
    o = signed.order
    try:
        signer, _digest = order_signer(signed, domain)
    except DecodeError as exc:
        raise QuoteInvalid("bad_signature", str(exc)) from None
    if signer != maker or o.maker != maker:
        raise QuoteInvalid("wrong_signer", f"signed by 0x{signer.hex()}, maker field 0x{o.maker.hex()}")
    dom = result.get("domain")
    if isinstance(dom, Mapping) and dom.get("chainId") != domain.chain_id:
        raise QuoteInvalid("wrong_domain", f"chainId {dom.get('chainId')}")
    if o.grid != grid_id(ask.grid):
        raise QuoteInvalid("wrong_grid")
    if o.interval_start != ask.interval_start:
        raise QuoteInvalid("wrong_interval")
    if o.taker != ask.taker:
        raise QuoteInvalid("wrong_taker")
    if (ask.wh is not None and o.wh != ask.wh) or (ask.noia is not None and o.noia != ask.noia) \
            or o.wh == 0 or o.noia == 0:
        raise QuoteInvalid("wrong_amount", f"{o.wh} Wh for {o.noia}")
    if now is not None and o.expiry <= now:
        raise QuoteInvalid("expired", f"expiry {o.expiry}")
    enc = result.get("encoded")
    if enc is not None and enc != "0x" + signed.encode().hex():
        raise QuoteInvalid("encoding_mismatch")
    return signed
