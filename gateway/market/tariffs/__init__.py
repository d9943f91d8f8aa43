"""KEPCO tariff tables as data, with effective dates (docs/oracle.md).

The figures live in the TOML files next to this module; this module only reads and
checks them. Decimals are read exactly (``tomllib`` with ``parse_float=Decimal``).

- ``residential_low.toml`` / ``residential_high.toml``: one complete table per period
  (tier prices, base charges, tier bounds, super-user rule, minimum charge).
- ``kepco_surcharges.toml``: histories of the climate charge, the fuel cost adjustment,
  VAT and the infrastructure fund, and the rounding modes.
- ``net_metering.toml``: the cash value of a surplus kWh (the seller's floor when their
  month is already in surplus).

Every entry carries ``source`` and ``verified`` (and ``unverified`` fields,
``confirmed_until``); :meth:`TariffBook.caveats` lists what a computation relied on
that the sources did not confirm.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent
TABLE_FILES = {"residential-low": "residential_low.toml", "residential-high": "residential_high.toml"}
ROUNDING_MODES = ("truncate_1", "truncate_10", "half_up_1")
ROUNDED_AMOUNTS = ("base", "energy", "climate", "fuel_adjustment", "vat", "fund", "total")


class TariffError(Exception):
    """A tariff question that the data cannot answer; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResidentialTable:
    """One residential tariff (low or high voltage) in force from ``effective``."""

    name: str
    title: str
    effective: date
    until: date | None                 # the next period's effective date (exclusive), None = open
    energy: tuple[Decimal, Decimal, Decimal]     # won/kWh, tiers 1..3
    base: tuple[int, int, int]                   # won/month by tier reached
    bounds_other: tuple[int, int]                # upper kWh of tiers 1 and 2 outside summer
    bounds_summer: tuple[int, int]
    summer_months: frozenset[int]
    super_user_months: frozenset[int]
    super_user_above_kwh: int | None
    super_user_energy: Decimal | None
    minimum_charge_won: int | None
    verified: bool
    unverified: tuple[str, ...]
    confirmed_until: date | None
    source: str
    notes: str

    def is_summer(self, month: int) -> bool:
        return month in self.summer_months

    def bounds(self, month: int) -> tuple[int, int]:
        return self.bounds_summer if self.is_summer(month) else self.bounds_other

    def super_user_applies(self, month: int) -> bool:
        return self.super_user_above_kwh is not None and month in self.super_user_months

    def blocks(self, month: int) -> list[tuple[str, int, int | None, Decimal]]:
        """The month's price blocks: (label, from kWh, to kWh or None, won/kWh), in order."""
        b1, b2 = self.bounds(month)
        out: list[tuple[str, int, int | None, Decimal]] = [
            ("tier 1", 0, b1, self.energy[0]), ("tier 2", b1, b2, self.energy[1])]
        if self.super_user_applies(month):
            assert self.super_user_above_kwh is not None and self.super_user_energy is not None
            out += [("tier 3", b2, self.super_user_above_kwh, self.energy[2]),
                    ("super-user", self.super_user_above_kwh, None, self.super_user_energy)]
        else:
            out.append(("tier 3", b2, None, self.energy[2]))
        return out

    def base_tier(self, kwh: Decimal | int, month: int) -> int:
        """0, 1 or 2: the base-charge tier the month's kWh reach (201 kWh is tier 2)."""
        b1, b2 = self.bounds(month)
        return 0 if kwh <= b1 else 1 if kwh <= b2 else 2

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "effective": self.effective.isoformat(),
                "until": self.until.isoformat() if self.until else None,
                "energy_won_per_kwh": [str(e) for e in self.energy], "base_won": list(self.base),
                "bounds_other_kwh": list(self.bounds_other), "bounds_summer_kwh": list(self.bounds_summer),
                "summer_months": sorted(self.summer_months), "super_user_months": sorted(self.super_user_months),
                "super_user_above_kwh": self.super_user_above_kwh,
                "super_user_energy_won_per_kwh": None if self.super_user_energy is None else str(self.super_user_energy),
                "minimum_charge_won": self.minimum_charge_won, "verified": self.verified,
                "unverified": list(self.unverified),
                "confirmed_until": self.confirmed_until.isoformat() if self.confirmed_until else None,
                "source": self.source, "notes": self.notes}


@dataclass(frozen=True, slots=True)
class Rate:
    """One entry of a surcharge history: won/kWh or a fraction, in force from ``effective``."""

    kind: str                   # climate | fuel_adjustment | vat | fund | surplus
    effective: date
    until: date | None
    value: Decimal
    verified: bool
    confirmed_until: date | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "effective": self.effective.isoformat(),
                "until": self.until.isoformat() if self.until else None, "value": str(self.value),
                "verified": self.verified,
                "confirmed_until": self.confirmed_until.isoformat() if self.confirmed_until else None,
                "source": self.source}


