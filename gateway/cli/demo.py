"""``metanoia demo``: a simulated complex end to end on the embedded defaults.

Households with different PV sizes and meters (Eastron SDM630/SDM120 on
RS485 pseudo-terminals, SunSpec over TCP) are read by the real firmware on
CPython, which signs every reading, keeps it in its flash ring buffer and
publishes it over MQTT; the gateway side verifies each signature and
acknowledges. Midway the broker goes down for a while (Mosquitto only): the
devices keep reading into flash and drain the backlog in batches afterwards.
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
    from datetime import datetime

    from gateway.aggregator.collector import Collector
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
    outage = set() if args.no_outage or not use_mosquitto else set(range(steps // 2, steps // 2 + max(2, steps // 8)))
    collector = None
    try:
        with VirtualRig(specs, clock=clock) as rig:
            devices = [build_device(s.household.name, rig.endpoints[s.household.name], work / s.household.name,
                                    clock, grid="demo", mqtt=(broker.host, broker.port), interval_s=args.interval)
                       for s in specs]
            collector = Collector(broker.host, broker.port, "demo",
                                  {d.device_id: d.public_key for d in devices}).start()
            for d in devices:
                _out(args, f"device {d.name}: id {d.device_id.hex()}, meter {d.config['grid_meter']['profile']}, "
                           f"PV {'sunspec inverter' if d.config['pv_inverter'] else 'none'}")
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
                             devices, timeout=5)
                if (step + 1) % max(1, 3600 // args.interval) == 0 or step == steps - 1:
                    when = datetime.fromtimestamp(clock.now(), start_dt.tzinfo).strftime("%H:%M")
                    _out(args, f"{when}  readings {produced:5d}  verified {collector.total():5d}  "
                               f"rejected {collector.rejected.total}")
            wait_for(lambda: collector.total() >= produced, devices, timeout=20)
            elapsed = time.monotonic() - t0
            summary = _summary(devices, collector, n, steps, produced, elapsed, use_mosquitto, bool(outage))
            for d in devices:
                d.device.mqtt.disconnect()
    finally:
        if collector is not None:
            collector.stop()
        broker.close()
    _print_table(args, summary)
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["readings_verified"] == produced and summary["rejected"] == 0 else 1


def _summary(devices: list, collector: Any, n: int, steps: int, produced: int, elapsed: float,
             mosquitto: bool, outage: bool) -> dict[str, Any]:
    per = {}
    for d in devices:
        log = collector.devices[d.device_id]
        rs = [log.readings[s] for s in sorted(log.readings)]
        first, last = (rs[0], rs[-1]) if rs else (None, None)
        per[d.name] = {
            "device_id": d.device_id.hex(),
            "meter": d.config["grid_meter"]["profile"],
            "readings": len(rs),
            "import_wh": last.import_wh - first.import_wh if rs else 0,
            "export_wh": last.export_wh - first.export_wh if rs else 0,
            "pv_wh": last.pv_wh - first.pv_wh if rs else 0,
            "duplicates_dropped": log.duplicates,
            "sent_from_backlog": sum(1 for r in rs if r.flags & 0x20),
            "messages": log.messages,
        }
    return {"households": n, "steps": steps, "readings_produced": produced,
            "readings_verified": collector.total(), "rejected": collector.rejected.total,
            "broker": "mosquitto" if mosquitto else "amqtt", "outage": outage,
            "wall_s": round(elapsed, 2), "per_household": per}


def _print_table(args: argparse.Namespace, s: dict[str, Any]) -> None:
    _out(args, "")
    _out(args, f"{'household':10} {'meter':8} {'readings':>8} {'import Wh':>10} {'export Wh':>10} "
               f"{'PV Wh':>10} {'backlog':>8} {'msgs':>6}")
    for name, h in s["per_household"].items():
        _out(args, f"{name:10} {h['meter']:8} {h['readings']:8d} {h['import_wh']:10d} {h['export_wh']:10d} "
                   f"{h['pv_wh']:10d} {h['sent_from_backlog']:8d} {h['messages']:6d}")
    _out(args, f"verified {s['readings_verified']} of {s['readings_produced']} signed readings, "
               f"rejected {s['rejected']}, in {s['wall_s']} s")
