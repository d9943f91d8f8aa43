"""The Oracle: a recommended P2P price per interval, with every component explained
(docs/oracle.md).

For one buyer, one seller and one interval of a complex:

1. **Buyer's ceiling** = what the buyer's next kWh from KEPCO costs: the price block of
   the kWh after their month-to-date metered import (tier 1..3 or super-user, by the
   month's season), plus the climate charge and the fuel adjustment (both per kWh),
   times (1 + VAT + fund) because both are levied on the whole electricity charge.
   The base charge is not per kWh and is left out (it steps once, at a tier bound).
2. **Seller's floor** = what the seller's kWh is worth without P2P, under net metering
   (상계거래): while their month-to-date net import (import - export) is positive, an
   exported kWh cancels their own last billed kWh, worth their marginal rate computed
   as in 1 (the block holding that last kWh). Once their month is in surplus, a kWh is
   worth the surplus price (SMP-based cash settlement, ``net_metering.toml``).
3. **Supply and demand**: with the complex's forecast supply S and demand D (Wh) for the
   interval, the price sits at the share ``w = D / (S + D)`` of the way from the floor to
   the ceiling: ``price = floor + (ceiling - floor) * w``. Balanced (S = D) gives the
   midpoint; a glut of PV (S >> D) pulls the price to the seller's floor; scarcity
   (D >> S) pushes it to the buyer's ceiling. With no forecast (S = D = 0), w = 1/2.
   Reported as midpoint + adjustment, ``adjustment = (ceiling - floor) * (w - 1/2)``.
4. When the ceiling does not exceed the floor, no price benefits both sides: the
   recommendation is the seller's floor and ``tradeable`` is false.

The final price is truncated to 0.01 won/kWh; in NOIA it is
``floor(price * 10**18 / (1000 * won_per_noia))`` token units per Wh (18 decimals, as
on the chain). All arithmetic is exact (Decimal / Fraction).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from gateway.jsonrpc import INVALID_PARAMS, JsonRpcServer, Method, RpcError, params_of
from gateway.market.bill import bill, kst_date
from gateway.market.tariffs import ResidentialTable, TariffBook, TariffError, default_book

log = logging.getLogger(__name__)

NOIA_UNITS = 10 ** 18          # token units per NOIA (ERC-20 style, docs/chain.md)
INTERVAL_S = 900
CENT = Decimal("0.01")

# JSON-RPC error codes of the oracle (the -32000..-32099 service range); data.reason says more.
UNKNOWN_TARIFF = -32010
NO_TABLE_IN_FORCE = -32011
_REASON_CODES = {"unknown_tariff": UNKNOWN_TARIFF, "no_table_in_force": NO_TABLE_IN_FORCE}


def _dec_str(x: Decimal) -> str:
    return format(x.normalize(), "f") if x == x.to_integral_value() else format(x, "f")


@dataclass(frozen=True, slots=True)
class SideValue:
    """One side's value of a kWh (won/kWh) and how it was obtained."""

    role: str                  # "buyer" | "seller"
    rule: str                  # "next kWh at the marginal tier" | "net metering offset" | "surplus sale"
    mtd_kwh: Decimal
    block: str | None          # tier 1 | tier 2 | tier 3 | super-user (None for surplus)
    energy: Decimal            # the block's won/kWh
    climate: Decimal
    fuel_adjustment: Decimal
    vat_rate: Decimal
    fund_rate: Decimal
    won_per_kwh: Decimal       # exact
    explain: str

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "rule": self.rule, "mtd_kwh": _dec_str(self.mtd_kwh), "block": self.block,
                "energy": str(self.energy), "climate": str(self.climate),
                "fuel_adjustment": str(self.fuel_adjustment), "vat_rate": str(self.vat_rate),
                "fund_rate": str(self.fund_rate), "won_per_kwh": str(self.won_per_kwh), "explain": self.explain}


