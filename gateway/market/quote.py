"""What a Peer depends on to quote: who signs, at what price, how much energy.

Three small Protocols, so the Peer runs before (and without) the services that
will implement them in production:

- ``OrderSigner``: signs an ``Order`` for the maker household (65 bytes r||s||v).
  Production: the gateway's wallet (``Wallet.sign_order(household, order,
  domain, authorisation)``, with the household's policy checks) behind a small
  adapter. Here: ``KeySigner`` over a coincurve key (tests, the bench, test
  makers from ``metanoia peer run --key``).
- ``Pricer``: the maker's ask in NOIA smallest units per Wh for a delivery
  interval. Production: the oracle's recommendation, floored by the
  household's policy. Here: ``FixedPricer``.
- ``Inventory``: the Wh the maker may still commit for an interval (forecast
  surplus, less the self-consumption reserve, less what was already filled).
  The Peer subtracts its own outstanding unexpired quotes from it. Production:
  the maker agent, from the forecast. Here: ``FixedInventory``.

All three are synchronous and called on the event loop: they must be fast
(in-process, cached), since they sit on the path of every quote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from coincurve import PrivateKey

from gateway.validator.crypto import address_of, sign_digest
from gateway.validator.order import Domain, Order

Side = Literal["sell", "buy"]  # the maker's side; a Peer's maker sells energy


class SignerRefused(Exception):
    """The signer will not sign this order (e.g. the household's policy says no); ``reason`` is a code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class OrderSigner(Protocol):
    @property
    def maker(self) -> bytes:
        """The maker household's 20-byte address (what ``order_signer`` must recover)."""
        ...

    def sign(self, order: Order, domain: Domain) -> bytes:
        """65-byte r||s||v over the order's EIP-712 digest; may raise ``SignerRefused``."""
        ...


class Pricer(Protocol):
    def price(self, side: Side, interval_start: int, wh: int | None) -> int:
        """NOIA smallest units per Wh (> 0) for ``wh`` in the interval (None: the size is not known yet)."""
        ...


class Inventory(Protocol):
    def available_wh(self, interval_start: int) -> int:
        """Wh the maker may still commit for the interval, before this Peer's outstanding quotes."""
        ...


@dataclass(frozen=True)
class KeySigner:
    """An in-memory maker key: coincurve signing of the digest from ``Order.digest``."""

    key: PrivateKey
    maker: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "maker", address_of(self.key))

    def sign(self, order: Order, domain: Domain) -> bytes:
        return sign_digest(self.key, order.digest(domain))


@dataclass(frozen=True)
class FixedPricer:
    """One price for every interval and size (a test maker; the oracle replaces it)."""

    price_per_wh: int

    def __post_init__(self) -> None:
        if self.price_per_wh <= 0:
            raise ValueError("price per Wh must be > 0")

    def price(self, side: Side, interval_start: int, wh: int | None) -> int:
        return self.price_per_wh


@dataclass(frozen=True)
class FixedInventory:
    """The same Wh for every interval, or per interval from ``per_interval`` (a test maker)."""

    wh: int
    per_interval: Mapping[int, int] = field(default_factory=dict)

    def available_wh(self, interval_start: int) -> int:
        return self.per_interval.get(interval_start, self.wh)
