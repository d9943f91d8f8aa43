"""Pluggable market mechanisms (docs/market.md): RFQ (default) and a uniform-price call auction.

``by_name(name)`` gives the mechanism a complex configured (``market.mechanism``
in the gateway's TOML: ``rfq`` or ``auction``); ``compare`` runs several on the
same interval book and reports volume, average price and each household's part.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .auction import CallAuction
from .base import BookOrder, Clearing, Match, Mechanism, MechanismError, books_from_net, check_book
from .rfq import Rfq

MECHANISMS = ("rfq", "auction")


def by_name(name: str) -> Mechanism:
    if name == "rfq":
        return Rfq()
    if name == "auction":
        return CallAuction()
    raise MechanismError("unknown", f"mechanism {name!r}: one of {', '.join(MECHANISMS)}")


def household_report(clearing: Clearing, net_wh: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Per household: forecast surplus (+) or deficit (-), Wh sold/bought, NOIA received/paid, Wh left over."""
    out: dict[str, dict[str, Any]] = {}
    for h, net in sorted(net_wh.items()):
        sold = sum(m.wh for m in clearing.matches if m.seller == h)
        bought = sum(m.wh for m in clearing.matches if m.buyer == h)
        out[h] = {"net_wh": net, "sold_wh": sold, "bought_wh": bought,
                  "received_noia": str(sum(m.noia for m in clearing.matches if m.seller == h)),
                  "paid_noia": str(sum(m.noia for m in clearing.matches if m.buyer == h)),
                  "unsold_surplus_wh": max(0, net) - sold, "uncovered_deficit_wh": max(0, -net) - bought}
    return out


def compare(interval_start: int, bids: Sequence[BookOrder], asks: Sequence[BookOrder],
            net_wh: Mapping[str, int], mechanisms: Iterable[Mechanism] | None = None) -> dict[str, Any]:
    """Clear the same book with each mechanism; volume, average price, NOIA and each household's outcome."""
    out: dict[str, Any] = {"interval_start": interval_start, "bids": len(bids), "asks": len(asks),
                           "demand_wh": sum(b.wh for b in bids), "supply_wh": sum(a.wh for a in asks)}
    for m in mechanisms or (Rfq(), CallAuction()):
        c = m.clear(interval_start, bids, asks)
        avg = c.average_price
        out[m.name] = {"volume_wh": c.volume_wh, "noia": str(c.noia), "price_per_wh": c.price_per_wh,
                       "average_price_per_wh": None if avg is None else round(float(avg), 4),
                       "matches": len(c.matches), "households": household_report(c, net_wh),
                       "explanation": list(c.explanation)}
    return out


__all__ = ["BookOrder", "Match", "Clearing", "Mechanism", "MechanismError", "CallAuction", "Rfq", "by_name",
           "compare", "books_from_net", "check_book", "household_report", "MECHANISMS"]
