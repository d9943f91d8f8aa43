"""Tariff tables as data: the shipped figures, effective dates, sources, rounding modes, bad data."""

from __future__ import annotations

import shutil
from datetime import date
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from gateway.market.tariffs import DATA_DIR, TariffError, default_book, load_book, round_won

D = Decimal


def test_current_low_voltage_table_is_the_published_one() -> None:
    t = default_book().table("residential-low", date(2026, 4, 1))
    assert t.energy == (D("120.0"), D("214.6"), D("307.3"))
    assert t.base == (910, 1600, 7300)
    assert t.bounds_other == (200, 400) and t.bounds_summer == (300, 450)
    assert t.summer_months == {7, 8}
    assert t.super_user_above_kwh == 1000 and t.super_user_energy == D("736.2")
    assert t.effective == date(2023, 5, 16)


def test_current_high_voltage_table_is_the_published_one() -> None:
    t = default_book().table("residential-high", date(2026, 4, 1))
    assert t.energy == (D("105.0"), D("174.0"), D("242.3"))
    assert t.base == (730, 1260, 6060)
    assert t.super_user_energy == D("601.3")


def test_decimals_are_exact_not_binary_floats() -> None:
    t = default_book().table("residential-low", date(2026, 4, 1))
    assert all(isinstance(e, Decimal) for e in t.energy)
    assert str(t.energy[1]) == "214.6"


def test_effective_dates_pick_the_table_in_force() -> None:
    b = default_book()
    assert b.table("residential-low", date(2023, 5, 15)).energy[0] == D("112.0")
    assert b.table("residential-low", date(2023, 5, 16)).energy[0] == D("120.0")
    assert b.table("residential-low", date(2022, 4, 1)).energy[0] == D("93.2")
    assert b.table("residential-low", date(2022, 3, 31)).energy[0] == D("88.3")
    assert b.table("residential-low", date(2023, 5, 15)).until == date(2023, 5, 16)
    assert b.table("residential-low", date(2026, 4, 1)).until is None


def test_fund_rate_by_date_37_32_27_percent() -> None:
    b = default_book()
    assert b.rate("fund", date(2024, 6, 30)).value == D("0.037")
    assert b.rate("fund", date(2024, 7, 1)).value == D("0.032")
    assert b.rate("fund", date(2025, 6, 30)).value == D("0.032")
    assert b.rate("fund", date(2025, 7, 1)).value == D("0.027")


def test_climate_and_fuel_histories() -> None:
    b = default_book()
    assert b.rate("climate", date(2021, 6, 1)).value == D("5.3")
    assert b.rate("climate", date(2022, 4, 1)).value == D("7.3")
    assert b.rate("climate", date(2023, 1, 1)).value == D("9.0")
    assert b.rate("fuel_adjustment", date(2021, 5, 1)).value == D("-3.0")  # can be negative
    assert b.rate("fuel_adjustment", date(2022, 7, 1)).value == D("5.0")
    assert b.rate("vat", date(2026, 1, 1)).value == D("0.10")


def test_every_entry_has_a_source_and_a_verified_flag() -> None:
    b = default_book()
    fields = {"energy", "base", "super_user_energy", "minimum_charge_won", "bounds_other", "bounds_summer"}
    for name in b.names:
        for t in b.periods(name):
            assert t.source.strip() and isinstance(t.verified, bool)
            assert set(t.unverified) <= fields
    for kind, hist in b.rates.items():
        for r in hist:
            assert r.source.strip() and isinstance(r.verified, bool), kind
    assert b.rounding_source.strip()


def test_unverified_figures_are_marked() -> None:
    b = default_book()
    assert not b.rate("surplus", date(2026, 1, 1)).verified
    t = b.table("residential-low", date(2026, 1, 1))
    assert "minimum_charge_won" in t.unverified and "super_user_energy" in t.unverified
    assert t.confirmed_until == date(2026, 3, 31)
    assert b.caveats_table(t, date(2026, 6, 1), ("energy",)) == [
        "residential-low: sources confirm the table only until 2026-03-31"]


def test_no_table_before_the_data_and_unknown_names() -> None:
    b = default_book()
    with pytest.raises(TariffError) as e:
        b.table("residential-low", date(2020, 12, 31))
    assert e.value.reason == "no_table_in_force"
    with pytest.raises(TariffError) as e:
        b.table("industrial", date(2026, 1, 1))
    assert e.value.reason == "unknown_tariff"


def test_super_user_block_only_in_its_months() -> None:
    t = default_book().table("residential-low", date(2026, 1, 1))
    assert [blk[0] for blk in t.blocks(1)] == ["tier 1", "tier 2", "tier 3", "super-user"]
    assert [blk[0] for blk in t.blocks(4)] == ["tier 1", "tier 2", "tier 3"]
    assert t.blocks(8)[:2] == [("tier 1", 0, 300, D("120.0")), ("tier 2", 300, 450, D("214.6"))]
    assert t.base_tier(200, 4) == 0 and t.base_tier(201, 4) == 1 and t.base_tier(401, 4) == 2
    assert t.base_tier(300, 8) == 0 and t.base_tier(451, 8) == 2


def test_rounding_modes_as_kepco_applies_them() -> None:
    assert round_won(D("8027.5"), "half_up_1") == 8028        # VAT: 4사5입
    assert round_won(D("8027.49"), "half_up_1") == 8027
    assert round_won(D("2167.425"), "truncate_10") == 2160    # fund: 10원 미만 절사
    assert round_won(D("28373"), "truncate_10") == 28370      # total
    assert round_won(Fraction(557260, 31), "truncate_1") == 17976
    assert round_won(D("-1500.7"), "truncate_1") == -1500     # toward zero
    assert round_won(D("-0.5"), "half_up_1") == -1
    with pytest.raises(TariffError):
        round_won(D(1), "bankers")


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "tariffs"
    d.mkdir()
    for f in DATA_DIR.glob("*.toml"):
        shutil.copy(f, d / f.name)
    return d


def test_bad_data_is_refused(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    assert load_book(d).names == ["residential-high", "residential-low"]
    p = d / "residential_low.toml"
    p.write_text(p.read_text().replace("effective = 2022-10-01", "effective = 2022-03-01"))
    with pytest.raises(TariffError) as e:
        load_book(d)
    assert e.value.reason == "bad_data" and "increase" in str(e.value)


def test_bad_rounding_mode_is_refused(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    p = d / "kepco_surcharges.toml"
    p.write_text(p.read_text().replace('vat = "half_up_1"', 'vat = "nearest"'))
    with pytest.raises(TariffError) as e:
        load_book(d)
    assert e.value.reason == "bad_data"


def test_decreasing_tier_prices_are_refused(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    p = d / "residential_high.toml"
    p.write_text(p.read_text().replace("energy = [105.0, 174.0, 242.3]", "energy = [105.0, 274.0, 242.3]"))
    with pytest.raises(TariffError):
        load_book(d)
