"""What a household's key may sign: its policy, the homeowner's manual orders, the checks.

Pure data and pure functions; ``wallet.py`` supplies the stored totals and the
clock. A *spend* is anything the household's key would commit it to:

- ``sell``: an ``Order`` the household signs as maker (it sells ``wh`` for ``noia``);
- ``buy``: a ``fill`` transaction the household sends as taker (it pays ``noia``);
- ``transfer``: a NOIA transfer (only ever by a homeowner's manual order).

Prices are NOIA smallest units per Wh, compared without division:
a sell needs ``noia >= floor * wh``, a buy ``noia <= cap * wh``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["sell", "buy", "transfer"]
KINDS: tuple[str, ...] = ("sell", "buy", "transfer")

# refusal reasons (SpendRefused.reason)
NO_AUTHORISATION = "no_authorisation"
NO_FORECAST = "no_forecast"
EXPIRED = "expired"
INTERVAL_PAST = "interval_past"
UNDER_FLOOR = "under_floor"
OVER_CAP = "over_cap"
OVER_INTERVAL_LIMIT = "over_interval_limit"
OVER_RESERVE = "over_reserve"
OVER_DAILY_LIMIT = "over_daily_limit"
NOT_ALLOWED = "not_allowed"
WRONG_MAKER = "wrong_maker"
WRONG_SENDER = "wrong_sender"
WRONG_TAKER = "wrong_taker"
WRONG_CHAIN = "wrong_chain"
BAD_ORDER_SIGNATURE = "bad_order_signature"
UNKNOWN_AUTHORISATION = "unknown_authorisation"
AUTHORISATION_USED = "authorisation_used"
AUTHORISATION_EXPIRED = "authorisation_expired"
AUTHORISATION_MISMATCH = "authorisation_mismatch"
TAMPERED = "tampered"


class WalletError(Exception):
    """Every wallet failure: ``reason`` is a stable code, ``detail`` never holds a secret."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SpendRefused(WalletError):
    """The wallet will not sign: neither the policy nor a homeowner's order authorises it."""


