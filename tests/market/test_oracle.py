"""The Oracle: each component by hand, the price rule, NOIA conversion, explanations, JSON-RPC, CLI.

Marginal prices below are (tier + climate 9.0 + fuel 5.0) x (1 + VAT 0.10 + fund), by hand.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli import main as cli_main
from gateway.jsonrpc import INVALID_PARAMS
from gateway.market.oracle import NO_TABLE_IN_FORCE, UNKNOWN_TARIFF, Oracle, to_noia_units_per_wh
from gateway.market.tariffs import TariffError

D = Decimal
APR = date(2026, 4, 15)


def ts(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp())


T_APR = ts("2026-04-15T03:00:00")   # 12:00 KST


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle()


def test_buyer_ceiling_tier_2(oracle: Oracle) -> None:
    # 350 kWh so far in April -> next kWh in tier 2: (214.6 + 9.0 + 5.0) x 1.127 = 228.6 x 1.127 = 257.6322
    b = oracle.buyer_ceiling(APR, D(350))
    assert (b.block, b.won_per_kwh) == ("tier 2", D("257.6322"))


def test_buyer_ceiling_at_tier_bounds(oracle: Oracle) -> None:
    # 199.5 kWh: tier 1 (120 + 14) x 1.127 = 151.018; exactly 200: the next kWh is the 201st -> tier 2
    assert oracle.buyer_ceiling(APR, D("199.5")).won_per_kwh == D("151.018")
    assert oracle.buyer_ceiling(APR, D(200)).block == "tier 2"
    # summer: tier 1 runs to 300 kWh
    aug = date(2026, 8, 3)
    assert oracle.buyer_ceiling(aug, D(299)).block == "tier 1"
    assert oracle.buyer_ceiling(aug, D(450)).block == "tier 3"   # (307.3 + 14) x 1.127 = 362.1051
    assert oracle.buyer_ceiling(aug, D(450)).won_per_kwh == D("362.1051")


def test_buyer_ceiling_super_user(oracle: Oracle) -> None:
    # January, 1,000 kWh so far: (736.2 + 14) x 1.127 = 750.2 x 1.127 = 845.4754
    b = oracle.buyer_ceiling(date(2026, 1, 20), D(1000))
    assert (b.block, b.won_per_kwh) == ("super-user", D("845.4754"))


def test_buyer_ceiling_uses_the_fund_rate_of_the_date(oracle: Oracle) -> None:
    # April 2024: fund 3.7% -> 228.6 x 1.137 = 259.9182
    assert oracle.buyer_ceiling(date(2024, 4, 1), D(350)).won_per_kwh == D("259.9182")


def test_interval_day_is_kst(oracle: Oracle) -> None:
    # 2025-06-30T14:45Z is 23:45 KST on 30 June (fund 3.2%: 228.6 x 1.132 = 258.7752);
    # 2025-06-30T15:00Z is 1 July KST (fund 2.7%: 257.6322).
    a = oracle.price("g", ts("2025-06-30T14:45:00"), 350, 100, 0, 0)
    b = oracle.price("g", ts("2025-06-30T15:00:00"), 350, 100, 0, 0)
    assert a.day == date(2025, 6, 30) and a.buyer.won_per_kwh == D("258.7752")
    assert b.day == date(2025, 7, 1) and b.buyer.won_per_kwh == D("257.6322")


def test_seller_floor_net_metering(oracle: Oracle) -> None:
    # net 150 kWh so far: the exported kWh cancels the 150th kWh (tier 1): 151.018
    s = oracle.seller_floor(APR, D(150))
    assert (s.rule, s.block, s.won_per_kwh) == ("net metering offset", "tier 1", D("151.018"))
    # exactly 200: the last kWh is the 200th, still tier 1; 200.5: tier 2
    assert oracle.seller_floor(APR, D(200)).block == "tier 1"
    assert oracle.seller_floor(APR, D("200.5")).won_per_kwh == D("257.6322")


def test_seller_floor_in_surplus_is_the_surplus_price(oracle: Oracle) -> None:
    for net in (D(0), D(-12)):
        s = oracle.seller_floor(APR, net)
        assert (s.rule, s.block, s.won_per_kwh) == ("surplus sale", None, D("120.0"))
        assert "NOT verified" in s.explain


def test_price_between_floor_and_ceiling_by_demand_share(oracle: Oracle) -> None:
    # floor 151.018, ceiling 257.6322, supply 3,000 Wh, demand 1,000 Wh: w = 1/4
    # price = 151.018 + 106.6142 / 4 = 177.67155 -> 177.67; midpoint 204.3251; adjustment -26.65355 -> -26.6535
    r = oracle.price("demo", T_APR, 350, 150, 3000, 1000)
    assert r.tradeable
    assert r.midpoint == D("204.3251") and r.adjustment == D("-26.6535")
    assert r.price_won_per_kwh == D("177.67")
    assert r.noia_units_per_wh == 177_670_000_000_000_000   # 0.17767 NOIA per Wh at 1 won/NOIA


def test_price_extremes(oracle: Oracle) -> None:
    # balanced -> midpoint 204.3251 -> 204.32; no forecast -> also the midpoint;
    # only demand -> the ceiling 257.6322 -> 257.63; only supply -> the floor 151.018 -> 151.01
    assert oracle.price("g", T_APR, 350, 150, 500, 500).price_won_per_kwh == D("204.32")
    assert oracle.price("g", T_APR, 350, 150, 0, 0).price_won_per_kwh == D("204.32")
    assert oracle.price("g", T_APR, 350, 150, 0, 800).price_won_per_kwh == D("257.63")
    assert oracle.price("g", T_APR, 350, 150, 800, 0).price_won_per_kwh == D("151.01")


def test_not_tradeable_when_the_ceiling_is_below_the_floor(oracle: Oracle) -> None:
    # buyer at 100 kWh: 151.018; seller at 500 kWh net: tier 3, 321.3 x 1.127 = 362.1051
    r = oracle.price("g", T_APR, 100, 500, 100, 100)
    assert not r.tradeable
    assert r.price_won_per_kwh == D("362.10") and r.adjustment == 0
    assert "not tradeable" in r.explanation[-2]


def test_noia_conversion_at_a_configured_rate() -> None:
    # 177.67 won/kWh at 2.5 won/NOIA: 0.17767 / 2.5 = 0.071068 NOIA/Wh = 71,068 x 10^12 units
    r = Oracle(won_per_noia="2.5").price("g", T_APR, 350, 150, 3000, 1000)
    assert r.noia_units_per_wh == 71_068_000_000_000_000
    assert to_noia_units_per_wh(D("0.01"), D(3)) == 3_333_333_333_333   # floor, never rounds up
    with pytest.raises(TariffError):
        Oracle(won_per_noia=0)


def test_explanation_traces_every_number(oracle: Oracle) -> None:
    r = oracle.price("demo", T_APR, 350, 150, 3000, 1000)
    text = "\n".join(r.explanation)
    for needle in ("350 kWh", "tier 2", "214.6 energy", "9.0 climate", "5.0 fuel", "0.027 fund", "257.6322",
                   "150 kWh", "tier 1", "151.018", "midpoint", "204.3251", "1000/4000", "-26.6535", "177.67",
                   "177670000000000000 units/Wh"):
        assert needle in text, needle
    j = r.to_json()
    assert j["buyer_ceiling"]["won_per_kwh"] == "257.6322" and j["demand_share"] == "1/4"
    assert j["noia_units_per_wh"] == "177670000000000000" and j["noia_per_kwh"] == "177.67"
    assert any("2026-03-31" in c for c in j["caveats"])   # beyond what the sources confirm


def test_high_voltage_tariff(oracle: Oracle) -> None:
    # apartments: buyer at 450 kWh -> tier 3 (242.3 + 14) x 1.127 = 256.3 x 1.127 = 288.8501
    r = oracle.price("g", T_APR, 450, 100, 0, 0, tariff="residential-high")
    assert r.buyer.won_per_kwh == D("288.8501") and r.tariff == "residential-high"


@pytest.mark.parametrize("args, reason", [
    (("g", T_APR, -1, 0, 0, 0), "negative_energy"),
    (("g", T_APR + 60, 1, 0, 0, 0), "unaligned_interval"),
    (("g", -900, 1, 0, 0, 0), "bad_interval_start"),
    (("g", T_APR, 1, 0, -5, 0), "bad_forecast"),
    (("g", T_APR, 1, 0, 1.5, 0), "bad_forecast"),
    (("g", T_APR, "lots", 0, 0, 0), "bad_number"),
    (("g", T_APR, "NaN", 0, 0, 0), "bad_number"),
    (("g", T_APR, True, 0, 0, 0), "bad_number"),
    (("", T_APR, 1, 0, 0, 0), "bad_grid"),
    (("g", ts("2020-06-01T00:00:00"), 1, 0, 0, 0), "no_table_in_force"),
])
def test_bad_params_get_specific_errors(oracle: Oracle, args: tuple[Any, ...], reason: str) -> None:
    with pytest.raises(TariffError) as e:
        oracle.price(*args)
    assert e.value.reason == reason


@settings(max_examples=80, deadline=None)
@given(buyer=st.integers(0, 1500), seller=st.integers(-50, 1500), s=st.integers(0, 10**6),
       d=st.integers(0, 10**6), more=st.integers(1, 10**5))
def test_price_properties(buyer: int, seller: int, s: int, d: int, more: int) -> None:
    o = Oracle()
    r = o.price("g", T_APR, buyer, seller, s, d)
    lo, hi = r.seller.won_per_kwh, r.buyer.won_per_kwh
    if r.tradeable:
        assert lo - D("0.01") < r.price_won_per_kwh <= hi
        # more demand never lowers the price, more supply never raises it
        assert o.price("g", T_APR, buyer, seller, s, d + more).price_won_per_kwh >= r.price_won_per_kwh
        assert o.price("g", T_APR, buyer, seller, s + more, d).price_won_per_kwh <= r.price_won_per_kwh
    else:
        assert hi <= lo


def rpc(o: Oracle, method: str, params: Any) -> dict[str, Any]:
    res = asyncio.run(o.server().call({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
    assert res is not None
    return res


def test_rpc_get_price(oracle: Oracle) -> None:
    res = rpc(oracle, "oracle_getPrice", ["demo", T_APR, "350", 150, 3000, 1000])
    assert res["result"]["price_won_per_kwh"] == "177.67"
    res = rpc(oracle, "oracle_getPrice", ["demo", T_APR, 450, 100, 0, 0, "residential-high"])
    assert res["result"]["buyer_ceiling"]["won_per_kwh"] == "288.8501"


def test_rpc_get_tariff_and_bill(oracle: Oracle) -> None:
    res = rpc(oracle, "oracle_getTariff", ["residential-low", "2024-08-01"])["result"]
    assert res["table"]["energy_won_per_kwh"] == ["120.0", "214.6", "307.3"]
    assert res["surcharges"]["fund"]["value"] == "0.032" and res["rounding"]["vat"] == "half_up_1"
    assert "etrans.or.kr" in res["surcharges"]["fund"]["source"]
    b = rpc(oracle, "oracle_bill", ["residential-low", "2026-04", 350])["result"]
    assert b["total_won"] == 70640 and b["electricity_won"] == 62690


@pytest.mark.parametrize("method, params, code, reason", [
    ("oracle_getPrice", ["g", T_APR, 1, 0, 0], INVALID_PARAMS, None),
    ("oracle_getPrice", ["g", T_APR, -3, 0, 0, 0], INVALID_PARAMS, "negative_energy"),
    ("oracle_getPrice", ["g", T_APR, 1, 0, 0, 0, "industrial"], UNKNOWN_TARIFF, "unknown_tariff"),
    ("oracle_getPrice", ["g", 0, 1, 0, 0, 0], NO_TABLE_IN_FORCE, "no_table_in_force"),
    ("oracle_getTariff", ["residential-low", "yesterday"], INVALID_PARAMS, "bad_date"),
    ("oracle_getTariff", [5, "2026-01-01"], UNKNOWN_TARIFF, "unknown_tariff"),
    ("oracle_bill", ["residential-low", "2026-4", 350], INVALID_PARAMS, "bad_month"),
    ("oracle_bill", ["residential-low", "2026-04", -1], INVALID_PARAMS, "negative_energy"),
    ("oracle_bill", ["residential-low", "2026-04", 3.5], INVALID_PARAMS, "bad_kwh"),
    ("oracle_bill", ["nope", "2026-04", 3], UNKNOWN_TARIFF, "unknown_tariff"),
])
def test_rpc_errors(oracle: Oracle, method: str, params: Any, code: int, reason: str | None) -> None:
    res = rpc(oracle, method, params)
    assert res["error"]["code"] == code
    if reason:
        assert res["error"]["data"]["reason"] == reason


def test_rpc_over_http() -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        runner, (host, port) = await Oracle().server().start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as s:
                body = {"jsonrpc": "2.0", "id": 1, "method": "oracle_bill", "params": ["residential-high", "2026-04", 450]}
                async with s.post(f"http://{host}:{port}/", json=body) as r:
                    ok = await r.json()
                async with s.post(f"http://{host}:{port}/", data=b"{not json") as r:
                    bad = await r.json()
            return ok, bad
        finally:
            await runner.cleanup()
    ok, bad = asyncio.run(go())
    assert ok["result"]["total_won"] == 90460
    assert bad["error"]["code"] == -32700


def test_cli_price_and_bill_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["oracle", "price", "--interval", "2026-04-15T03:00:00Z", "--buyer-mtd-kwh", "350",
                     "--seller-mtd-kwh", "150", "--supply-wh", "3000", "--demand-wh", "1000", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["price_won_per_kwh"] == "177.67"
    assert cli_main(["oracle", "bill", "--tariff", "residential-high", "--month", "2026-04", "--kwh", "450",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["total_won"] == 90460
    assert cli_main(["oracle", "bill", "--month", "April", "--kwh", "1"]) == 2
    assert "YYYY-MM" in capsys.readouterr().err
