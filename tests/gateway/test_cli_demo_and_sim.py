"""`metanoia demo` and `metanoia device sim` end to end: the firmware on CPython
against the virtual rig, readings signed, published through a real broker and
verified on the gateway side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.telemetry.decode import decode_message, verify
from gateway.telemetry.format import FLAG_SOFTWARE_KEY


def metanoia(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_demo_json_summary_shows_every_signed_reading_stored_through_an_outage():
    proc = metanoia("demo", "--json", "--households", "3", "--hours", "4", "--interval", "900",
                    "--broker", "mosquitto")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["households"] == 3 and summary["broker"] == "mosquitto" and summary["outage"]
    assert summary["readings_produced"] == 3 * 16
    assert summary["readings_stored"] == summary["readings_produced"]
    assert summary["rejected"] == 0 and summary["quarantined"] == 0
    # Interval energy adds up to each meter's counter difference, to the Wh.
    assert summary["energy_conserved"] is True
    # Every interval but the open tail (the newest readings sit on its boundary) is rooted.
    assert summary["intervals"] >= 16 and summary["evidence_roots"] >= summary["intervals"] - 2
    per = summary["per_household"]
    assert {h["meter"] for h in per.values()} == {"sdm630", "sdm120", "sunspec"}
    # The outage was real: some readings were buffered in flash and sent later.
    assert all(h["sent_from_backlog"] > 0 for h in per.values())
    # Physics: the household without PV exports nothing; PV households produce.
    assert per["102-B"]["pv_wh"] == 0 and per["102-B"]["export_wh"] == 0
    assert per["101-A"]["pv_wh"] > 0 and per["103-C"]["pv_wh"] > 0
    # The complex's balance is the sum of its households, interval by interval.
    for b in summary["balance"]:
        ivs = [iv for h in per.values() for iv in h["intervals"] if iv[0] == b["start"]]
        assert b["import_wh"] == sum(iv[1] for iv in ivs) and b["pv_wh"] == sum(iv[3] for iv in ivs)
    # The market on the same morning: the household without PV bought from its neighbours on the chain,
    # every fill was settled once from metered delivery, and money and energy balance (read from the chain).
    assert summary["trades"] > 0 and summary["wh_traded"] >= summary["wh_delivered"] > 0
    assert summary["settlements_final"] == summary["intervals_settled"] == summary["intervals_with_fills"] > 0
    assert summary["conservation_ok"] is True and all(summary["conservation"][k] for k in
                                                      ("money_ok", "energy_ok", "balances_ok", "exactly_once"))
    assert summary["conservation"]["unsettled_fills"] == 0
    assert abs(summary["noia_paid"] + summary["noia_refunded"] - summary["noia_escrowed"]) < 1e-5
    assert per["102-B"]["bought_wh"] > 0 and per["102-B"]["sold_wh"] == 0
    assert sum(h["sold_wh"] for h in per.values()) == sum(h["bought_wh"] for h in per.values()) == \
        summary["wh_delivered"]
    assert all(h["bought_wh"] <= h["import_wh"] and h["sold_wh"] <= h["export_wh"] for h in per.values())
    # The buyer pays less than its KEPCO bill would charge for the same kWh (it was buying at tier 2)
    assert set(summary["savings_won"]) == set(per) and summary["savings_won"]["102-B"] > 0
    assert per["102-B"]["bill_with_p2p_won"] < per["102-B"]["bill_without_p2p_won"]


def test_demo_runs_on_the_embedded_broker_when_asked():
    proc = metanoia("demo", "--json", "--households", "2", "--hours", "1", "--interval", "900",
                    "--broker", "embedded", "--no-market")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["broker"] == "amqtt"
    assert summary["readings_stored"] == summary["readings_produced"] == 2 * 4
    assert "trades" not in summary          # metering only


def test_demo_call_auction_on_four_validators_trades_and_settles_once():
    proc = metanoia("demo", "--json", "--households", "4", "--hours", "5", "--interval", "900",
                    "--start", "2026-06-21T08:00:00+09:00", "--mechanism", "auction", "--validators", "4",
                    "--no-outage")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["trades"] > 0 and s["conservation_ok"] is True
    assert s["settlements_final"] == s["intervals_with_fills"] > 0
    assert s["mechanism"] == "auction" and s["validators"] == 4
    # pay-as-clear: every fill of an interval pays the interval's one clearing price (to the rounding of
    # noia = wh x price), between the sellers' floor (120 won/kWh, net metering) and the buyers' cap (300)
    for it in s["traded_intervals"]:
        assert max(it["won_kwh"]) - min(it["won_kwh"]) <= 0.01 and 120 <= min(it["won_kwh"]) <= 300


def test_device_sim_writes_identity_and_valid_signed_readings(tmp_path: Path):
    out = tmp_path / "sim"
    proc = metanoia("device", "sim", "--profile", "sdm120", "--readings", "4", "--out", str(out),
                    "--start", "1780020000")
    assert proc.returncode == 0, proc.stderr
    ident = json.loads((out / "device.json").read_text())
    assert set(ident) >= {"device_id", "public_key_pem"} and "PRIVATE" not in (out / "device.json").read_text()
    files = sorted(out.glob("*.cose"), key=lambda p: int(p.stem))
    assert [p.name for p in files] == ["1.cose", "2.cose", "3.cose", "4.cose"]
    readings = [verify(s, ident["public_key_pem"]) for p in files for s in decode_message(p.read_bytes())]
    assert [r.seq for r in readings] == [1, 2, 3, 4]
    assert all(r.device_id.hex() == ident["device_id"] and r.flags & FLAG_SOFTWARE_KEY for r in readings)
    assert [r.time for r in readings] == [1780020000 + 60 * i for i in range(1, 5)]
    imports = [r.import_wh for r in readings]
    assert imports == sorted(imports)  # cumulative counters from the rig's physics


def test_device_sim_output_checks_with_telemetry_decode(tmp_path: Path):
    out = tmp_path / "sim"
    assert metanoia("device", "sim", "--profile", "sunspec", "--readings", "2", "--out", str(out)).returncode == 0
    ok = metanoia("telemetry", "decode", str(out / "2.cose"), "--key", str(out / "device.json"), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout.splitlines()[-1])["valid"] is True
    tampered = bytearray((out / "2.cose").read_bytes())
    tampered[40] ^= 0x01
    (out / "bad.cose").write_bytes(tampered)
    bad = metanoia("telemetry", "decode", str(out / "bad.cose"), "--key", str(out / "device.json"))
    assert bad.returncode != 0