def _nonneg(v: Any, what: str, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{what} must be an integer >= 0")


@dataclass(frozen=True)
class Policy:
    """A household's standing instructions to the agents (set by the homeowner).

    ``sell_floor_per_wh`` / ``buy_cap_per_wh``: None forbids the agent that side.
    ``reserve_wh``: Wh of the forecast surplus never sold (self-consumption).
    ``interval_wh``: most Wh committed per side per delivery interval.
    ``daily_noia``: most NOIA (smallest units) spent on buys per local day.
    """

    sell_floor_per_wh: int | None = None
    buy_cap_per_wh: int | None = None
    reserve_wh: int = 0
    interval_wh: int = 0
    daily_noia: int = 0

    def __post_init__(self) -> None:
        _nonneg(self.sell_floor_per_wh, "sell_floor_per_wh", True)
        _nonneg(self.buy_cap_per_wh, "buy_cap_per_wh", True)
        _nonneg(self.reserve_wh, "reserve_wh")
        _nonneg(self.interval_wh, "interval_wh")
        _nonneg(self.daily_noia, "daily_noia")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Policy:
        return cls(**{k: obj.get(k, getattr(cls, k)) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ManualOrder:
    """A homeowner's explicit, single-use authorisation of one spend.

    sell: up to ``wh`` at no less than ``price_per_wh`` (if set);
    buy: up to ``wh`` at no more than ``price_per_wh`` (if set) and ``noia`` in total (if set);
    transfer: to ``to``, at most ``noia``. ``interval_start`` (if set) pins the
    delivery interval. Stored with a MAC under the wallet's master key.
    """

    id: str
    household: str
    kind: str
    expires_at: int
    created_at: int
    wh: int = 0
    price_per_wh: int | None = None
    noia: int | None = None
    interval_start: int | None = None
    to: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        for name in ("expires_at", "created_at", "wh"):
            _nonneg(getattr(self, name), name)
        for name in ("price_per_wh", "noia", "interval_start"):
            _nonneg(getattr(self, name), name, True)
        if self.kind == "transfer" and (self.to is None or len(self.to) != 20 or self.noia is None):
            raise ValueError("a transfer needs a 20-byte recipient and a NOIA amount")
        if self.kind != "transfer" and self.wh <= 0:
            raise ValueError("a sell or buy needs wh > 0")

    def canonical(self) -> bytes:
        """The bytes the record MAC covers (every field, fixed order)."""
        fields = (self.id, self.household, self.kind, self.expires_at, self.created_at, self.wh,
                  self.price_per_wh, self.noia, self.interval_start, self.to.hex() if self.to else None)
        return repr(fields).encode()


@dataclass(frozen=True)
class ByPolicy:
    """Sign under the household's stored policy. Sells need the maker agent's
    forecast surplus (Wh) for the order's interval, so the reserve can be kept."""

    forecast_surplus_wh: int | None = None


@dataclass(frozen=True)
class ByHomeowner:
    """Sign under the homeowner's manual order ``id`` (consumed on use)."""

    id: str


Authorisation = ByPolicy | ByHomeowner


@dataclass(frozen=True)
class Spend:
    """One spend as the checks see it. ``key`` identifies it for idempotence and
    release (the order digest for sells and buys, the tx signing hash for transfers)."""

    kind: str
    key: bytes
    wh: int
    noia: int
    interval_start: int | None
    expiry: int | None
    to: bytes | None = None


@dataclass(frozen=True)
class Exposure:
    """What is already committed: Wh on the spend's side in its interval, NOIA today."""

    interval_wh: int
    day_noia: int


def check_time(spend: Spend, now: float) -> None:
    if spend.expiry is not None and spend.expiry <= now:
        raise SpendRefused(EXPIRED, f"expired at {spend.expiry}")


def check_policy(policy: Policy | None, spend: Spend, exposure: Exposure, auth: ByPolicy) -> None:
    """Raise ``SpendRefused`` unless the policy allows the spend on top of ``exposure``."""
    if policy is None:
        raise SpendRefused(NO_AUTHORISATION, "the household has no policy and no homeowner order was given")
    if spend.kind == "sell":
        if policy.sell_floor_per_wh is None:
            raise SpendRefused(NOT_ALLOWED, "the policy does not let the agent sell")
        if spend.noia < policy.sell_floor_per_wh * spend.wh:
            raise SpendRefused(UNDER_FLOOR, f"{spend.noia} for {spend.wh} Wh is under the floor "
                                            f"{policy.sell_floor_per_wh}/Wh")
        if exposure.interval_wh + spend.wh > policy.interval_wh:
            raise SpendRefused(OVER_INTERVAL_LIMIT, f"{exposure.interval_wh} + {spend.wh} Wh > "
                                                    f"{policy.interval_wh} Wh per interval")
        if auth.forecast_surplus_wh is None:
            raise SpendRefused(NO_FORECAST, "a sell under the policy needs the forecast surplus")
        if exposure.interval_wh + spend.wh > auth.forecast_surplus_wh - policy.reserve_wh:
            raise SpendRefused(OVER_RESERVE, f"{exposure.interval_wh} + {spend.wh} Wh would eat into the "
                                             f"{policy.reserve_wh} Wh reserve of a {auth.forecast_surplus_wh} "
                                             "Wh forecast surplus")
    elif spend.kind == "buy":
        if policy.buy_cap_per_wh is None:
            raise SpendRefused(NOT_ALLOWED, "the policy does not let the agent buy")
        if spend.noia > policy.buy_cap_per_wh * spend.wh:
            raise SpendRefused(OVER_CAP, f"{spend.noia} for {spend.wh} Wh is over the cap "
                                         f"{policy.buy_cap_per_wh}/Wh")
        if exposure.interval_wh + spend.wh > policy.interval_wh:
            raise SpendRefused(OVER_INTERVAL_LIMIT, f"{exposure.interval_wh} + {spend.wh} Wh > "
                                                    f"{policy.interval_wh} Wh per interval")
        if exposure.day_noia + spend.noia > policy.daily_noia:
            raise SpendRefused(OVER_DAILY_LIMIT, f"{exposure.day_noia} + {spend.noia} > {policy.daily_noia} "
                                                 "NOIA per day")
    else:
        raise SpendRefused(NOT_ALLOWED, f"a {spend.kind} needs the homeowner's order")


def check_manual(order: ManualOrder, spend: Spend, household: str, now: float) -> None:
    """Raise ``SpendRefused`` unless the (unused) manual order covers the spend."""
    if order.household != household:
        raise SpendRefused(UNKNOWN_AUTHORISATION, "no such order for this household")
    if order.expires_at <= now:
        raise SpendRefused(AUTHORISATION_EXPIRED, f"the homeowner's order expired at {order.expires_at}")
    if order.kind != spend.kind:
        raise SpendRefused(AUTHORISATION_MISMATCH, f"the homeowner's order is a {order.kind}, not a {spend.kind}")
    if order.interval_start is not None and spend.interval_start != order.interval_start:
        raise SpendRefused(AUTHORISATION_MISMATCH, "another delivery interval")
    if spend.kind in ("sell", "buy") and spend.wh > order.wh:
        raise SpendRefused(AUTHORISATION_MISMATCH, f"{spend.wh} Wh > the {order.wh} Wh authorised")
    if order.price_per_wh is not None:
        if spend.kind == "sell" and spend.noia < order.price_per_wh * spend.wh:
            raise SpendRefused(AUTHORISATION_MISMATCH, "under the homeowner's price")
        if spend.kind == "buy" and spend.noia > order.price_per_wh * spend.wh:
            raise SpendRefused(AUTHORISATION_MISMATCH, "over the homeowner's price")
    if order.noia is not None and spend.kind != "sell" and spend.noia > order.noia:
        raise SpendRefused(AUTHORISATION_MISMATCH, f"{spend.noia} NOIA > the {order.noia} authorised")
    if spend.kind == "transfer" and spend.to != order.to:
        raise SpendRefused(AUTHORISATION_MISMATCH, "another recipient")