@dataclass(frozen=True, slots=True)
class PriceRecommendation:
    grid: str
    interval_start: int
    day: date                      # KST day whose tables apply
    tariff: str
    buyer: SideValue               # the ceiling
    seller: SideValue              # the floor
    supply_wh: int
    demand_wh: int
    demand_share: Fraction         # w = D / (S + D), 1/2 when both are 0
    midpoint: Decimal              # (floor + ceiling) / 2, exact
    adjustment: Decimal            # (ceiling - floor) * (w - 1/2), truncated to 0.0001 for display
    price_won_per_kwh: Decimal     # final, truncated to 0.01
    won_per_noia: Decimal
    noia_units_per_wh: int         # token units (10**-18 NOIA) per Wh
    tradeable: bool
    explanation: tuple[str, ...]
    caveats: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"grid": self.grid, "interval_start": self.interval_start, "day": self.day.isoformat(),
                "tariff": self.tariff, "buyer_ceiling": self.buyer.to_json(), "seller_floor": self.seller.to_json(),
                "forecast_supply_wh": self.supply_wh, "forecast_demand_wh": self.demand_wh,
                "demand_share": f"{self.demand_share.numerator}/{self.demand_share.denominator}",
                "midpoint_won_per_kwh": str(self.midpoint), "adjustment_won_per_kwh": str(self.adjustment),
                "price_won_per_kwh": str(self.price_won_per_kwh), "won_per_noia": str(self.won_per_noia),
                "noia_units_per_wh": str(self.noia_units_per_wh),
                "noia_per_kwh": _dec_str(Decimal(self.noia_units_per_wh * 1000) / NOIA_UNITS),
                "tradeable": self.tradeable, "explanation": list(self.explanation), "caveats": list(self.caveats)}


def _block_after(t: ResidentialTable, month: int, kwh: Decimal) -> tuple[str, Decimal]:
    """The block of the energy just after ``kwh`` (the next kWh a buyer imports)."""
    for label, _lo, hi, price in t.blocks(month):
        if hi is None or kwh < hi:
            return label, price
    raise AssertionError("the last block is open")


def _block_holding(t: ResidentialTable, month: int, kwh: Decimal) -> tuple[str, Decimal]:
    """The block of the energy just before ``kwh`` (the last billed kWh, which an export cancels)."""
    for label, _lo, hi, price in t.blocks(month):
        if hi is None or kwh <= hi:
            return label, price
    raise AssertionError("the last block is open")


def to_noia_units_per_wh(won_per_kwh: Decimal, won_per_noia: Decimal) -> int:
    """Token units per Wh for a price in won/kWh (floor: never more than the won price)."""
    return math.floor(Fraction(won_per_kwh) * NOIA_UNITS / (1000 * Fraction(won_per_noia)))


