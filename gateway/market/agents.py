"""The maker and taker agents: they trade each household's forecast surplus and deficit (docs/market.md).

**MakerAgent** (one per household with PV) is its Peer's ``Inventory`` and
``Pricer`` and builds its ``OrderSigner`` (``HouseholdSigner`` over the wallet):

- ``available_wh(interval)`` = min(forecast surplus - the policy's reserve, the
  policy's per-interval limit) - Wh already sold for the interval (``trades``);
  the Peer takes its outstanding quotes off that, and the wallet checks the
  same limits again with ``ByPolicy(forecast_surplus_wh=...)`` before it signs,
  so the agent never commits more than it forecasts;
- ``price(interval)`` = the highest of the Oracle's recommendation (buyer
  ceiling / seller floor / complex supply and demand), the Oracle's seller
  floor (what net metering pays the household) and the policy's floor;
- ``post_intent(indexer_url, interval, locator)`` posts a signed sell intent for
  the interval to the Indexer (window = the interval, Wh = what is available,
  price hint = the price).

**TakerAgent** (one per household) covers the forecast deficit under the
policy's cap: it asks the Indexer for sell intents of the interval, asks each
maker's Peer for a quote for what it still needs (``getSenderSideOrder``,
reserved to the taker), checks each answer (``check_quote``), and fills the
cheapest within the cap first through the ``Filler`` (wallet authorisation,
``trades`` row, chain client, finality). Firm manual sell orders of the
complex (``orders.ManualOrders``) compete with the quotes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

from gateway.chain_client.errors import ChainClientError
from gateway.chain_client.rpc import JsonRpcClient
from gateway.market.forecast import Forecast, Forecaster, HistorySource
from gateway.market.intent import Intent
from gateway.market.mechanisms.base import BookOrder
from gateway.market.mechanisms.execute import Filler
from gateway.market.nonces import NonceStore
from gateway.market.oracle import Oracle, to_noia_units_per_wh
from gateway.market.peer import Peer, PeerConfig
from gateway.market.peer_client import Ask, QuoteInvalid, check_quote, request
from gateway.market.trades import Trade, TradeLog
from gateway.market.wallet import HouseholdSigner, Wallet
from gateway.market.wallet_policy import Authorisation, ByPolicy
from gateway.validator.crypto import to_checksum
from gateway.validator.errors import DecodeError
from gateway.validator.order import Domain, SignedOrder, grid_id

log = logging.getLogger(__name__)

KST = timezone(timedelta(hours=9))


class AgentError(Exception):
    """``reason``: ``no_policy``, ``not_allowed``, ``no_forecast``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MarketConfig:
    grid: str
    domain: Domain
    interval_s: int = 900
    mechanism: str = "rfq"                 # rfq | auction (the complex's choice)
    intent_ttl_s: int = 900                # intents live until the interval starts, at most this long
    quote_timeout_s: float = 3.0
    fill_timeout_s: float = 30.0
    forecast_ttl_s: float = 60.0           # a forecast is reused this long
    buyer_mtd_kwh: Decimal = Decimal(250)  # the maker's guess of a buyer's month-to-date (takers are anonymous)


def month_to_date_kwh(source: HistorySource | None, household: str, t: int) -> tuple[Decimal, Decimal]:
    """(import, import - export) in kWh from the first of the KST month to ``t`` (zeros without a source)."""
    if source is None:
        return Decimal(0), Decimal(0)
    d = datetime.fromtimestamp(t, KST)
    first = int(d.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())
    rows = source.household_intervals(household, first, t)
    imp = sum(r.import_wh for r in rows)
    exp = sum(r.export_wh for r in rows)
    return Decimal(imp) / 1000, Decimal(imp - exp) / 1000


class _Cached:
    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl, self.clock = ttl, clock
        self.items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        now = self.clock()
        hit = self.items.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        v = make()
        self.items[key] = (now, v)
        if len(self.items) > 4096:
            self.items = {k: v for k, v in self.items.items() if now - v[0] < self.ttl}
        return v


