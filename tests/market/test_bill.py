"""KEPCO bills: worked examples computed by hand from KEPCO's published method, and properties.

Each expected figure below is the hand calculation in the comment, not the code's output.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.aggregator.intervals import IntervalEnergy
from gateway.market.bill import bill, bill_from_intervals, kwh_from_wh, month_period, p2p_comparison
from gateway.market.tariffs import TariffError

LOW, HIGH = "residential-low", "residential-high"


def lines(b: object) -> dict[str, int]:
    return {ln.key: ln.won for ln in b.lines}  # type: ignore[attr-defined]


def test_350_kwh_april_low_voltage() -> None:
    # base 1,600 (201-400 kWh); energy 200 x 120.0 = 24,000 + 150 x 214.6 = 32,190;
    # climate 350 x 9.0 = 3,150; fuel 350 x 5.0 = 1,750; 전기요금계 62,690;
    # VAT 6,269; fund 62,690 x 2.7% = 1,692.63 -> 1,690; total 70,649 -> 70,640.
    b = bill(350, LOW, "2026-04")
    assert (b.base_won, b.energy_won, b.climate_won, b.fuel_won) == (1600, 56190, 3150, 1750)
    assert lines(b)["energy:tier 1"] == 24000 and lines(b)["energy:tier 2"] == 32190
    assert (b.electricity_won, b.vat_won, b.fund_won, b.total_won) == (62690, 6269, 1690, 70640)
    assert b.season == "other"


def test_350_kwh_august_low_voltage_summer_tiers() -> None:
    # summer tiers 0-300 / 301-450: base 1,600; energy 300 x 120.0 = 36,000 + 50 x 214.6 = 10,730;
    # climate 3,150; fuel 1,750; 전기요금계 53,230; VAT 5,323; fund 1,437.21 -> 1,430;
    # total 59,983 -> 59,980.
    b = bill(350, LOW, "2026-08")
    assert b.season == "summer"
    assert (b.base_won, b.energy_won) == (1600, 46730)
    assert (b.electricity_won, b.vat_won, b.fund_won, b.total_won) == (53230, 5323, 1430, 59980)


def test_450_kwh_high_voltage_vat_rounds_half_up() -> None:
    # base 6,060; energy 21,000 + 34,800 + 50 x 242.3 = 12,115 -> 67,915; climate 4,050; fuel 2,250;
    # 전기요금계 80,275; VAT 8,027.5 -> 8,028 (4사5입); fund 2,167.425 -> 2,160; total 90,463 -> 90,460.
    b = bill(450, HIGH, "2026-04")
    assert (b.base_won, b.energy_won, b.climate_won, b.fuel_won) == (6060, 67915, 4050, 2250)
    assert (b.electricity_won, b.vat_won, b.fund_won, b.total_won) == (80275, 8028, 2160, 90460)


def test_0_kwh_pays_the_minimum_charge() -> None:
    # base 910 < minimum 1,000 -> 1,000; VAT 100; fund 27 -> 20; total 1,120.
    b = bill(0, LOW, "2026-04")
    assert b.minimum_applied and b.electricity_won == 1000
    assert (b.vat_won, b.fund_won, b.total_won) == (100, 20, 1120)
    assert any("minimum_charge_won not verified" in c for c in b.caveats)


def test_super_user_1200_kwh_in_january() -> None:
    # base 7,300; energy 24,000 + 42,920 + 600 x 307.3 = 184,380 + 200 x 736.2 = 147,240 -> 398,540;
    # climate 10,800; fuel 6,000; 전기요금계 422,640; VAT 42,264; fund 11,411.28 -> 11,410;
    # total 476,314 -> 476,310.
    b = bill(1200, LOW, "2026-01")
    assert lines(b)["energy:super-user"] == 147240 and b.energy_won == 398540
    assert (b.electricity_won, b.vat_won, b.fund_won, b.total_won) == (422640, 42264, 11410, 476310)
    assert any("super_user_energy not verified" in c for c in b.caveats)


def test_no_super_user_rate_in_april() -> None:
    # 1,200 kWh in April: 24,000 + 42,920 + 800 x 307.3 = 245,840 -> 312,760.
    assert bill(1200, LOW, "2026-04").energy_won == 312760


def test_fund_rate_follows_the_month() -> None:
    # 350 kWh, 전기요금계 62,690 in each month: VAT 6,269;
    # 2024-04 fund 3.7%: 2,319.53 -> 2,310, total 71,269 -> 71,260;
    # 2024-10 fund 3.2%: 2,006.08 -> 2,000, total 70,959 -> 70,950.
    a, o = bill(350, LOW, "2024-04"), bill(350, LOW, "2024-10")
    assert a.electricity_won == o.electricity_won == 62690
    assert (a.fund_won, a.total_won) == (2310, 71260)
    assert (o.fund_won, o.total_won) == (2000, 70950)


def test_may_2023_prorated_across_the_mid_month_increase() -> None:
    # 15 days at 112.0 / 206.6, 16 days at 120.0 / 214.6 (from 2023-05-16):
    # tier 1: 200 x (112.0 x 15 + 120.0 x 16) / 31 = 720,000 / 31 = 23,225.8 -> 23,225
    # tier 2: 150 x (206.6 x 15 + 214.6 x 16) / 31 = 979,890 / 31 = 31,609.4 -> 31,609
    # climate 3,150; fuel 1,750; base 1,600; 전기요금계 61,334; VAT 6,133.4 -> 6,133;
    # fund 3.7%: 2,269.358 -> 2,260; total 69,727 -> 69,720.
    b = bill(350, LOW, "2023-05")
    assert lines(b)["energy:tier 1"] == 23225 and lines(b)["energy:tier 2"] == 31609
    assert (b.electricity_won, b.vat_won, b.fund_won, b.total_won) == (61334, 6133, 2260, 69720)
    assert b.tables == ("residential-low from 2023-01-01", "residential-low from 2023-05-16")


def test_kepco_published_proration_example_march_april_2022() -> None:
    # KEPCO's example (reading period 2022-03-11..04-10, 350 kWh, +4.9 won/kWh from 04-01):
    # (1단계) 200 x 88.3 x 21/31 + 200 x 93.2 x 10/31 = 17,976
    # (2단계) 150 x 182.9 x 21/31 + 150 x 187.8 x 10/31 = 27,672  -> 전력량요금 45,648
    # 기후환경요금 350 x 5.3 x 21/31 + 350 x 7.3 x 10/31 = 2,080
    b = bill(350, LOW, period=(date(2022, 3, 11), date(2022, 4, 10)))
    assert lines(b)["energy:tier 1"] == 17976 and lines(b)["energy:tier 2"] == 27672
    assert b.energy_won == 45648 and b.climate_won == 2080


def test_fuel_adjustment_negative_in_2021() -> None:
    # 2021-04, 300 kWh: fuel 300 x -3.0 = -900; climate 300 x 5.3 = 1,590;
    # energy 200 x 88.3 = 17,660 + 100 x 182.9 = 18,290 -> 35,950; base 1,600;
    # 전기요금계 1,600 + 35,950 + 1,590 - 900 = 38,240.
    b = bill(300, LOW, "2021-04")
    assert b.fuel_won == -900 and b.climate_won == 1590 and b.energy_won == 35950
    assert b.electricity_won == 38240


def test_breakdown_lines_add_up_and_explain() -> None:
    b = bill(450, HIGH, "2026-04")
    ls = lines(b)
    energy = sum(v for k, v in ls.items() if k.startswith("energy:"))
    assert ls["base"] + energy + ls["climate"] + ls["fuel_adjustment"] == ls["electricity"]
    assert ls["electricity"] + ls["vat"] + ls["fund"] - ls["total"] in range(0, 10)
    calc = {ln.key: ln.calc for ln in b.lines}
    assert calc["energy:tier 3"] == "50 x 242.3 = 12,115"
    assert "8,027.5000 (half_up_1)" in calc["vat"]


def test_bad_inputs() -> None:
    with pytest.raises(TariffError) as e:
        bill(-1, LOW, "2026-04")
    assert e.value.reason == "negative_energy"
    with pytest.raises(TariffError) as e:
        bill(10, LOW, "2026-13")
    assert e.value.reason == "bad_month"
    with pytest.raises(TariffError) as e:
        bill(10.5, LOW, "2026-04")  # type: ignore[arg-type]
    assert e.value.reason == "bad_kwh"
    with pytest.raises(TariffError) as e:
        bill(10, LOW, period=(date(2026, 6, 11), date(2026, 7, 10)))
    assert e.value.reason == "period_spans_seasons"
    with pytest.raises(TariffError) as e:
        bill(10, "industrial", "2026-04")
    assert e.value.reason == "unknown_tariff"


def test_month_from_intervals_in_kst() -> None:
    # Intervals are UTC-aligned; the month is KST: 2026-03-31T15:00Z is 2026-04-01 00:00 KST.
    def iv(iso: str, wh: int) -> IntervalEnergy:
        t = int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp())
        return IntervalEnergy(t, 900, wh, 0, 0, 1, False)
    rows = [iv("2026-03-31T14:45:00", 999_000),    # 23:45 KST on 31 March: not April
            iv("2026-03-31T15:00:00", 200_400),    # April
            iv("2026-04-30T14:45:00", 150_300),    # 23:45 KST on 30 April
            iv("2026-04-30T15:00:00", 777_000)]    # May
    b = bill_from_intervals(rows, LOW, "2026-04")
    assert b.kwh == 350 and b.total_won == 70640    # 350,700 Wh -> 350 kWh (fraction dropped)
    assert kwh_from_wh(999) == 0 and kwh_from_wh(1000) == 1


def test_bill_with_and_without_p2p() -> None:
    # April 2026, low voltage. Buyer: import 400,500 Wh, bought 50,000 Wh for 8,883.5 won.
    #  without: 400 kWh -> 1,600 + 24,000 + 42,920 + 3,600 + 2,000 = 74,120; VAT 7,412;
    #           fund 2,001.24 -> 2,000; total 83,532 -> 83,530.
    #  with:    350 kWh -> 70,640 + 8,883.5 paid = 79,523.5; savings 4,006.5.
    c = p2p_comparison(LOW, "2026-04", import_wh=400_500, export_wh=0, bought_wh=50_000,
                       paid_won=Decimal("8883.5"))
    assert c.without_p2p.bill.total_won == 83530 and c.with_p2p.bill.total_won == 70640
    assert c.savings_won == Decimal("4006.5")
    # Seller: import 150,000, export 200,700, sold 50,000 for 8,883.5 won.
    #  without: net -50,700 Wh -> billed 0 kWh (1,120 won), surplus 50 kWh x 120.0 = 6,000 -> net -4,880
    #  with:    net -700 Wh -> billed 0, surplus 0 kWh -> 1,120 - 8,883.5 = -7,763.5; savings 2,883.5.
    s = p2p_comparison(LOW, "2026-04", import_wh=150_000, export_wh=200_700, sold_wh=50_000,
                       received_won=Decimal("8883.5"))
    assert s.without_p2p.surplus_credit_won == Decimal("6000.0")
    assert s.without_p2p.net_cost_won == Decimal("-4880.0")
    assert s.with_p2p.net_cost_won == Decimal("-7763.5")
    assert s.savings_won == Decimal("2883.5")
    with pytest.raises(TariffError) as e:
        p2p_comparison(LOW, "2026-04", import_wh=10, export_wh=0, bought_wh=11)
    assert e.value.reason == "bought_exceeds_import"


@settings(max_examples=60, deadline=None)
@given(kwh=st.integers(0, 2000), month=st.sampled_from(["2026-01", "2026-04", "2026-08", "2025-07", "2024-12"]),
       tariff=st.sampled_from([LOW, HIGH]))
def test_monotone_in_kwh(kwh: int, month: str, tariff: str) -> None:
    a, b = bill(kwh, tariff, month), bill(kwh + 1, tariff, month)
    assert b.electricity_won >= a.electricity_won
    if not a.minimum_applied and not b.minimum_applied:
        assert b.electricity_won > a.electricity_won
    assert b.total_won >= a.total_won


@settings(max_examples=60, deadline=None)
@given(kwh=st.integers(0, 3000), tariff=st.sampled_from([LOW, HIGH]),
       other=st.sampled_from(["2026-03", "2026-06", "2026-09", "2026-12", "2027-01"]))
def test_summer_relief_never_charges_more(kwh: int, tariff: str, other: str) -> None:
    # The relief widens the tiers; above 1,000 kWh summer carries the super-user rate, which
    # spring and autumn do not, so the comparison with those months holds up to 1,000 kWh,
    # and with the winter months (which carry it too) for every kWh.
    summer = bill(kwh, tariff, "2026-08")
    y, m = map(int, other.split("-"))
    if m in (12, 1, 2) or kwh <= 1000:
        assert summer.total_won <= bill(kwh, tariff, other).total_won


def test_summer_with_super_user_can_exceed_april() -> None:
    # 1,200 kWh: August 300 x 120 + 150 x 214.6 + 550 x 307.3 + 200 x 736.2 = 384,445 (-> 384,445)
    # April 312,760: the super-user rate makes this August dearer.
    assert bill(1200, LOW, "2026-08").energy_won == 384445 > bill(1200, LOW, "2026-04").energy_won


def test_month_period() -> None:
    assert month_period("2024-02") == (date(2024, 2, 1), date(2024, 2, 29))