def round_won(amount: Decimal | Fraction | int, mode: str) -> int:
    """Apply one of KEPCO's rounding modes to an exact won amount.

    ``truncate_1`` drops the fraction (toward zero), ``truncate_10`` drops below 10 won
    (toward zero), ``half_up_1`` rounds to the won with halves away from zero (4사5입).
    """
    x = Fraction(amount)
    sign, mag = (-1 if x < 0 else 1), abs(x)
    if mode == "truncate_1":
        return sign * math.floor(mag)
    if mode == "truncate_10":
        return sign * (math.floor(mag) // 10) * 10
    if mode == "half_up_1":
        return sign * math.floor(mag + Fraction(1, 2))
    raise TariffError("bad_rounding", f"unknown rounding mode {mode!r}")


class TariffBook:
    """Every table and surcharge history, looked up by date."""

    def __init__(self, tables: Mapping[str, list[ResidentialTable]], rates: Mapping[str, list[Rate]],
                 rounding: Mapping[str, str], rounding_source: str) -> None:
        self.tables = dict(tables)
        self.rates = dict(rates)
        self.rounding = dict(rounding)
        self.rounding_source = rounding_source

    @property
    def names(self) -> list[str]:
        return sorted(self.tables)

    def periods(self, name: str) -> list[ResidentialTable]:
        if name not in self.tables:
            raise TariffError("unknown_tariff", f"unknown tariff {name!r} (known: {', '.join(self.names)})")
        return self.tables[name]

    def table(self, name: str, day: date) -> ResidentialTable:
        """The table of ``name`` in force on ``day``."""
        return _in_force(self.periods(name), day, f"tariff {name!r}")

    def rate(self, kind: str, day: date) -> Rate:
        if kind not in self.rates:
            raise TariffError("unknown_rate", f"unknown surcharge {kind!r}")
        return _in_force(self.rates[kind], day, kind)

    def caveats_table(self, t: ResidentialTable, day: date, used: tuple[str, ...]) -> list[str]:
        out = []
        if not t.verified:
            out.append(f"{t.name} from {t.effective}: figures not verified ({t.source.split('.')[0]})")
        for f in used:
            if t.verified and f in t.unverified:
                out.append(f"{t.name} from {t.effective}: {f} not verified")
        if t.confirmed_until is not None and day > t.confirmed_until:
            out.append(f"{t.name}: sources confirm the table only until {t.confirmed_until}")
        return out

    @staticmethod
    def caveats_rate(r: Rate, day: date) -> list[str]:
        out = []
        if not r.verified:
            out.append(f"{r.kind} {r.value} from {r.effective}: not verified")
        if r.confirmed_until is not None and day > r.confirmed_until:
            out.append(f"{r.kind} {r.value}: sources confirm it only until {r.confirmed_until}")
        return out


def _in_force(history: list[Any], day: date, what: str) -> Any:
    found = None
    for entry in history:
        if entry.effective <= day:
            found = entry
    if found is None:
        raise TariffError("no_table_in_force", f"no {what} in force on {day} (data starts {history[0].effective})")
    return found


def _need(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise TariffError("bad_data", f"{where}: missing {key!r}")
    return d[key]


def _date(v: Any, where: str) -> date:
    if not isinstance(v, date):
        raise TariffError("bad_data", f"{where}: expected a TOML date, got {v!r}")
    return v


def _dec(v: Any, where: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
        raise TariffError("bad_data", f"{where}: expected a number, got {v!r}")
    return Decimal(v)


def _check_order(entries: list[Any], where: str) -> None:
    for a, b in zip(entries, entries[1:]):
        if not a.effective < b.effective:
            raise TariffError("bad_data", f"{where}: effective dates must increase ({a.effective}, {b.effective})")


def _load_table(path: Path) -> list[ResidentialTable]:
    d = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    name, title = _need(d, "name", path.name), _need(d, "title", path.name)
    summer = frozenset(int(m) for m in _need(d, "summer_months", path.name))
    su_months = frozenset(int(m) for m in d.get("super_user_months", []))
    raw = _need(d, "period", path.name)
    out: list[ResidentialTable] = []
    for i, p in enumerate(raw):
        where = f"{path.name} period {i + 1}"
        energy = tuple(_dec(x, where) for x in _need(p, "energy", where))
        base = tuple(int(x) for x in _need(p, "base", where))
        bo = tuple(int(x) for x in _need(p, "bounds_other", where))
        bs = tuple(int(x) for x in _need(p, "bounds_summer", where))
        if len(energy) != 3 or len(base) != 3 or len(bo) != 2 or len(bs) != 2:
            raise TariffError("bad_data", f"{where}: 3 tier prices, 3 base charges and 2 bounds expected")
        if not (0 < bo[0] < bo[1] and 0 < bs[0] < bs[1]) or list(energy) != sorted(energy) or list(base) != sorted(base):
            raise TariffError("bad_data", f"{where}: tiers must increase")
        su_above = p.get("super_user_above_kwh")
        su_energy = p.get("super_user_energy")
        if (su_above is None) != (su_energy is None):
            raise TariffError("bad_data", f"{where}: super_user_above_kwh and super_user_energy go together")
        if su_above is not None and not int(su_above) > max(bo[1], bs[1]):
            raise TariffError("bad_data", f"{where}: the super-user threshold must lie above tier 2")
        out.append(ResidentialTable(
            name=name, title=title, effective=_date(_need(p, "effective", where), where), until=None,
            energy=(energy[0], energy[1], energy[2]), base=(base[0], base[1], base[2]),
            bounds_other=(bo[0], bo[1]), bounds_summer=(bs[0], bs[1]), summer_months=summer,
            super_user_months=su_months, super_user_above_kwh=None if su_above is None else int(su_above),
            super_user_energy=None if su_energy is None else _dec(su_energy, where),
            minimum_charge_won=None if p.get("minimum_charge_won") is None else int(p["minimum_charge_won"]),
            verified=bool(_need(p, "verified", where)), unverified=tuple(p.get("unverified", ())),
            confirmed_until=None if p.get("confirmed_until") is None else _date(p["confirmed_until"], where),
            source=str(_need(p, "source", where)), notes=str(p.get("notes", ""))))
    _check_order(out, path.name)
    return _with_until(out)


def _with_until(entries: list[Any]) -> list[Any]:
    import dataclasses
    return [dataclasses.replace(e, until=entries[i + 1].effective if i + 1 < len(entries) else None)
            for i, e in enumerate(entries)]


def _load_rates(d: Mapping[str, Any], kind: str, value_key: str, where: str) -> list[Rate]:
    out = []
    for i, e in enumerate(_need(d, kind, where)):
        w = f"{where} {kind} {i + 1}"
        out.append(Rate(kind=kind, effective=_date(_need(e, "effective", w), w), until=None,
                        value=_dec(_need(e, value_key, w), w), verified=bool(_need(e, "verified", w)),
                        confirmed_until=None if e.get("confirmed_until") is None else _date(e["confirmed_until"], w),
                        source=str(_need(e, "source", w))))
    _check_order(out, f"{where} {kind}")
    return _with_until(out)


def load_book(directory: Path | str | None = None) -> TariffBook:
    """Read and check every tariff file in ``directory`` (default: the shipped data)."""
    base = Path(directory) if directory is not None else DATA_DIR
    tables = {name: _load_table(base / fname) for name, fname in TABLE_FILES.items()}
    for name, periods in tables.items():
        if periods[0].name != name:
            raise TariffError("bad_data", f"{TABLE_FILES[name]}: name {periods[0].name!r} != {name!r}")
    s = tomllib.loads((base / "kepco_surcharges.toml").read_text(encoding="utf-8"), parse_float=Decimal)
    n = tomllib.loads((base / "net_metering.toml").read_text(encoding="utf-8"), parse_float=Decimal)
    rates = {"climate": _load_rates(s, "climate", "won_per_kwh", "kepco_surcharges.toml"),
             "fuel_adjustment": _load_rates(s, "fuel_adjustment", "won_per_kwh", "kepco_surcharges.toml"),
             "vat": _load_rates(s, "vat", "rate", "kepco_surcharges.toml"),
             "fund": _load_rates(s, "fund", "rate", "kepco_surcharges.toml"),
             "surplus": _load_rates(n, "surplus", "won_per_kwh", "net_metering.toml")}
    r = _need(s, "rounding", "kepco_surcharges.toml")
    rounding = {k: str(_need(r, k, "kepco_surcharges.toml [rounding]")) for k in ROUNDED_AMOUNTS}
    for k, mode in rounding.items():
        if mode not in ROUNDING_MODES:
            raise TariffError("bad_data", f"[rounding] {k}: unknown mode {mode!r}")
    return TariffBook(tables, rates, rounding, str(r.get("source", "")))


@lru_cache(maxsize=1)
def default_book() -> TariffBook:
    """The shipped tables (read once)."""
    return load_book()