class Oracle:
    """Recommends P2P prices from the tariff tables (a Python API and JSON-RPC methods)."""

    def __init__(self, *, tariff: str = "residential-low", won_per_noia: Decimal | int | str = 1,
                 interval_s: int = INTERVAL_S, book: TariffBook | None = None) -> None:
        self.book = book or default_book()
        self.book.periods(tariff)  # unknown names fail here
        self.tariff = tariff
        self.won_per_noia = Decimal(won_per_noia)
        if not self.won_per_noia > 0:
            raise TariffError("bad_rate", f"won per NOIA must be positive, got {won_per_noia}")
        self.interval_s = interval_s

    # -- components --
    def _marginal(self, role: str, rule: str, t: ResidentialTable, day: date, mtd: Decimal,
                  block: str, energy: Decimal) -> SideValue:
        climate = self.book.rate("climate", day).value
        fuel = self.book.rate("fuel_adjustment", day).value
        vat = self.book.rate("vat", day).value
        fund = self.book.rate("fund", day).value
        pre = energy + climate + fuel
        value = pre * (1 + vat + fund)
        where = "next kWh after" if role == "buyer" else "last kWh of"
        explain = (f"{role}: {where} {_dec_str(mtd)} kWh month-to-date is in {block} of {t.name} "
                   f"({'summer' if t.is_summer(day.month) else 'non-summer'} tiers, table from {t.effective}): "
                   f"({energy} energy + {climate} climate + {fuel} fuel adjustment) x "
                   f"(1 + {vat} VAT + {fund} fund) = {value} won/kWh")
        return SideValue(role, rule, mtd, block, energy, climate, fuel, vat, fund, value, explain)

    def buyer_ceiling(self, day: date, mtd_kwh: Decimal, tariff: str | None = None) -> SideValue:
        if mtd_kwh < 0:
            raise TariffError("negative_energy", f"buyer month-to-date kWh cannot be negative ({mtd_kwh})")
        t = self.book.table(tariff or self.tariff, day)
        block, energy = _block_after(t, day.month, mtd_kwh)
        return self._marginal("buyer", "next kWh at the marginal tier", t, day, mtd_kwh, block, energy)

    def seller_floor(self, day: date, net_mtd_kwh: Decimal, tariff: str | None = None) -> SideValue:
        t = self.book.table(tariff or self.tariff, day)
        if net_mtd_kwh > 0:
            block, energy = _block_holding(t, day.month, net_mtd_kwh)
            return self._marginal("seller", "net metering offset", t, day, net_mtd_kwh, block, energy)
        r = self.book.rate("surplus", day)
        explain = (f"seller: month-to-date net import {_dec_str(net_mtd_kwh)} kWh <= 0, the month is in surplus: "
                   f"an exported kWh is paid the surplus price {r.value} won/kWh (net_metering.toml, "
                   f"{'verified' if r.verified else 'NOT verified'})")
        zero = Decimal(0)
        return SideValue("seller", "surplus sale", net_mtd_kwh, None, r.value, zero, zero, zero, zero, r.value, explain)

    # -- the recommendation --
    def price(self, grid: str, interval_start: int, buyer_mtd_kwh: Decimal | int | str,
              seller_mtd_kwh: Decimal | int | str, forecast_supply_wh: int, forecast_demand_wh: int,
              *, tariff: str | None = None) -> PriceRecommendation:
        if not isinstance(grid, str) or not grid:
            raise TariffError("bad_grid", "grid must be a non-empty string")
        if isinstance(interval_start, bool) or not isinstance(interval_start, int) or interval_start < 0:
            raise TariffError("bad_interval_start", f"interval_start must be unix seconds, got {interval_start!r}")
        if interval_start % self.interval_s:
            raise TariffError("unaligned_interval",
                              f"interval_start {interval_start} is not a multiple of {self.interval_s} s")
        for name, v in (("forecast_supply_wh", forecast_supply_wh), ("forecast_demand_wh", forecast_demand_wh)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TariffError("bad_forecast", f"{name} must be a whole number of Wh >= 0, got {v!r}")
        buyer_kwh, seller_kwh = _kwh(buyer_mtd_kwh, "buyer_mtd_kwh"), _kwh(seller_mtd_kwh, "seller_mtd_kwh")
        tname = tariff or self.tariff
        day = kst_date(interval_start)
        b = self.buyer_ceiling(day, buyer_kwh, tname)
        s = self.seller_floor(day, seller_kwh, tname)
        S, D = forecast_supply_wh, forecast_demand_wh
        w = Fraction(1, 2) if S + D == 0 else Fraction(D, S + D)
        lo, hi = s.won_per_kwh, b.won_per_kwh
        tradeable = hi > lo
        midpoint = (lo + hi) / 2
        if tradeable:
            exact = Fraction(lo) + (Fraction(hi) - Fraction(lo)) * w
            adj_exact = (Fraction(hi) - Fraction(lo)) * (w - Fraction(1, 2))
        else:
            exact, adj_exact = Fraction(lo), Fraction(0)
        final = _trunc(exact, CENT)
        adjustment = _trunc(adj_exact, Decimal("0.0001"))
        units = to_noia_units_per_wh(final, self.won_per_noia)
        expl = [b.explain, s.explain]
        if tradeable:
            expl += [f"midpoint = ({lo} + {hi}) / 2 = {midpoint} won/kWh",
                     f"supply/demand: forecast supply {S} Wh, demand {D} Wh -> demand share w = "
                     f"{'1/2 (no forecast)' if S + D == 0 else f'{D}/{S + D}'}; adjustment = ({hi} - {lo}) x "
                     f"(w - 1/2) = {adjustment} won/kWh",
                     f"price = {lo} + ({hi} - {lo}) x w = {final} won/kWh (truncated to 0.01)"]
        else:
            expl += [f"the buyer's ceiling {hi} does not exceed the seller's floor {lo}: no price benefits both; "
                     f"recommending the seller's floor {final} won/kWh (not tradeable)"]
        expl.append(f"in NOIA at {self.won_per_noia} won/NOIA: floor({final} x 10^18 / (1000 x {self.won_per_noia}))"
                    f" = {units} units/Wh")
        t = self.book.table(tname, day)
        caveats = self.book.caveats_table(t, day, ("energy",) + (
            ("super_user_energy",) if "super-user" in (b.block, s.block) else ()))
        for kind in ("climate", "fuel_adjustment", "fund"):
            caveats += self.book.caveats_rate(self.book.rate(kind, day), day)
        if s.rule == "surplus sale":
            caveats += self.book.caveats_rate(self.book.rate("surplus", day), day)
        return PriceRecommendation(grid=grid, interval_start=interval_start, day=day, tariff=tname, buyer=b,
                                   seller=s, supply_wh=S, demand_wh=D, demand_share=w, midpoint=midpoint,
                                   adjustment=adjustment, price_won_per_kwh=final, won_per_noia=self.won_per_noia,
                                   noia_units_per_wh=units, tradeable=tradeable, explanation=tuple(expl),
                                   caveats=tuple(dict.fromkeys(caveats)))

    def tariff_info(self, name: str, day: date) -> dict[str, Any]:
        """The table and surcharges in force on ``day``, with their sources."""
        t = self.book.table(name, day)
        return {"date": day.isoformat(), "table": t.to_json(),
                "surcharges": {k: self.book.rate(k, day).to_json()
                               for k in ("climate", "fuel_adjustment", "vat", "fund", "surplus")},
                "rounding": dict(self.book.rounding), "rounding_source": self.book.rounding_source}

    # -- JSON-RPC --
    def methods(self) -> dict[str, Method]:
        return {"oracle_getPrice": self._rpc_price, "oracle_getTariff": self._rpc_tariff,
                "oracle_bill": self._rpc_bill}

    def server(self, **kw: Any) -> JsonRpcServer:
        return JsonRpcServer(self.methods(), **kw)

    async def _rpc_price(self, params: Any) -> Any:
        p = params_of(params, 6, 7)
        with _rpc_errors():
            return self.price(p[0], p[1], p[2], p[3], p[4], p[5], tariff=p[6] if len(p) > 6 else None).to_json()

    async def _rpc_tariff(self, params: Any) -> Any:
        name, day = params_of(params, 2, 2)
        with _rpc_errors():
            if not isinstance(name, str):
                raise TariffError("unknown_tariff", "tariff name must be a string")
            return self.tariff_info(name, _parse_date(day))

    async def _rpc_bill(self, params: Any) -> Any:
        name, month, kwh = params_of(params, 3, 3)
        with _rpc_errors():
            if not isinstance(name, str):
                raise TariffError("unknown_tariff", "tariff name must be a string")
            self.book.periods(name)
            if not isinstance(month, str):
                raise TariffError("bad_month", "month must be a YYYY-MM string")
            return bill(kwh, name, month, book=self.book).to_json()


@contextmanager
def _rpc_errors() -> Iterator[None]:
    """Turns a TariffError into a JSON-RPC error with a specific code and data.reason."""
    try:
        yield
    except TariffError as exc:
        raise RpcError(_REASON_CODES.get(exc.reason, INVALID_PARAMS), str(exc), {"reason": exc.reason}) from exc


def _trunc(x: Fraction, q: Decimal) -> Decimal:
    """Truncate an exact value toward zero to the quantum ``q`` (0.01 or 0.0001)."""
    scale = int(1 / q)
    n = math.floor(abs(x) * scale) * (1 if x >= 0 else -1)
    return (Decimal(n) / scale).quantize(q)


def _kwh(v: Any, name: str) -> Decimal:
    """A kWh figure from JSON: an integer, a decimal string, or a finite number."""
    if isinstance(v, bool):
        raise TariffError("bad_number", f"{name} must be a number, got {v!r}")
    try:
        d = v if isinstance(v, Decimal) else Decimal(v) if isinstance(v, (int, str)) else \
            Decimal(repr(v)) if isinstance(v, float) else None
    except InvalidOperation:
        d = None
    if d is None or not d.is_finite():
        raise TariffError("bad_number", f"{name} must be a finite number, got {v!r}")
    return d


def _parse_date(v: Any) -> date:
    if not isinstance(v, str):
        raise TariffError("bad_date", f"date must be YYYY-MM-DD, got {v!r}")
    try:
        return date.fromisoformat(v)
    except ValueError:
        raise TariffError("bad_date", f"date must be YYYY-MM-DD, got {v!r}") from None


__all__ = ["Oracle", "PriceRecommendation", "SideValue", "NOIA_UNITS", "to_noia_units_per_wh",
           "UNKNOWN_TARIFF", "NO_TABLE_IN_FORCE"]
