"""A KEPCO residential bill, computed step by step as KEPCO publishes it (docs/oracle.md).

    기본요금 (base, by the tier the month's kWh reach)
  + 전력량요금 (energy, per tier block; 슈퍼유저 block in Dec-Feb / Jul-Aug above 1,000 kWh)
  + 기후환경요금 (climate, kWh x won/kWh)
  ± 연료비조정요금 (fuel adjustment, kWh x won/kWh, may be negative)
  = 전기요금계 (electricity charge; never below the table's minimum charge)
  + 부가가치세 (VAT, 10%, rounded half up to the won)
  + 전력산업기반기금 (fund, 3.7 / 3.2 / 2.7% by date, truncated below 10 won)
  = 청구금액 (total, truncated below 10 won)

Every line is truncated below 1 won as KEPCO does (the modes are data:
``kepco_surcharges.toml [rounding]``). All arithmetic is exact (``Fraction`` over the
tables' decimals); no float touches a won.

When a table changes inside the billing period (2023-05-16, or a reading period
across a price change), the base, energy and climate lines are prorated by days as in
KEPCO's published example: each block's kWh x each table's price x its days / the
period's days, summed, then truncated. The fuel adjustment, VAT and fund rates are
those in force on the period's first day (a caveat says so when they change inside
the period). A period must lie in one season (tier bounds).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

from gateway.market.tariffs import Rate, ResidentialTable, TariffBook, TariffError, default_book, round_won

KST = timezone(timedelta(hours=9))
_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class BillLine:
    """One line of the bill: what it is, the won amount, and the arithmetic behind it."""

    key: str
    label: str
    won: int
    calc: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "won": self.won, "calc": self.calc}


@dataclass(frozen=True, slots=True)
class Bill:
    tariff: str
    start: date               # first day of the period (KST)
    end: date                 # last day, inclusive
    kwh: int
    season: str               # "summer" (하계 tiers) | "other"
    base_won: int
    energy_won: int
    climate_won: int
    fuel_won: int
    minimum_applied: bool
    electricity_won: int      # 전기요금계
    vat_won: int
    fund_won: int
    total_won: int            # 청구금액
    lines: tuple[BillLine, ...]
    tables: tuple[str, ...]   # which periods of the data were used
    caveats: tuple[str, ...]  # inputs the sources did not confirm

    def to_json(self) -> dict[str, Any]:
        return {"tariff": self.tariff, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "kwh": self.kwh, "season": self.season, "base_won": self.base_won,
                "energy_won": self.energy_won, "climate_won": self.climate_won, "fuel_won": self.fuel_won,
                "minimum_applied": self.minimum_applied, "electricity_won": self.electricity_won,
                "vat_won": self.vat_won, "fund_won": self.fund_won, "total_won": self.total_won,
                "lines": [ln.to_json() for ln in self.lines], "tables": list(self.tables),
                "caveats": list(self.caveats)}

    def render(self) -> str:
        out = [f"{self.tariff} {self.start}..{self.end}: {self.kwh} kWh ({self.season} season)"]
        out += [f"  {ln.label:<34} {ln.won:>12,} won   {ln.calc}" for ln in self.lines]
        out += [f"  caveat: {c}" for c in self.caveats]
        return "\n".join(out)


def parse_month(month: str | tuple[int, int]) -> tuple[int, int]:
    """``"YYYY-MM"`` or ``(year, month)`` -> ``(year, month)``."""
    if isinstance(month, tuple):
        y, m = month
    else:
        mt = _MONTH_RE.match(str(month))
        if not mt:
            raise TariffError("bad_month", f"month must be YYYY-MM, got {month!r}")
        y, m = int(mt.group(1)), int(mt.group(2))
    if not (1 <= m <= 12 and 1 <= y <= 9999):
        raise TariffError("bad_month", f"no such month {month!r}")
    return y, m


def month_period(month: str | tuple[int, int]) -> tuple[date, date]:
    y, m = parse_month(month)
    return date(y, m, 1), date(y, m, calendar.monthrange(y, m)[1])


def kst_date(unix_s: int) -> date:
    """The KST calendar day of a unix time (the bill's and the tariffs' calendar)."""
    return datetime.fromtimestamp(unix_s, KST).date()


def kwh_from_wh(wh: int) -> int:
    """Whole kWh billed for ``wh`` Wh: KEPCO bills the meter register's whole kWh, so the
    fraction is dropped (on a real meter it carries into the next month)."""
    if wh < 0:
        raise TariffError("negative_energy", f"energy cannot be negative ({wh} Wh)")
    return wh // 1000


def _days(start: date, end: date) -> Iterable[date]:
    d = start
    while d <= end:
        yield d
        d += timedelta(days=1)


def _fmt(x: Fraction | Decimal | int) -> str:
    """A number for the arithmetic text: exact decimals as they are, other fractions to 4 places."""
    if isinstance(x, Fraction):
        if x.denominator == 1:
            return f"{x.numerator:,}"
        return f"{float(x):,.4f}"  # display only; every amount is computed exactly
    if isinstance(x, Decimal):
        return f"{x:,}"
    return f"{x:,}"


def bill(kwh: int, tariff: str, month: str | tuple[int, int] | None = None, *,
         period: tuple[date, date] | None = None, book: TariffBook | None = None) -> Bill:
    """The bill for ``kwh`` (whole kWh) on ``tariff`` for a calendar ``month`` ("YYYY-MM", KST)
    or an explicit reading ``period`` (first and last day, inclusive)."""
    book = book or default_book()
    if isinstance(kwh, bool) or not isinstance(kwh, int):
        raise TariffError("bad_kwh", f"kWh must be a whole number, got {kwh!r}")
    if kwh < 0:
        raise TariffError("negative_energy", f"kWh cannot be negative ({kwh})")
    if (month is None) == (period is None):
        raise TariffError("bad_period", "give either a month or a period")
    start, end = month_period(month) if month is not None else period  # type: ignore[misc]
    if end < start:
        raise TariffError("bad_period", f"period ends ({end}) before it starts ({start})")
    rnd = book.rounding
    caveats: list[str] = []

    # Which table and climate rate on each day; the season must not change.
    segs: dict[tuple[ResidentialTable, Rate], int] = {}
    shape = None
    for d in _days(start, end):
        t = book.table(tariff, d)
        s = (t.bounds(d.month), t.super_user_applies(d.month), t.is_summer(d.month))
        if shape is None:
            shape = s
        elif s != shape:
            raise TariffError("period_spans_seasons",
                              f"{start}..{end} spans months with different tier bounds; bill each part")
        c = book.rate("climate", d)
        segs[(t, c)] = segs.get((t, c), 0) + 1
    total_days = (end - start).days + 1
    first = book.table(tariff, start)
    month0 = start.month
    season = "summer" if first.is_summer(month0) else "other"
    weights = [(t, c.value, Fraction(n, total_days)) for (t, c), n in segs.items()]
    prorated = len(weights) > 1
    tables = sorted({t for t, _, _ in weights}, key=lambda t: t.effective)
    for t in tables:
        su = t.super_user_applies(month0) and kwh > (t.super_user_above_kwh or kwh)
        caveats += book.caveats_table(t, end, ("energy", "base") + (("super_user_energy",) if su else ()))
    lines: list[BillLine] = []

    def share(days_w: Fraction) -> str:
        return "" if not prorated else f" x {days_w.numerator * total_days // days_w.denominator}/{total_days} d"

    # 기본요금: the tier the month's kWh reach.
    tier = first.base_tier(kwh, month0)
    base_exact = sum((Fraction(t.base[tier]) * w for t, _, w in weights), Fraction(0))
    base_won = round_won(base_exact, rnd["base"])
    lines.append(BillLine("base", f"base charge (tier {tier + 1})", base_won,
                          " + ".join(f"{t.base[tier]:,}{share(w)}" for t, _, w in weights)))

    # 전력량요금: one line per block reached.
    energy_won = 0
    for i, (label, lo, hi, _) in enumerate(first.blocks(month0)):
        k = max(0, min(kwh, hi if hi is not None else kwh) - lo)
        if k == 0:
            continue
        exact = sum((Fraction(k) * Fraction(t.blocks(month0)[i][3]) * w for t, _, w in weights), Fraction(0))
        won = round_won(exact, rnd["energy"])
        energy_won += won
        rng = f"{lo + 1}-{hi}" if hi is not None else f"{lo + 1}-"
        calc = " + ".join(f"{k} x {t.blocks(month0)[i][3]}{share(w)}" for t, _, w in weights)
        lines.append(BillLine(f"energy:{label}", f"energy {label} ({rng} kWh)", won,
                              f"{calc} = {_fmt(exact)}"))

    # 기후환경요금.
    climate_exact = sum((Fraction(kwh) * Fraction(c) * w for _, c, w in weights), Fraction(0))
    climate_won = round_won(climate_exact, rnd["climate"])
    lines.append(BillLine("climate", "climate & environment charge", climate_won,
                          " + ".join(f"{kwh} x {c}{share(w)}" for _, c, w in weights)
                          + f" = {_fmt(climate_exact)}"))
    for r in dict.fromkeys(c for _, c in segs):
        caveats += book.caveats_rate(r, end)

    # 연료비조정요금, VAT and fund: rates in force on the first day.
    rates = {k: book.rate(k, start) for k in ("fuel_adjustment", "vat", "fund")}
    for kind, r in rates.items():
        caveats += book.caveats_rate(r, end)
        if r.until is not None and r.until <= end:
            caveats.append(f"{kind} changes on {r.until}, inside the period: the rate of {start} was applied")
    fuel = rates["fuel_adjustment"].value
    fuel_won = round_won(Fraction(kwh) * Fraction(fuel), rnd["fuel_adjustment"])
    lines.append(BillLine("fuel_adjustment", "fuel cost adjustment", fuel_won, f"{kwh} x {fuel}"))

    electricity = base_won + energy_won + climate_won + fuel_won
    minimum = first.minimum_charge_won
    minimum_applied = minimum is not None and electricity < minimum
    if minimum_applied:
        assert minimum is not None
        lines.append(BillLine("minimum", "minimum charge applied", minimum,
                              f"{electricity:,} < minimum {minimum:,}"))
        electricity = minimum
        caveats += book.caveats_table(first, end, ("minimum_charge_won",))
    lines.append(BillLine("electricity", "electricity charge (전기요금계)", electricity,
                          f"{base_won:,} + {energy_won:,} + {climate_won:,} + {fuel_won:,}"
                          + (f" -> minimum {minimum:,}" if minimum_applied else "")))
    vat_rate, fund_rate = rates["vat"].value, rates["fund"].value
    vat_exact = Fraction(electricity) * Fraction(vat_rate)
    vat_won = round_won(vat_exact, rnd["vat"])
    lines.append(BillLine("vat", "VAT", vat_won, f"{electricity:,} x {vat_rate} = {_fmt(vat_exact)} ({rnd['vat']})"))
    fund_exact = Fraction(electricity) * Fraction(fund_rate)
    fund_won = round_won(fund_exact, rnd["fund"])
    lines.append(BillLine("fund", "power industry fund", fund_won,
                          f"{electricity:,} x {fund_rate} = {_fmt(fund_exact)} ({rnd['fund']})"))
    total_exact = electricity + vat_won + fund_won
    total_won = round_won(total_exact, rnd["total"])
    lines.append(BillLine("total", "total (청구금액)", total_won,
                          f"{electricity:,} + {vat_won:,} + {fund_won:,} = {total_exact:,} ({rnd['total']})"))
    return Bill(tariff=tariff, start=start, end=end, kwh=kwh, season=season, base_won=base_won,
                energy_won=energy_won, climate_won=climate_won, fuel_won=fuel_won,
                minimum_applied=minimum_applied, electricity_won=electricity, vat_won=vat_won,
                fund_won=fund_won, total_won=total_won, lines=tuple(lines),
                tables=tuple(f"{t.name} from {t.effective}" for t in tables),
                caveats=tuple(dict.fromkeys(caveats)))


def month_import_wh(intervals: Iterable[Any], month: str | tuple[int, int]) -> int:
    """Sum of ``import_wh`` over the intervals (``IntervalEnergy`` rows) starting in the KST month."""
    start, end = month_period(month)
    return sum(int(iv.import_wh) for iv in intervals if start <= kst_date(int(iv.start)) <= end)


def bill_from_intervals(intervals: Iterable[Any], tariff: str, month: str | tuple[int, int], *,
                        book: TariffBook | None = None) -> Bill:
    """The month's bill from a household's interval rows (``IntervalEngine.household_intervals``):
    imports of the intervals starting in the KST month, whole kWh (fraction dropped)."""
    return bill(kwh_from_wh(month_import_wh(intervals, month)), tariff, month, book=book)


@dataclass(frozen=True, slots=True)
class SettledMonth:
    """A household's month, with or without P2P: the KEPCO bill, the surplus credit, the P2P money."""

    billed_kwh: int
    surplus_kwh: int
    bill: Bill
    surplus_credit_won: Decimal
    p2p_paid_won: Decimal
    p2p_received_won: Decimal

    @property
    def net_cost_won(self) -> Decimal:
        return Decimal(self.bill.total_won) - self.surplus_credit_won + self.p2p_paid_won - self.p2p_received_won

    def to_json(self) -> dict[str, Any]:
        return {"billed_kwh": self.billed_kwh, "surplus_kwh": self.surplus_kwh, "bill_total_won": self.bill.total_won,
                "surplus_credit_won": str(self.surplus_credit_won), "p2p_paid_won": str(self.p2p_paid_won),
                "p2p_received_won": str(self.p2p_received_won), "net_cost_won": str(self.net_cost_won),
                "bill": self.bill.to_json()}


