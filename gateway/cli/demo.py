"""``metanoia demo``: a simulated complex end to end on the embedded defaults.

Households with different PV sizes and meters (Eastron SDM630/SDM120 on
RS485 pseudo-terminals, SunSpec over TCP) are read by the real firmware on
CPython, which signs every reading, keeps it in its flash ring buffer and
publishes it over MQTT. The gateway registers each device (provisioning record
+ claim code, then paired with its household), verifies every signature
against the pinned key, stores the reading durably in SQLite and only then
acknowledges it; interval energy and the evidence roots follow. Midway the
broker goes down for a while (Mosquitto only): the devices keep reading into
flash and drain the backlog in batches afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOUSEHOLDS = [  # name, kWp, meter, base load W
    ("101-A", 6.0, "sdm630", 420.0),
    ("102-B", 0.0, "sdm120", 380.0),
    ("103-C", 3.5, "sunspec", 300.0),
    ("104-D", 9.0, "sdm630", 520.0),
    ("105-E", 0.0, "sdm630", 250.0),
    ("106-F", 4.5, "sdm120", 460.0),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate a complex end to end (embedded defaults)")
    p.add_argument("--households", type=int, default=4, help=f"1..{len(HOUSEHOLDS)}")
    p.add_argument("--hours", type=float, default=8.0, help="simulated hours")
    p.add_argument("--interval", type=int, default=300, help="simulated seconds between readings")
    p.add_argument("--start", default="2026-06-21T06:00:00+09:00", help="simulated start (ISO 8601)")
    p.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto")
    p.add_argument("--no-outage", action="store_true", help="skip the broker outage")
    p.add_argument("--json", action="store_true", help="one JSON summary object as the last line")
    p.set_defaults(func=run)


def _out(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def run(args: argparse.Namespace) -> int:
    import secrets
    from datetime import datetime

    from gateway.aggregator.ingest import IngestConfig, IngestService, keys_for
    from gateway.db import connect, open_gateway_db
    from gateway.devices import DeviceRegistry
    from hil.broker import EmbeddedBroker, Mosquitto, find_mosquitto
    from hil.device_sim import build_device, wait_for
    from hil.modbus_rig import RigHousehold, VirtualRig
    from hil.physics import Household, ManualClock

    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    logging.getLogger("transitions").setLevel(logging.CRITICAL)
    n = max(1, min(args.households, len(HOUSEHOLDS)))
    start_dt = datetime.fromisoformat(args.start)
    start = start_dt.timestamp()
    steps = max(1, int(args.hours * 3600 // args.interval))
    use_mosquitto = args.broker == "mosquitto" or (args.broker == "auto" and find_mosquitto())
    broker: Any = Mosquitto() if use_mosquitto else EmbeddedBroker()
    broker.start()
    _out(args, f"broker: {'Mosquitto' if use_mosquitto else 'embedded amqtt'} on {broker.host}:{broker.port}")
    clock = ManualClock(start)
    specs = [RigHousehold(Household(name, kwp=kwp, base_load_w=load, seed=i + 1), meter=meter, pace=False)
             for i, (name, kwp, meter, load) in enumerate(HOUSEHOLDS[:n])]
    work = Path(tempfile.mkdtemp(prefix="metanoia-demo-"))
    db_path = work / "gateway.db"
    outage = set() if args.no_outage or not use_mosquitto else set(range(steps // 2, steps // 2 + max(2, steps // 8)))
    service = None
    try:
        with VirtualRig(specs, clock=clock) as rig:
            devices = [build_device(s.household.name, rig.endpoints[s.household.name], work / s.household.name,
                                    clock, grid="demo", mqtt=(broker.host, broker.port), interval_s=args.interval)
                       for s in specs]
            conn = open_gateway_db(db_path)
            reg = DeviceRegistry(conn)
            for d in devices:  # the installer's provisioning record, then the homeowner pairs
                claim = secrets.token_urlsafe(12)
                reg.add(d.identity() | {"profile": d.config["grid_meter"]["profile"]}, claim_code=claim)
                reg.pair(d.device_id, f"apt-{d.name}", claim)
                _out(args, f"device {d.name}: id {d.device_id.hex()}, meter {d.config['grid_meter']['profile']}, "
                           f"PV {'sunspec inverter' if d.config['pv_inverter'] else 'none'}, paired to apt-{d.name}")
            conn.close()
            cfg = IngestConfig(str(db_path), "demo", broker.host, broker.port, workers=1, derive_every_s=0.5)
            service = IngestService(cfg, keys_for(cfg)).start()
            t0 = time.monotonic()
            produced = 0
            for step in range(steps):
                if step in outage and broker.proc is not None:
                    _out(args, "-- broker down: devices keep reading into flash --")
                    broker.stop()
                if step not in outage and use_mosquitto and broker.proc is None:
                    broker.start()
                    _out(args, "-- broker back: draining backlogs --")
                    for d in devices:  # don't wait out the reconnect backoff in a demo
                        d.device._next_connect = d.device.ticks_ms()
                clock.advance(args.interval)
                for d in devices:
                    d.device.sample()
                    produced += 1
                    d.device.service()
                if step not in outage:
                    wait_for(lambda: all(d.device.acked >= d.device.ring.next_seq - 1 for d in devices),
                             devices, timeout=10)
                if (step + 1) % max(1, 3600 // args.interval) == 0 or step == steps - 1:
                    when = datetime.fromtimestamp(clock.now(), start_dt.tzinfo).strftime("%H:%M")
                    acked = sum(d.device.acked for d in devices)
                    _out(args, f"{when}  readings {produced:5d}  stored and acknowledged {acked:5d}")
            wait_for(lambda: all(d.device.acked >= d.device.ring.next_seq - 1 for d in devices), devices, timeout=30)
            elapsed = time.monotonic() - t0
            service.stop()
            service = None
            for d in devices:
                d.device.mqtt.disconnect()
            conn = connect(db_path)
            summary = _summary(conn, devices, n, steps, produced, elapsed, use_mosquitto, bool(outage), db_path)
            conn.close()
    finally:
        if service is not None:
            service.stop()
        broker.close()
    _print_intervals(args, summary, start_dt.tzinfo)
    _print_table(args, summary)
    if args.json:
        print(json.dumps(summary))
    ok = summary["readings_stored"] == produced and summary["energy_conserved"]
    return 0 if ok else 1


def _summary(conn: Any, devices: list, n: int, steps: int, produced: int, elapsed: float,
             mosquitto: bool, outage: bool, db_path: Path) -> dict[str, Any]:
    from gateway.aggregator.intervals import IntervalEngine
    from gateway.status import gateway_status

    eng = IntervalEngine(conn)
    status = gateway_status(conn, db_path, "demo")
    per: dict[str, Any] = {}
    conserved = True
    for d in devices:
        rows = conn.execute("SELECT seq, import_wh, export_wh, pv_wh, flags FROM readings WHERE device_id = ? "
                            "ORDER BY seq", (d.device_id,)).fetchall()
        ivs = eng.household_intervals(f"apt-{d.name}")
        sums = {k: sum(getattr(i, k) for i in ivs) for k in ("import_wh", "export_wh", "pv_wh")}
        span = {k: (rows[-1][j] - rows[0][j]) if rows else 0
                for j, k in ((1, "import_wh"), (2, "export_wh"), (3, "pv_wh"))}
        conserved &= sums == span  # intervals add up to the counters' difference, to the Wh
        per[d.name] = {"device_id": d.device_id.hex(), "household": f"apt-{d.name}",
                       "meter": d.config["grid_meter"]["profile"], "readings": len(rows),
                       **sums, "sent_from_backlog": sum(1 for r in rows if r[4] & 0x20),
                       "intervals": [[i.start, i.import_wh, i.export_wh, i.pv_wh, int(bool(i.estimated))]
                                     for i in ivs]}
    balance = [b.to_json() for b in eng.balance("demo")]
    return {"households": n, "intervals": len(balance), "readings_produced": produced,
            "readings_stored": status["readings_stored"], "rejected": status["rejected"],
            "quarantined": status["quarantined"], "evidence_roots": status["evidence_roots"],
            "energy_conserved": conserved, "broker": "mosquitto" if mosquitto else "amqtt", "outage": outage,
            "steps": steps, "wall_s": round(elapsed, 2), "per_household": per, "balance": balance}


def _print_intervals(args: argparse.Namespace, s: dict[str, Any], tz: Any) -> None:
    from datetime import datetime

    names = list(s["per_household"])
    by_start = {name: {iv[0]: iv for iv in h["intervals"]} for name, h in s["per_household"].items()}
    _out(args, "")
    _out(args, "per interval, Wh (import/export/PV per household; the complex's balance)")
    _out(args, f"{'start':5}  " + "  ".join(f"{n:>17}" for n in names) + f"  {'import':>7} {'export':>7} "
               f"{'PV':>7} {'net':>7}")
    for b in s["balance"]:
        cells = []
        for name in names:
            iv = by_start[name].get(b["start"])
            cells.append(f"{iv[1]:>5}/{iv[2]:>5}/{iv[3]:>5}" if iv else f"{'-':>17}")
        when = datetime.fromtimestamp(b["start"], tz).strftime("%H:%M")
        _out(args, f"{when:5}  " + "  ".join(cells) + f"  {b['import_wh']:>7} {b['export_wh']:>7} "
                   f"{b['pv_wh']:>7} {b['net_wh']:>7}" + ("  *" if b["estimated"] else ""))


def _print_table(args: argparse.Namespace, s: dict[str, Any]) -> None:
    _out(args, "")
    _out(args, f"{'household':10} {'meter':8} {'readings':>8} {'import Wh':>10} {'export Wh':>10} "
               f"{'PV Wh':>10} {'backlog':>8}")
    for name, h in s["per_household"].items():
        _out(args, f"{name:10} {h['meter']:8} {h['readings']:8d} {h['import_wh']:10d} {h['export_wh']:10d} "
                   f"{h['pv_wh']:10d} {h['sent_from_backlog']:8d}")
    _out(args, f"stored {s['readings_stored']} of {s['readings_produced']} signed readings "
               f"(rejected {s['rejected']}, quarantined {s['quarantined']}), {s['intervals']} intervals, "
               f"{s['evidence_roots']} evidence roots, energy conserved: {s['energy_conserved']}, "
               f"in {s['wall_s']} s")
