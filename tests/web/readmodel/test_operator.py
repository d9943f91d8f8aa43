"""The operator view on a real market day: devices (state, fw, rejections), the complex's balance with P2P,
the chain (a validator down is reported, not raised), settlements and outboxes, the aggregated resource."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time

import pytest

from gateway.db import connect
from gateway.web.readmodel import Sources, chain_view, operator_view, to_json

from .conftest import GRID, HOUSES, Day


@pytest.fixture(scope="module")
def day(shared_day: Day) -> Day:
    """This module only reads the market day: the one the read-only modules share."""
    return shared_day


def test_devices_show_state_fw_last_reading_and_rejections(day: Day) -> None:
    v = asyncio.run(operator_view(day.cx, time.time(), day=day.start))
    by = {d.household: d for d in v.devices}
    assert set(by) == {h for h, _, _ in HOUSES} and len(v.devices) == 3
    sun, dark, quiet = by["sun-1"], by["dark-2"], by["sun-3"]
    assert (sun.state, sun.fw, sun.online) == ("online", "1.2.3", True)
    assert (dark.state, dark.fw, dark.online) == ("offline", None, False)   # the old plain format: no version
    assert (quiet.state, quiet.fw, quiet.online) == ("unknown", None, False)  # readings, no state message
    assert sun.state_since is not None and abs(sun.state_since - time.time()) < 600
    # the bad state message and the garbage reading are dark-2's rejections, by reason
    assert dark.rejections.get("bad_state") == 1 and sum(dark.rejections.values()) == 2
    assert sun.rejections == {} and v.rejected == 2 and v.rejections["bad_state"] == 1
    conn = connect(day.db, readonly=True)
    for h, d in by.items():
        t, p = conn.execute("SELECT time, power_w FROM readings WHERE device_id = ? ORDER BY seq DESC LIMIT 1",
                            (day.devices[h].device_id,)).fetchone()
        assert (d.last_reading_time, d.last_power_w, d.registry) == (t, p, "active")
    assert v.readings_stored == conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    conn.close()
    assert v.devices_online == 1


def test_balance_per_interval_is_the_households_sum_and_p2p_the_trades(day: Day) -> None:
    v = asyncio.run(operator_view(day.cx, time.time(), day=day.start))
    conn = connect(day.db, readonly=True)
    try:
        for b in v.balance:
            imp, exp, pv = conn.execute("SELECT SUM(import_wh), SUM(export_wh), SUM(pv_wh) FROM interval_energy "
                                        "WHERE start = ? AND interval_s = 900", (b.start,)).fetchone()
            assert (b.import_wh, b.export_wh, b.pv_wh) == (imp, exp, pv)
            (traded,) = conn.execute("SELECT COALESCE(SUM(wh), 0) FROM trades WHERE interval_start = ? AND "
                                     "state != 'rejected'", (b.start,)).fetchone()
            assert b.p2p_wh == traded and b.delivered_wh <= b.p2p_wh
        assert sum(b.p2p_wh for b in v.balance) == day.audit["ordered_wh"] > 0
        assert sum(b.delivered_wh for b in v.balance) == day.audit["delivered_wh"]
    finally:
        conn.close()


def test_settlements_outboxes_and_the_aggregated_resource(day: Day) -> None:
    v = asyncio.run(operator_view(day.cx, time.time(), day=day.start))
    assert v.settlement_states.get("settled", 0) >= day.audit["intervals_with_fills"] > 0
    assert not v.settlement_states.get("failed")
    with_fills = [s for s in v.settlements if s.fills]
    assert len(with_fills) == day.audit["intervals_with_fills"]
    for s in with_fills:
        assert s.state == "settled" and s.root is not None and len(s.batches) == 1
        assert s.batches[0].state == "final" and s.batches[0].tx_hash is not None
    assert sum(s.payment + s.refund for s in v.settlements) == day.audit["escrowed"]
    names = {o.database: o for o in v.outboxes}
    assert names["gateway.db"].by_state.get("final") == day.audit["settle_txs"]
    assert names["market-outbox.db"].by_state.get("final", 0) >= day.audit["fills"]
    assert all(not o.live for o in v.outboxes)            # everything final: nothing stuck
    (r,) = v.resources
    assert (r.id, r.name, r.members) == ("vpp-1", "Rooftop PV", ("sun-1", "sun-3"))
    (bid,) = r.bids
    assert bid.trading_day == day.trading_day and bid.revision == 1 and bid.periods == 24
    conn = connect(day.db, readonly=True)
    n, dwh = conn.execute("SELECT COUNT(*), COALESCE(SUM(delivered_wh), 0) FROM agg_settlements").fetchone()
    conn.close()
    assert (bid.settled_periods, bid.delivered_wh) == (n, dwh) and n >= 1
    assert to_json(v)["grid"] == GRID


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def test_chain_reports_height_final_block_and_a_validator_that_is_down(day: Day) -> None:
    dead = _dead_url()
    cx = dataclasses.replace(day.cx, sources=dataclasses.replace(
        day.cx.sources, validators=(day.market.chain.url, dead), rpc_timeout_s=1.0))
    t0 = time.monotonic()
    v = asyncio.run(operator_view(cx, time.time(), day=day.start))
    assert time.monotonic() - t0 < 30
    c = v.chain
    assert c.up == 1 and c.down == (dead,) and c.authorities == 1 and c.quorum is True
    up, down = c.validators
    assert up.up and up.height is not None and up.height >= 1 and down.error == "unavailable"
    assert c.height is not None and c.final_height == c.height and c.final_hash is not None
    assert c.final_time is not None and day.start <= c.final_time
    # nobody up: the page still renders, with no height
    alone = asyncio.run(chain_view((dead,), 0.5))
    assert (alone.up, alone.height, alone.quorum) == (0, None, None)


def test_an_empty_complex_renders_without_tables(tmp_path) -> None:
    from gateway.db import open_gateway_db
    from gateway.web.readmodel import Complex
    open_gateway_db(tmp_path / "gateway.db").close()
    v = asyncio.run(operator_view(Complex(Sources("empty", tmp_path / "gateway.db")), time.time()))
    assert (v.devices, v.balance, v.settlements, v.outboxes, v.resources, v.chain.up) == ((), (), (), (), (), 0)


def test_a_wrong_database_path_is_refused_not_created(tmp_path) -> None:
    from gateway.web.readmodel import Complex, ReadModelError
    cx = Complex(Sources("nowhere", tmp_path / "missing" / "gateway.db"))
    try:
        asyncio.run(operator_view(cx, time.time()))
        raise AssertionError("expected a refusal")
    except ReadModelError as e:
        assert e.reason == "no_database" and cx.counters["no_database"] == 1
    assert not (tmp_path / "missing").exists()


def test_sources_refuse_what_cannot_be_a_complex(tmp_path) -> None:
    from gateway.web.readmodel import ReadModelError
    for kw, reason in (({"grid": "a/b"}, "bad_grid"), ({"interval_s": 7}, "bad_interval"),
                       ({"validators": ("file:///etc/passwd",)}, "bad_validator_url"),
                       ({"validators": ("http://x y/",)}, "bad_validator_url"), ({"rpc_timeout_s": 0}, "bad_timeout")):
        args = {"grid": "g", "gateway_db": tmp_path / "gateway.db"} | kw
        try:
            Sources(**args)
            raise AssertionError(f"{kw} accepted")
        except ReadModelError as e:
            assert e.reason == reason
    s = Sources.demo_layout(tmp_path, "g", validators=("http://127.0.0.1:1/",))
    assert (s.gateway_db, s.wallet_dir, s.outbox_dbs, s.genesis) == (
        tmp_path / "gateway.db", tmp_path / "market" / "wallet", (tmp_path / "market" / "market-outbox.db",), None)
    assert s.all_outboxes == (tmp_path / "gateway.db", tmp_path / "market" / "market-outbox.db")


def test_the_cli_prints_the_same_views(day: Day, capsys, monkeypatch) -> None:
    import json
    monkeypatch.delenv("METANOIA_WALLET_SECRET", raising=False)

    from gateway.cli import main as cli_main
    from gateway.web.readmodel import household_view
    common = ["--db", str(day.db), "--grid", GRID, "--validator", day.market.chain.url,
              "--outbox", str(day.folder / "market" / "market-outbox.db"), "--day", str(day.start)]
    assert cli_main(["gateway", "view", "operator", *common, "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    v = to_json(asyncio.run(operator_view(day.cx, time.time(), day=day.start)))
    assert got["balance"] == v["balance"] and got["settlements"] == v["settlements"]
    assert [d["fw"] for d in got["devices"]] == [d["fw"] for d in v["devices"]] and got["chain"]["up"] == 1
    assert cli_main(["gateway", "view", "operator", *common]) == 0
    text = capsys.readouterr().out
    assert "1/3 devices online" in text and "fw 1.2.3" in text and "resource vpp-1" in text
    hh = ["gateway", "view", "household", "sun-1", *common, "--wallet-dir", str(day.folder / "market" / "wallet")]
    assert cli_main([*hh, "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    h = to_json(asyncio.run(household_view(day.cx, "sun-1", time.time(), day=day.start)))
    for key in ("fills", "bill", "today", "address"):
        assert got[key] == h[key], key
    assert got["policy"] is None and got["policy_error"] == "wallet_closed"     # no master secret given
    assert cli_main(["gateway", "view", "household", "nobody", *common]) == 1
    assert "unknown_household" in capsys.readouterr().err
    assert cli_main(["gateway", "view", "operator", "--db", str(day.folder / "none.db"), "--grid", GRID]) == 1
    assert "no_database" in capsys.readouterr().err
