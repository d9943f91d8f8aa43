"""The common interface of market mechanisms: books in, bilateral matches out.

A mechanism clears one delivery interval: ``clear(interval_start, bids, asks)
-> Clearing``. Bids and asks are ``BookOrder`` (a household's Wh at a limit
price in NOIA units per Wh: a buy pays at most, a sell takes at least). The
result is a list of bilateral ``Match`` (buyer, seller, Wh, price per Wh),
because on the chain every trade is one signed order (maker = the seller)
filled by one fill transaction (taker = the buyer): the agents turn each match
into exactly that (``agents.Executor``), whatever the mechanism, so settlement
sees the same fills.

Prices and amounts are integers (NOIA smallest units per Wh, Wh).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Protocol

Side = Literal["buy", "sell"]


class MechanismError(Exception):
    """A book a mechanism cannot clear; ``reason``: ``bad_order``, ``duplicate_id``, ``wrong_side``, ``unknown``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class BookOrder:
    """One household's bid (``buy``) or ask (``sell``) for an interval."""

    id: str
    household: str
    side: Side
    wh: int
    price_per_wh: int          # limit: a buy pays at most, a sell takes at least
    seq: int = 0               # arrival order: earlier wins a price tie
    origin: str = "agent"      # agent | manual:<order id>

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise MechanismError("bad_order", f"side {self.side!r}")
        for name in ("wh", "price_per_wh", "seq"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise MechanismError("bad_order", f"{name} must be an integer >= 0")
        if self.wh == 0 or self.price_per_wh == 0:
            raise MechanismError("bad_order", "wh and price must be > 0")


@dataclass(frozen=True)
class Match:
    """``wh`` from ``seller`` to ``buyer`` at ``price_per_wh``: one order + one fill on the chain."""

    bid_id: str
    ask_id: str
    buyer: str
    seller: str
    wh: int
    price_per_wh: int

    @property
    def noia(self) -> int:
        return self.wh * self.price_per_wh


@dataclass(frozen=True)
class Clearing:
    interval_start: int
    mechanism: str
    matches: tuple[Match, ...]
    price_per_wh: int | None = None        # the uniform price (auction); None for pay-as-ask
    explanation: tuple[str, ...] = field(default=())

    @property
    def volume_wh(self) -> int:
        return sum(m.wh for m in self.matches)

    @property
    def noia(self) -> int:
        return sum(m.noia for m in self.matches)

    @property
    def average_price(self) -> Fraction | None:
        v = self.volume_wh
        return Fraction(self.noia, v) if v else None

    def filled(self, order_id: str) -> int:
        return sum(m.wh for m in self.matches if order_id in (m.bid_id, m.ask_id))

    def to_json(self) -> dict[str, Any]:
        avg = self.average_price
        return {"interval_start": self.interval_start, "mechanism": self.mechanism,
                "price_per_wh": self.price_per_wh, "volume_wh": self.volume_wh, "noia": str(self.noia),
                "average_price_per_wh": None if avg is None else f"{float(avg):.4f}",
                "matches": [{"buyer": m.buyer, "seller": m.seller, "wh": m.wh, "price_per_wh": m.price_per_wh,
                             "bid": m.bid_id, "ask": m.ask_id} for m in self.matches],
                "explanation": list(self.explanation)}


class Mechanism(Protocol):
    @property
    def name(self) -> str: ...

    def clear(self, interval_start: int, bids: Sequence[BookOrder], asks: Sequence[BookOrder]) -> Clearing:
        """Match the interval's book; never a match below an ask's or above a bid's limit."""
        ...


def check_book(bids: Sequence[BookOrder], asks: Sequence[BookOrder]) -> None:
    ids: set[str] = set()
    for o, side in [(b, "buy") for b in bids] + [(a, "sell") for a in asks]:
        if o.side != side:
            raise MechanismError("wrong_side", f"{o.id} is a {o.side} in the {side} book")
        if o.id in ids:
            raise MechanismError("duplicate_id", o.id)
        ids.add(o.id)


def bid_priority(o: BookOrder) -> tuple[int, int, str]:
    return (-o.price_per_wh, o.seq, o.id)


def ask_priority(o: BookOrder) -> tuple[int, int, str]:
    return (o.price_per_wh, o.seq, o.id)


def books_from_net(net_wh: Mapping[str, int], *, ask_price: Mapping[str, int], bid_price: Mapping[str, int],
                   reserve_wh: Mapping[str, int] | None = None) -> tuple[list[BookOrder], list[BookOrder]]:
    """Bids for deficits (net < 0) at each household's cap, asks for surpluses less the reserve at its floor."""
    bids, asks = [], []
    for seq, (h, net) in enumerate(sorted(net_wh.items())):
        if net < 0 and h in bid_price:
            bids.append(BookOrder(f"bid:{h}", h, "buy", -net, bid_price[h], seq))
        elif net > 0 and h in ask_price:
            wh = net - (reserve_wh or {}).get(h, 0)
            if wh > 0:
                asks.append(BookOrder(f"ask:{h}", h, "sell", wh, ask_price[h], seq))
    return bids, asks
