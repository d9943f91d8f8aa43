"""Number formats of the pages (Jinja filters), defined once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

NOIA_UNITS = 10 ** 18


def kwh(wh: int | None) -> str:
    if wh is None:
        return "—"
    return f"{wh:,} Wh" if abs(wh) < 10_000 else f"{Decimal(wh) / 1000:,.1f} kWh"


def won(v: Any) -> str:
    return "—" if v is None else f"₩{Decimal(v):,.0f}"


def noia(v: Any) -> str:
    return "—" if v is None else f"{Decimal(v):,.2f} NOIA"


def units_won_kwh(units_per_wh: int, won_per_noia: int = 1) -> str:
    """NOIA units per Wh (the market's unit) as won per kWh (the page's)."""
    return f"{Decimal(units_per_wh) * 1000 * won_per_noia / NOIA_UNITS:,.2f}"


def price(v: Any) -> str:
    """A won/kWh price without exponent notation (2 decimals unless it is smaller than that)."""
    if v is None:
        return "—"
    d = Decimal(v)
    return f"{d:,.2f}" if d == 0 or abs(d) >= Decimal("0.01") else f"{d:f}"


def noia_units(units: int | None) -> str:
    """NOIA smallest units (10**-18 NOIA) as NOIA."""
    return "—" if units is None else f"{Decimal(units) / NOIA_UNITS:,.2f}"


FILTERS = {"kwh": kwh, "won": won, "noia": noia, "units_won_kwh": units_won_kwh, "noia_units": noia_units,
           "price": price}
