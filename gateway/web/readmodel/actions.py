"""What the household page can change: manual orders and the trading policy, through the market's own code.

The caller (the web app) has already authenticated the homeowner and checked
TOTP; these functions take that household id. Every input is checked here
before the market sees it, and every refusal is a ``ReadModelError`` with a
stable reason, counted in ``Complex.counters``: the wallet's and the order
book's own reasons pass through unchanged (``interval_past``, ``over_cap``,
``not_yours``, ...). Prices are in won per kWh, as the page shows them; the
market's unit is NOIA units per Wh (``Sources.won_per_noia`` won per NOIA).
"""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.chain_client import ChainClient
from gateway.market.orders import ManualOrderRow, ManualOrders, OrderError
from gateway.market.trades import TradeLog
from gateway.market.wallet_policy import Policy, WalletError

from .household import PolicyView, paired_devices, policy_view
from .sources import NOIA_UNITS, Complex, ReadModelError, check_household

MAX_ORDER_WH = 100_000             # one manual order: 100 kWh in 15 minutes is far beyond a household
MAX_AHEAD_S = 2 * 86400            # orders for delivery at most two days ahead
MAX_PRICE_WON_KWH = Decimal(10_000)
MAX_RESERVE_WH = 1_000_000
MAX_DAILY_NOIA = 10_000_000
KEEP: Any = object()               # set_policy: leave this field as it is


def _household(cx: Complex, household: object) -> str:
    try:
        h = check_household(household)
    except ReadModelError as e:
        raise cx.refuse(e.reason, e.detail) from None
    with cx.db() as conn:
        if not paired_devices(conn, cx.sources.grid, h):
            raise cx.refuse("unknown_household", f"{h} has no paired device in grid {cx.sources.grid}")
    if cx.wallet is None:
        raise cx.refuse("wallet_closed", "the gateway's wallet is not open in this process")
    return h


def _int(cx: Complex, v: object, what: str, lo: int, hi: int) -> int:
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v.strip())
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise cx.refuse(f"bad_{what}", f"{what} must be a whole number in {lo}..{hi}")
    return v


def won_kwh_to_units(cx: Complex, v: object, what: str, *, allow_zero: bool = False) -> int:
    """won/kWh (str, int or Decimal; at most 2 decimals) -> NOIA units per Wh, exactly."""
    try:
        d = Decimal(str(v).strip()) if isinstance(v, (str, int, Decimal)) and not isinstance(v, bool) else None
    except InvalidOperation:
        d = None
    if d is None or not d.is_finite() or d < 0 or (d == 0 and not allow_zero) or d > MAX_PRICE_WON_KWH \
            or d != d.quantize(Decimal("0.01")):
        raise cx.refuse(f"bad_{what}", f"{what} must be a price in won/kWh, 0{'' if allow_zero else '.01'}.."
                                       f"{MAX_PRICE_WON_KWH}, at most 2 decimals")
    units = d * NOIA_UNITS / 1000 / cx.sources.won_per_noia
    if units != units.to_integral_value():
        raise cx.refuse(f"bad_{what}", "not a whole number of NOIA units per Wh")
    return int(units)


def place_manual_order(cx: Complex, household: str, side: object, interval_start: object, wh: object,
                       price_won_kwh: object, *, mechanism: object = "rfq", now: float | None = None) -> ManualOrderRow:
    """Sell or buy ``wh`` for one delivery interval at a limit price (a sell takes at least, a buy pays at most).

    Approved in the wallet as the homeowner's single-use order (``ManualOrders.place``); an rfq sell is signed
    at once as a firm order the taker agents can fill."""
    h = _household(cx, household)
    if cx.domain is None:
        raise cx.refuse("market_closed", "the chain's genesis is not configured: orders cannot be signed")
    if side not in ("sell", "buy"):
        raise cx.refuse("bad_side", "side is sell or buy")
    if mechanism not in ("rfq", "auction"):
        raise cx.refuse("bad_mechanism", "mechanism is rfq or auction")
    now = time.time() if now is None else now
    L = cx.sources.interval_s
    start = _int(cx, interval_start, "interval", 0, 2**40)
    if start % L:
        raise cx.refuse("bad_interval", f"an interval starts on a multiple of {L} s")
    if start <= now:
        raise cx.refuse("interval_past", "that interval has started")
    if start > now + MAX_AHEAD_S:
        raise cx.refuse("interval_too_far", f"orders are taken up to {MAX_AHEAD_S // 3600} h ahead")
    amount = _int(cx, wh, "wh", 1, MAX_ORDER_WH)
    price = won_kwh_to_units(cx, price_won_kwh, "price")
    with cx.db() as conn:
        assert cx.wallet is not None
        orders = ManualOrders(conn, cx.wallet, cx.sources.grid, cx.domain, trades=TradeLog(conn), interval_s=L,
                              clock=lambda: now)
        try:
            return orders.place(h, str(side), start, amount, price, mechanism=str(mechanism))
        except (OrderError, WalletError) as e:
            raise cx.refuse(e.reason, e.detail) from None