class MakerAgent:
    """A household's maker: its Peer's Inventory and Pricer (the Peer calls them on every quote)."""

    def __init__(self, household: str, wallet: Wallet, forecaster: Forecaster, oracle: Oracle, trades: TradeLog,
                 config: MarketConfig, *, history: HistorySource | None = None,
                 complex_forecast: Callable[[int], tuple[int, int]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.household = household
        self.wallet = wallet
        self.forecaster = forecaster
        self.oracle = oracle
        self.trades = trades
        self.config = config
        self.history = history if history is not None else forecaster.source
        self.complex_forecast = complex_forecast
        self.clock = clock
        self.address = wallet.address(household)
        self._forecasts = _Cached(config.forecast_ttl_s, clock)
        self._prices = _Cached(config.forecast_ttl_s, clock)
        self.peer: Peer | None = None
        self._intent_nonce = time.time_ns()

    # -- forecast --
    def forecast(self, interval_start: int) -> Forecast:
        return self._forecasts.get(interval_start, lambda: self.forecaster.forecast(
            self.household, interval_start, min(interval_start, int(self.clock()))))  # type: ignore[no-any-return]

    def surplus_wh(self, interval_start: int) -> int:
        return self.forecast(interval_start).surplus_wh

    # -- Inventory --
    def available_wh(self, interval_start: int) -> int:
        policy = self.wallet.policy(self.household)
        if policy is None or policy.sell_floor_per_wh is None:
            return 0
        cap = min(self.surplus_wh(interval_start) - policy.reserve_wh, policy.interval_wh)
        return max(0, cap - self.trades.wh(self.household, "sell", interval_start))

    # -- Pricer --
    def price(self, side: str, interval_start: int, wh: int | None) -> int:
        return self._prices.get(interval_start, lambda: self.quote_price(interval_start)[0])  # type: ignore[no-any-return]

    def quote_price(self, interval_start: int) -> tuple[int, tuple[str, ...]]:
        """NOIA units per Wh and why: max(oracle recommendation, oracle seller floor, policy floor)."""
        policy = self.wallet.policy(self.household)
        _imp, net = month_to_date_kwh(self.history, self.household, interval_start)
        supply, demand = self.complex_forecast(interval_start) if self.complex_forecast else (0, 0)
        rec = self.oracle.price(self.config.grid, interval_start, self.config.buyer_mtd_kwh, net, supply, demand)
        floor = to_noia_units_per_wh(rec.seller.won_per_kwh, self.oracle.won_per_noia)
        own = policy.sell_floor_per_wh if policy and policy.sell_floor_per_wh is not None else 0
        price = max(rec.noia_units_per_wh, floor, own, 1)
        why = rec.explanation + (f"maker {self.household}: max(recommended {rec.noia_units_per_wh}, seller floor "
                                 f"{floor}, policy floor {own}) = {price} units/Wh",)
        return price, why

    # -- the Peer and the Indexer --
    def signer(self) -> HouseholdSigner:
        return HouseholdSigner(self.wallet, self.household, self.surplus_wh)

    def make_peer(self, nonces_path: str, peer_config: PeerConfig | None = None) -> Peer:
        cfg = peer_config or PeerConfig(grid=self.config.grid, domain=self.config.domain,
                                        interval_s=self.config.interval_s)
        signer = self.signer()
        self.peer = Peer(cfg, signer, self, self, NonceStore(nonces_path, signer.maker), clock=self.clock)
        return self.peer

    def released(self, trade: Trade) -> None:
        """A fill of this maker is final: the trades table counts it now, so the Peer's quote is released."""
        if trade.maker_household == self.household and self.peer is not None:
            self.peer.release(trade.signed_order.order.nonce)

    def book_order(self, interval_start: int, seq: int = 0) -> BookOrder | None:
        """This maker's ask for a call auction: what is available, at its price."""
        wh = self.available_wh(interval_start)
        if wh <= 0:
            return None
        return BookOrder(f"ask:{self.household}:{interval_start}", self.household, "sell", wh,
                         self.price("sell", interval_start, wh), seq)

    async def post_intent(self, rpc: JsonRpcClient, interval_start: int, locator: str) -> dict[str, Any] | None:
        """Post a signed sell intent for the interval (None when nothing is available)."""
        wh = self.available_wh(interval_start)
        if wh <= 0:
            return None
        now = int(self.clock())
        self._intent_nonce = max(self._intent_nonce + 1, time.time_ns())
        intent = Intent("sell", grid_id(self.config.grid), interval_start, interval_start + self.config.interval_s,
                        wh, self.price("sell", interval_start, wh), locator,
                        max(now + 1, min(interval_start, now + self.config.intent_ttl_s)), self.address,
                        self._intent_nonce)
        sig = self.wallet.sign_intent(self.household, intent, self.config.domain)
        res = await rpc.call("indexer_setIntent", intent.to_json(), "0x" + sig.hex())
        log.info("maker %s: intent %d Wh for %d at %d/Wh", self.household, wh, interval_start, intent.price)
        return res  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Quote:
    maker: bytes
    signed: SignedOrder
    manual: str | None = None     # a firm manual sell order's id

    @property
    def price(self) -> Fraction:
        return Fraction(self.signed.order.noia, self.signed.order.wh)


class TakerAgent:
    """A household's taker: covers its forecast deficit by RFQ under the policy's cap."""

    def __init__(self, household: str, wallet: Wallet, forecaster: Forecaster, trades: TradeLog, filler: Filler,
                 config: MarketConfig, indexer: JsonRpcClient, *,
                 firm_asks: Callable[[int], Sequence[tuple[str, SignedOrder]]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.household = household
        self.wallet = wallet
        self.forecaster = forecaster
        self.trades = trades
        self.filler = filler
        self.config = config
        self.indexer = indexer
        self.firm_asks = firm_asks
        self.clock = clock
        self.address = wallet.address(household)
        self.refused: dict[str, int] = {}   # quotes not taken, by reason
        self.rounds = 4                      # quote-and-fill rounds per interval

    def need_wh(self, interval_start: int) -> int:
        f = self.forecaster.forecast(self.household, interval_start, min(interval_start, int(self.clock())))
        return max(0, f.deficit_wh - self.trades.wh(self.household, "buy", interval_start))

    def _skip(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    async def quotes(self, interval_start: int, need: int, cap: int) -> list[Quote]:
        """Valid signed quotes for up to ``need`` Wh at no more than ``cap`` per Wh, cheapest first."""
        grid_hex = "0x" + grid_id(self.config.grid).hex()
        try:
            found = await self.indexer.call("indexer_getIntents", grid_hex, "sell", interval_start, 1, 50)
        except ChainClientError as exc:
            log.warning("taker %s: indexer: %s", self.household, exc)
            found = []
        now = self.clock()
        asks = []
        for item in found if isinstance(found, list) else []:
            try:
                intent = Intent.from_json(item["intent"])
                sig = bytes.fromhex(str(item["signature"])[2:])
                if intent.signer(self.config.domain, sig) != intent.maker:
                    raise ValueError("signature")
            except (KeyError, TypeError, ValueError, DecodeError):
                self._skip("bad_intent")
                continue
            if intent.maker == self.address:
                continue
            if intent.price > cap:
                self._skip("intent_over_cap")
                continue
            asks.append(intent)
        got = await asyncio.gather(*(self._ask(i, interval_start, min(need, i.wh), now) for i in asks))
        out = [q for q in got if q is not None]
        for mid, signed in (self.firm_asks(interval_start) if self.firm_asks else ()):
            o = signed.order
            if o.maker != self.address and o.wh <= need and o.expiry > now and o.noia <= cap * o.wh:
                out.append(Quote(o.maker, signed, mid))
        return sorted((q for q in out if q.price <= cap), key=lambda q: (q.price, -q.signed.order.wh))

    async def _ask(self, intent: Intent, interval_start: int, wh: int, now: float) -> Quote | None:
        ask = Ask(self.config.grid, interval_start, self.address, wh)
        rpc = JsonRpcClient(intent.locator, timeout=self.config.quote_timeout_s)
        try:
            for _ in range(2):
                body = request("getSenderSideOrder", ask, self.config.domain)
                try:
                    result = await rpc.call("getSenderSideOrder", *body["params"])
                except ChainClientError as exc:
                    data = getattr(exc, "data", None)
                    avail = data.get("availableWh") if isinstance(data, dict) else None
                    if isinstance(avail, int) and 0 < avail < wh:   # over_commit: ask for what is left
                        ask = Ask(self.config.grid, interval_start, self.address, avail)
                        continue
                    self._skip(str(getattr(exc, "reason", None) or "peer_error"))
                    return None
                try:
                    return Quote(intent.maker, check_quote(result, self.config.domain, intent.maker, ask, now=now))
                except QuoteInvalid as exc:
                    self._skip(f"quote_{exc.reason}")
                    log.warning("taker %s: quote from %s refused: %s", self.household, to_checksum(intent.maker),
                                exc.reason)
                    return None
            return None
        finally:
            await rpc.aclose()

    async def cover(self, interval_start: int, *, need_wh: int | None = None, cap: int | None = None,
                    auth: Authorisation | None = None, origin: str = "agent", single: bool = False) -> list[Trade]:
        """Buy the interval's deficit (or ``need_wh`` at ``cap`` for a homeowner's order, ``single`` fill)."""
        if cap is None:
            policy = self.wallet.policy(self.household)
            if policy is None:
                raise AgentError("no_policy", self.household)
            if policy.buy_cap_per_wh is None:
                raise AgentError("not_allowed", f"the policy of {self.household} does not let the agent buy")
            cap = policy.buy_cap_per_wh
            need = min(self.need_wh(interval_start),
                       policy.interval_wh - self.trades.wh(self.household, "buy", interval_start))
        else:
            need = need_wh if need_wh is not None else self.need_wh(interval_start)
        if need <= 0:
            return []
        out: list[Trade] = []
        for _round in range(self.rounds):
            # each round: fresh quotes for what is still needed, fill the cheapest that fits
            took = False
            for q in await self.quotes(interval_start, need, cap):
                o = q.signed.order
                if o.wh > need:
                    continue
                t = await self.filler.fill(self.household, q.signed, auth or ByPolicy(), mechanism="rfq",
                                           origin=origin, maker_origin=f"manual:{q.manual}" if q.manual else "agent")
                out.append(t)
                if t.state != "rejected":
                    need -= o.wh
                    took = True
                break
            if not took or need <= 0 or single:
                break
        return out


__all__ = ["MakerAgent", "TakerAgent", "MarketConfig", "AgentError", "Quote", "month_to_date_kwh"]
