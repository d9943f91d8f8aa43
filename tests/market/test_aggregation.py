"""Aggregated resources (gateway/market/aggregation.py): membership and its refusals, the bid as the sum of
the members' forecasts less the margin (by hand), the JSON and CSV exports round-trip, settlement against
signed readings by hand, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.signed_readings import SigningDevice
from gateway.aggregator.derive import Deriver
from gateway.aggregator.intervals import IntervalEnergy
from gateway.cli import main as cli
from gateway.db import open_gateway_db
from gateway.devices import DeviceRegistry
from gateway.market.aggregation import (AggregationError, Aggregator, BidConfig, DeviationRules, bid_csv,
                                        bid_from_json, bid_json, day_start, parse_bid_csv)
from gateway.market.forecast import Forecaster

G = "g1"
DAY = "2026-06-10"
D0 = day_start(DAY)                     # 2026-06-10T00:00+09:00
H1, H2, H3 = b"\x01" * 9, b"\x02" * 9, b"\x03" * 9


class ConstSource:
    """Every past interval the same per household: (import_wh, export_wh, pv_wh)."""

    def __init__(self, rows: dict[str, tuple[int, int, int]]) -> None:
        self.rows = rows

    def household_intervals(self, household: str, start: int | None = None,
                            end: int | None = None) -> list[IntervalEnergy]:
        assert start is not None and end is not None
        imp, exp, pv = self.rows[household]
        s0 = start + (-start) % 900
        return [IntervalEnergy(s, 900, imp, exp, pv, 3, False) for s in range(s0, end, 900) if s + 900 <= end]


# h1: PV 600, load 200 -> net +400 a slot; h2: no PV, load 150 -> net -150; h3: PV 300, load 300 -> 0
SOURCE = ConstSource({"h1": (0, 400, 600), "h2": (150, 0, 0), "h3": (0, 0, 300)})


def world(tmp_path: Path) -> tuple[Aggregator, dict[bytes, SigningDevice]]:
    conn = open_gateway_db(tmp_path / "g.db")
    reg = DeviceRegistry(conn)
    devs = {}
    for i, (did, hh) in enumerate(((H1, "h1"), (H2, "h2"), (H3, "h3"))):
        d = SigningDevice.generate(did)
        reg.add({"device_id": did.hex(), "public_key": d.public_key.hex(), "grid": G, "profile": "sdm630"},
                claim_code=f"claim-code-{i:04d}")
        reg.pair(did, hh, f"claim-code-{i:04d}")
        devs[did] = d
    return Aggregator(conn, forecaster=Forecaster(SOURCE), clock=lambda: 1_781_000_000), devs


def test_members_and_refusals(tmp_path: Path) -> None:
    agg, _ = world(tmp_path)
    agg.create("vpp1", G, name="Hanbit VPP")
    agg.create("vpp2", G)
    assert agg.add("vpp1", ["h1", "h2"]) == ["h1", "h2"]
    for fn, reason in ((lambda: agg.create("vpp1", G), "duplicate_resource"),
                       (lambda: agg.create("bad id", G), "bad_request"),
                       (lambda: agg.add("nope", ["h1"]), "unknown_resource"),
                       (lambda: agg.add("vpp1", ["h9"]), "unknown_household"),
                       (lambda: agg.add("vpp1", ["h1"]), "already_member"),
                       (lambda: agg.add("vpp2", ["h2"]), "member_elsewhere"),
                       (lambda: agg.remove("vpp2", ["h1"]), "not_member"),
                       (lambda: agg.make_bid("vpp2", DAY), "no_members"),
                       (lambda: agg.bid("vpp1", DAY), "no_bid"),
                       (lambda: agg.make_bid("vpp1", "10/06/2026"), "bad_request")):
        with pytest.raises(AggregationError) as e:
            fn()
        assert e.value.reason == reason
    assert agg.remove("vpp1", ["h2"]) == ["h1"]
    assert agg.add("vpp2", ["h2"]) == ["h2"]          # free again
    assert [r["members"] for r in agg.resources()] == [["h1"], ["h2"]]


def test_bid_is_the_sum_of_member_forecasts_less_the_margin_by_hand(tmp_path: Path) -> None:
    agg, _ = world(tmp_path)
    agg.create("vpp1", G)
    agg.add("vpp1", ["h1", "h2", "h3"])
    # per 15 min: 400 - 150 + 0 = 250 Wh; margin 10 % = 25 -> 225, in 100 Wh steps -> 200
    b = agg.make_bid("vpp1", DAY, BidConfig(quantum_wh=100))
    assert len(b.periods) == 96 and b.asof == D0 - 14 * 3600 and b.members == ("h1", "h2", "h3")
    assert {(p.forecast_wh, p.margin_wh, p.quantity_wh) for p in b.periods} == {(250, 25, 200)}
    assert b.periods[0].start == D0 and b.periods[-1].start == D0 + 86_400 - 900
    for p in b.periods[:3]:
        assert p.forecast_wh == sum(agg.forecaster.forecast(h, s, b.asof).net_wh for h in ("h1", "h2", "h3")
                                    for s in (p.start,))
    # per hour: 1000 Wh, margin 10 % + 50 Wh = 150 -> 850 -> 800 in kWh steps of 100 Wh... and 0 in 1 kWh steps
    h = agg.make_bid("vpp1", DAY, BidConfig(resolution_s=3600, margin_wh=50, quantum_wh=100))
    assert len(h.periods) == 24 and {(p.forecast_wh, p.margin_wh, p.quantity_wh) for p in h.periods} == {(1000, 150, 800)}
    assert {p.quantity_wh for p in agg.make_bid("vpp1", DAY, BidConfig(resolution_s=3600, margin_wh=50)).periods} == {0}
    # a consumer-only resource bids 0, never a negative quantity
    agg.remove("vpp1", ["h1"])
    assert {(p.forecast_wh, p.quantity_wh) for p in agg.make_bid("vpp1", DAY).periods} == {(-150, 0)}


def test_json_and_csv_exports_round_trip(tmp_path: Path) -> None:
    agg, _ = world(tmp_path)
    agg.create("vpp1", G)
    agg.add("vpp1", ["h1"])
    b = agg.make_bid("vpp1", DAY, BidConfig(resolution_s=3600, quantum_wh=1, price_won_per_kwh=120))
    doc = json.loads(json.dumps(bid_json(b)))
    assert bid_from_json(doc) == b
    assert doc["periods"][0] == {"period": 1, "start": "2026-06-10T00:00:00+09:00", "end": "2026-06-10T01:00:00+09:00",
                                 "quantity_kwh": "1.440", "forecast_kwh": "1.600", "margin_kwh": "0.160"}
    text = bid_csv(b)
    assert text.splitlines()[:2] == ["resource_id,trading_day,period,start,end,quantity_kwh,price_won_per_kwh",
                                     "vpp1,2026-06-10,1,2026-06-10T00:00:00+09:00,2026-06-10T01:00:00+09:00,1.440,120"]
    rid, day, res, price, rows = parse_bid_csv(text)
    assert (rid, day, res, price) == ("vpp1", DAY, 3600, 120)
    assert rows == [(p.period, p.start, p.quantity_wh) for p in b.periods]
    with pytest.raises(AggregationError) as e:
        parse_bid_csv(text.replace("1.440", "1.4401", 1))
    assert e.value.reason == "bad_bid"
    with pytest.raises(AggregationError):
        bid_from_json(doc | {"format": "kpx/0"})


def _readings(agg: Aggregator, devs: dict[bytes, SigningDevice], t0: int) -> None:
    # from 12:00 KST every 5 min to 13:10: h1 exports 100 Wh per 5 min (1200 Wh in the hour), h2 imports 20 (240)
    for i in range(15):
        t = t0 + 300 * i
        for did, imp, exp in ((H1, 0, 100 * i), (H2, 20 * i, 0)):
            raw = devs[did].reading(i + 1, t, imp, exp, 0, 0, 0)
            agg.conn.execute("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (did, i + 1, t, imp, exp, 0, 0, 0, raw, i + 1))
    Deriver(agg.conn, G).pass_once()


def test_settlement_deviation_and_penalty_by_hand(tmp_path: Path) -> None:
    agg, devs = world(tmp_path)
    agg.create("vpp1", G)
    agg.add("vpp1", ["h1", "h2"])
    b = agg.make_bid("vpp1", DAY, BidConfig(resolution_s=3600, quantum_wh=100))   # (400 - 150) x 4 = 1000 -> 900
    assert {p.quantity_wh for p in b.periods} == {900}
    assert agg.submit_bid(b) == 1
    assert agg.submit_bid(b) == 2                       # a revision replaces an unsettled bid
    t0 = D0 + 12 * 3600
    _readings(agg, devs, t0)
    rules = DeviationRules(tolerance_pct=2, min_band_wh=0, under_won_per_kwh=100, over_won_per_kwh=30)
    rep = agg.settle("vpp1", DAY, rules)
    done = [p for p in rep.periods if p.state == "settled"]
    assert len(done) == 1 and len(rep.periods) == 24
    p = done[0]
    # delivered 1200 - 240 = 960; deviation +60; band ceil(900 x 2 %) = 18; 42 Wh over at 30 won/kWh -> 1 won
    assert (p.period, p.start, p.bid_wh, p.delivered_wh, p.deviation_wh, p.band_wh, p.outside_wh, p.penalty_won) == \
        (13, t0, 900, 960, 60, 18, 42, 1)
    assert not p.within_band and [s for s, _v, _r in p.roots] == [t0, t0 + 900, t0 + 1800, t0 + 2700]
    roots = {s: bytes(r).hex() for s, r in agg.conn.execute("SELECT start, root FROM evidence_roots")}
    assert all(roots[s] == r and v == 1 for s, v, r in p.roots)
    summary = rep.to_json()
    assert (summary["settled"], summary["pending"], summary["deviation_wh"], summary["penalty_won"]) == (1, 23, 60, 1)
    # settled periods stay as settled (new rules do not rewrite them); the bid can no longer be replaced
    again = agg.settle("vpp1", DAY, DeviationRules())
    assert [q for q in again.periods if q.state == "settled"] == done
    with pytest.raises(AggregationError) as e:
        agg.submit_bid(b)
    assert e.value.reason == "settled"
    # the rule by hand: 100 Wh short with an 18 Wh band at 100 won/kWh -> 82 Wh outside, 8 won
    assert rules.penalty(-100, 18) == (82, 8) and rules.penalty(-18, 18) == (0, 0)
    assert DeviationRules(basis="capacity", capacity_wh=5000, tolerance_pct=8, min_band_wh=0).band(900) == 400
    with pytest.raises(AggregationError):
        DeviationRules.from_json({"tolerance": 5})


def test_cli_create_add_bid_settle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agg, devs = world(tmp_path)
    _readings(agg, devs, D0 + 12 * 3600)
    db = str(tmp_path / "g.db")

    def run(*argv: str) -> tuple[int, dict]:
        code = cli(["aggregate", *argv, "--db", db, "--json"])
        return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert run("create", "vpp1", "--grid", G)[0] == 0
    code, doc = run("add", "vpp1", "h1", "h2")
    assert code == 0 and doc["members"] == ["h1", "h2"]
    code, doc = run("add", "vpp1", "h9")
    assert code == 1 and doc["error"] == "unknown_household"
    out = tmp_path / "bid.csv"
    # no history before the day: the forecast is 0, so the bid is 0 in every hour
    code, doc = run("bid", "vpp1", "--day", DAY, "--resolution", "3600", "--format", "csv", "--out", str(out))
    assert code == 0 and doc["revision"] == 1 and doc["total_wh"] == 0
    assert parse_bid_csv(out.read_text())[0] == "vpp1"
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"tolerance_pct": 10, "min_band_wh": 100, "under_won_per_kwh": 0,
                                 "over_won_per_kwh": 10}))
    code, doc = run("settle", "vpp1", "--day", DAY, "--rules", str(rules))
    # hour 13: bid 0, delivered 960, band max(100, 0) = 100, 860 Wh outside at 10 won/kWh = 8 won
    assert code == 0 and (doc["settled"], doc["delivered_wh"], doc["penalty_won"]) == (1, 960, 8)