@dataclass(frozen=True, slots=True)
class P2PComparison:
    without_p2p: SettledMonth
    with_p2p: SettledMonth

    @property
    def savings_won(self) -> Decimal:
        return self.without_p2p.net_cost_won - self.with_p2p.net_cost_won

    def to_json(self) -> dict[str, Any]:
        return {"without_p2p": self.without_p2p.to_json(), "with_p2p": self.with_p2p.to_json(),
                "savings_won": str(self.savings_won)}


def _settle(tariff: str, month: str | tuple[int, int], grid_import_wh: int, grid_export_wh: int,
            paid: Decimal, received: Decimal, book: TariffBook) -> SettledMonth:
    net = grid_import_wh - grid_export_wh
    billed, surplus = kwh_from_wh(max(0, net)), kwh_from_wh(max(0, -net))
    b = bill(billed, tariff, month, book=book)
    price = book.rate("surplus", month_period(month)[0]).value
    return SettledMonth(billed, surplus, b, Decimal(surplus) * price, paid, received)


def p2p_comparison(tariff: str, month: str | tuple[int, int], *, import_wh: int, export_wh: int,
                   bought_wh: int = 0, sold_wh: int = 0, paid_won: Decimal | int = 0,
                   received_won: Decimal | int = 0, book: TariffBook | None = None) -> P2PComparison:
    """A household's month with and without P2P trading, under net metering (상계거래).

    Without P2P, the month's metered import minus export is billed (whole kWh) and a
    surplus is credited at the surplus price (net_metering.toml). With P2P, energy bought
    from neighbours is not billed by KEPCO (it is paid in NOIA: ``paid_won``), and energy
    sold to neighbours does not offset the seller's import (it earned ``received_won``).
    """
    book = book or default_book()
    for name, v in (("import_wh", import_wh), ("export_wh", export_wh), ("bought_wh", bought_wh),
                    ("sold_wh", sold_wh)):
        if v < 0:
            raise TariffError("negative_energy", f"{name} cannot be negative ({v})")
    if bought_wh > import_wh:
        raise TariffError("bought_exceeds_import", f"bought {bought_wh} Wh > metered import {import_wh} Wh")
    if sold_wh > export_wh:
        raise TariffError("sold_exceeds_export", f"sold {sold_wh} Wh > metered export {export_wh} Wh")
    zero = Decimal(0)
    return P2PComparison(
        without_p2p=_settle(tariff, month, import_wh, export_wh, zero, zero, book),
        with_p2p=_settle(tariff, month, import_wh - bought_wh, export_wh - sold_wh,
                         Decimal(paid_won), Decimal(received_won), book))