async def cancel_manual_order(cx: Complex, household: str, order_id: object, chain: ChainClient | None = None, *,
                              timeout: float = 30.0, now: float | None = None) -> ManualOrderRow:
    """Withdraw an order; a signed (firm) one is cancelled on the chain through ``chain``."""
    h = _household(cx, household)
    if cx.domain is None:
        raise cx.refuse("market_closed", "the chain's genesis is not configured")
    if not isinstance(order_id, str) or not (len(order_id) == 32 and all(c in "0123456789abcdef" for c in order_id)):
        raise cx.refuse("bad_order_id", "an order id is 32 hex digits")
    with cx.db() as conn:
        assert cx.wallet is not None
        orders = ManualOrders(conn, cx.wallet, cx.sources.grid, cx.domain, trades=TradeLog(conn),
                              interval_s=cx.sources.interval_s, clock=time.time if now is None else lambda: now)
        try:
            return await orders.cancel(order_id, h, chain, timeout=timeout)
        except (OrderError, WalletError) as e:
            raise cx.refuse(e.reason, e.detail) from None


def set_policy(cx: Complex, household: str, *, sell_floor_won_kwh: object = KEEP, buy_cap_won_kwh: object = KEEP,
               reserve_wh: object = KEEP, interval_wh: object = KEEP, daily_noia: object = KEEP) -> PolicyView:
    """Change the household's standing instructions to its agents; fields not given stay as they are.

    ``sell_floor_won_kwh`` / ``buy_cap_won_kwh``: None stops the agent selling / buying."""
    h = _household(cx, household)
    assert cx.wallet is not None
    try:
        current = cx.wallet.policy(h) or Policy()
    except WalletError as e:
        raise cx.refuse(e.reason, e.detail) from None
    changes: dict[str, Any] = {}
    if sell_floor_won_kwh is not KEEP:
        changes["sell_floor_per_wh"] = None if sell_floor_won_kwh is None else won_kwh_to_units(
            cx, sell_floor_won_kwh, "floor", allow_zero=True)
    if buy_cap_won_kwh is not KEEP:
        changes["buy_cap_per_wh"] = None if buy_cap_won_kwh is None else won_kwh_to_units(cx, buy_cap_won_kwh, "cap")
    if reserve_wh is not KEEP:
        changes["reserve_wh"] = _int(cx, reserve_wh, "reserve", 0, MAX_RESERVE_WH)
    if interval_wh is not KEEP:
        changes["interval_wh"] = _int(cx, interval_wh, "interval_wh", 0, MAX_ORDER_WH)
    if daily_noia is not KEEP:
        changes["daily_noia"] = _int(cx, daily_noia, "daily_noia", 0, MAX_DAILY_NOIA) * NOIA_UNITS
    try:
        cx.wallet.set_policy(h, replace(current, **changes))
    except (WalletError, ValueError) as e:
        raise cx.refuse(getattr(e, "reason", "bad_policy"), str(e)) from None
    view, err = policy_view(cx, h)
    if view is None:
        raise cx.refuse(err or "no_policy", "the policy did not read back")
    return view


def chain_client(cx: Complex) -> ChainClient:
    """A chain client for the households' own transactions (cancels), on the outbox that holds their fills,
    so nonces come from one place. Start it (``start()``) and close it (``aclose()``) around its use."""
    from gateway.chain_client import BundledBackend, Outbox, OutboxChainClient
    from gateway.market.wallet import WalletKeyring
    from gateway.validator.genesis import load_genesis
    src = cx.sources
    if cx.wallet is None or src.genesis is None or not src.validators:
        raise cx.refuse("market_closed", "the wallet, the genesis and a validator URL are needed")
    backend = BundledBackend.from_genesis(src.validators[0], load_genesis(src.genesis))
    box = src.outbox_dbs[0] if src.outbox_dbs else src.gateway_db
    return OutboxChainClient(backend, Outbox(box, backend.name), WalletKeyring(cx.wallet))
