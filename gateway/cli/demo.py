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

The market trades on the same accelerated day (hil/market_rig.py): the bundled
validator(s) run on the simulated clock; every household has a key in the
wallet and a policy; each PV household's maker agent serves an aiohttp Peer on
loopback and posts intents to the Indexer; before each 15-minute interval the
taker agents cover their forecast deficits by RFQ (or all orders meet in a call
auction), and every trade is a signed order filled on the chain through the
outbox client. Once an interval closes (evidence root, grace), the Settler
settles its fills from metered delivery, once, followed to finality. The end:
an audit read back from the chain (money and energy conserved, each fill settled
once) and each household's KEPCO bill with and without P2P (docs/demo.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from decimal import Decimal
from fractions import Fraction
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
SELL_FLOOR_WON_KWH = {"104-D": 180}   # a homeowner who sells only at 180 won/kWh or more (the rest: the Oracle)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate a complex end to end (embedded defaults)")
    p.add_argument("--households", type=int, default=6, help=f"1..{len(HOUSEHOLDS)}")
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours")
    p.add_argument("--interval", type=int, default=300, help="simulated seconds between readings")
    p.add_argument("--start", default="2026-06-21T06:00:00+09:00", help="simulated start (ISO 8601)")
    p.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto")
    p.add_argument("--no-outage", action="store_true", help="skip the broker outage")
    p.add_argument("--mechanism", choices=["rfq", "auction"], default="rfq", help="how the market trades")
    p.add_argument("--validators", type=int, default=1, help="authorities of the bundled chain (loopback)")
    p.add_argument("--validator-processes", action="store_true", help="run each validator in its own process")
    p.add_argument("--block-time", type=float, default=0.25, help="seconds per block")
    p.add_argument("--bill", choices=["month", "as-is"], default="month",
                   help="month: the run scaled to the calendar month (every day like this one); as-is: "
                        "the run's own metering as the month to date")
    p.add_argument("--no-market", action="store_true", help="metering only (no agents, chain or settlement)")
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
    from hil.physics import Household

    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    logging.getLogger("transitions").setLevel(logging.CRITICAL)
    n = max(1, min(args.households, len(HOUSEHOLDS)))
    start_dt = datetime.fromisoformat(args.start)
    start = start_dt.timestamp()
    steps = max(1, int(args.hours * 3600 // args.interval))
    end = start + steps * args.interval
    use_mosquitto = args.broker == "mosquitto" or (args.broker == "auto" and find_mosquitto())
    broker: Any = Mosquitto() if use_mosquitto else EmbeddedBroker()
    broker.start()
    _out(args, f"broker: {'Mosquitto' if use_mosquitto else 'embedded amqtt'} on {broker.host}:{broker.port}")
    work = Path(tempfile.mkdtemp(prefix="metanoia-demo-"))
    clock = _clock(start, work)
    specs = [RigHousehold(Household(name, kwp=kwp, base_load_w=load, seed=i + 1), meter=meter, pace=False)
             for i, (name, kwp, meter, load) in enumerate(HOUSEHOLDS[:n])]
    db_path = work / "gateway.db"
    outage = set() if args.no_outage or not use_mosquitto else set(range(steps // 2, steps // 2 + max(2, steps // 8)))
    service = None
    market_summary: dict[str, Any] | None = None
    market: DemoMarket | None = None
    try:
        with VirtualRig([*specs], clock=clock) as rig:
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
            if not args.no_market:
                market = DemoMarket(args, work, db_path, int(start), int(end), clock)
                market.start()
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
                if market is not None:
                    market.before_advance(clock.now(), args.interval)
                clock.advance(args.interval)
                for d in devices:
                    d.device.sample()
                    produced += 1
                    d.device.service()
                if step not in outage:
                    wait_for(lambda: all(d.device.acked >= d.device.ring.next_seq - 1 for d in devices),
                             devices, timeout=10)
                if market is not None:
                    market.progress()
                if (step + 1) % max(1, 3600 // args.interval) == 0 or step == steps - 1:
                    when = datetime.fromtimestamp(clock.now(), start_dt.tzinfo).strftime("%H:%M")
                    acked = sum(d.device.acked for d in devices)
                    _out(args, f"{when}  readings {produced:5d}  stored and acknowledged {acked:5d}")
            wait_for(lambda: all(d.device.acked >= d.device.ring.next_seq - 1 for d in devices), devices, timeout=30)
            elapsed = time.monotonic() - t0
            market_summary = market.finish() if market is not None else None
            service.stop()
            service = None
            for d in devices:
                d.device.mqtt.disconnect()
            conn = connect(db_path)
            summary = _summary(conn, devices, n, steps, produced, elapsed, bool(use_mosquitto), bool(outage), db_path)
            conn.close()
    finally:
        if market is not None:
            market.close()
        if service is not None:
            service.stop()
        broker.close()
    _print_intervals(args, summary, start_dt.tzinfo)
    _print_table(args, summary)
    ok = summary["readings_stored"] == produced and summary["energy_conserved"]
    if market_summary is not None:
        _merge_market(summary, market_summary, args, int(start))
        _print_market(args, summary, market_summary)
        ok = ok and summary["conservation_ok"]
        summary["wall_s"] = round(time.monotonic() - t0, 2)
    _out(args, f"\nthe day's data stays in {work}; to look at it in the web pages (docs/operator.md):\n"
               f"  metanoia gateway web add-operator ops@example.com --db {db_path}\n"
               f"  metanoia gateway web serve --db {db_path} --grid demo --insecure-cookie")
    if args.json:
        print(json.dumps(summary))
    return 0 if ok else 1


def _clock(start: float, work: Path) -> Any:
    from hil.market_rig import SharedClock
    return SharedClock(start, work / "clock")


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


# ---- the market: agents, chain, settlement, bills ----

def _won_kwh(units_per_wh: float) -> float:
    return units_per_wh / 1e15          # NOIA units per Wh -> won per kWh at 1 won per NOIA


def _noia(units: int) -> float:
    return round(units / 1e18, 6)


class DemoMarket:
    """hil.market_rig's market for the demo's households, with the demo's progress lines and bills."""

    def __init__(self, args: argparse.Namespace, work: Path, db_path: Path, start: int, end: int, clock: Any) -> None:
        from hil.market_rig import DayDriver, House, Market, default_policy

        self.args, self.start_t, self.end = args, start, end
        n = max(1, min(args.households, len(HOUSEHOLDS)))
        self.houses = [House(f"apt-{name}", kwp, load, i + 1,
                             default_policy(kwp, sell_floor_won_kwh=SELL_FLOOR_WON_KWH.get(name, 0)))
                       for i, (name, kwp, _m, load) in enumerate(HOUSEHOLDS[:n])]
        self.market = Market(work / "market", "demo", self.houses, clock.now, gateway_db=db_path, day_start=start,
                             validators=args.validators, processes=args.validator_processes,
                             clock_file=clock.file.path, mechanism=args.mechanism, block_time=args.block_time)
        self.driver = DayDriver(self.market, start, end - 900 - 120)
        self.shown = self.settled_shown = 0
        self.explained = False

    def start(self) -> None:
        self.driver.start()
        m, a = self.market, self.args
        _out(a, f"chain: {a.validators} validator(s) {'as processes' if a.validator_processes else 'in process'}"
                f" on loopback, {a.block_time} s blocks, on the simulated clock; {m.chain.url}")
        _out(a, f"market: {a.mechanism}; wallet with {len(self.houses)} household keys; Indexer {m.indexer_url}; "
                f"Peers: " + ", ".join(f"{h} {u}" for h, u in m.locators.items()))
        o = m.oracle
        day = _kst_day(self.start_t)
        t = o.book.table(o.tariff, day)
        tiers = [o.buyer_ceiling(day, Decimal(k)) for k in (0, t.bounds_other[0] + 50, t.bounds_other[1] + 50)] \
            if not t.is_summer(day.month) else [o.buyer_ceiling(day, Decimal(k)) for k in (0, 350, 500)]
        _out(a, f"{t.title}, {day}: energy {' / '.join(str(e) for e in t.energy)} won/kWh by tier; "
                "a buyer's next kWh with climate, fuel adjustment, VAT and fund: "
                + ", ".join(f"{v.block} {v.won_per_kwh:.2f}" for v in tiers)
                + f"; a seller in surplus gets {o.seller_floor(day, Decimal(-1)).won_per_kwh} won/kWh (net metering)")

    def before_advance(self, now: float, dt: float) -> None:
        self.driver.before_advance(now, dt)

    def progress(self) -> None:
        from datetime import datetime, timedelta, timezone

        kst = timezone(timedelta(hours=9))
        a = self.args
        for it in self.driver.done[self.shown:]:
            if not self.explained and it.trades:
                maker = self.market.makers.get(it.trades[0].maker_household)
                if maker is not None:
                    _out(a, f"   how {maker.household} priced {datetime.fromtimestamp(it.start, kst):%H:%M}:")
                    for line in maker.quote_price(it.start)[1]:
                        _out(a, f"     {line}")
                self.explained = True
            if it.intents or it.trades or it.refused:
                when = datetime.fromtimestamp(it.start, kst).strftime("%H:%M")
                prices = f" at {_won_kwh(min(it.prices)):.2f}-{_won_kwh(max(it.prices)):.2f} won/kWh" if it.prices else ""
                wh, noia = sum(t.wh for t in it.trades if t.state != "rejected"), sum(
                    t.noia for t in it.trades if t.state != "rejected")
                who = ", ".join(f"{t.taker_household}<-{t.maker_household} {t.wh}" for t in it.trades[:4])
                _out(a, f"   trade  {when}  offered {it.offered_wh:5d} Wh{prices}; {len(it.trades)} fill(s) "
                        f"{wh} Wh, {_noia(noia):.4f} NOIA" + (f" ({who}{', ...' if len(it.trades) > 4 else ''})"
                                                               if who else "")
                        + (f"; refused {it.refused}" if it.refused else ""))
        self.shown = len(self.driver.done)
        settled = self.market.settled
        for r in settled[self.settled_shown:]:
            if r.fills:
                when = datetime.fromtimestamp(r.start, kst).strftime("%H:%M")
                b = r.batches[-1] if r.batches else None
                _out(a, f"   settle {when}  {r.fills} fill(s): {r.delivered_wh} Wh delivered, "
                        f"{_noia(r.payment):.4f} NOIA to makers + {_noia(r.refund):.4f} refunded = "
                        f"{_noia(r.escrow):.4f} escrowed" + (f"; final in block {b.height}" if b else ""))
        self.settled_shown = len(settled)

    def finish(self) -> dict[str, Any]:
        audit = self.driver.finish()
        self.progress()
        audit["settled_intervals"] = sum(1 for r in self.market.settled if r.fills)
        audit["refused"] = {}
        audit["traded"] = [{"start": it.start, "fills": len(ok), "wh": sum(t.wh for t in ok),
                            "noia": _noia(sum(t.noia for t in ok)),
                            "won_kwh": sorted({round(_won_kwh(t.noia / t.wh), 2) for t in ok})}
                           for it in self.driver.done if (ok := [t for t in it.trades if t.state != "rejected"])]
        for it in self.driver.done:
            for k, v in it.refused.items():
                audit["refused"][k] = audit["refused"].get(k, 0) + v
        return audit

    def close(self) -> None:
        self.driver.close()


def _kst_day(t: int) -> Any:
    from datetime import datetime, timedelta, timezone
    return datetime.fromtimestamp(t, timezone(timedelta(hours=9))).date()


def _merge_market(s: dict[str, Any], m: dict[str, Any], args: argparse.Namespace, start: int) -> None:
    """Market figures into the summary; each household's bill with and without P2P (bill.p2p_comparison)."""
    import calendar

    from gateway.market.bill import p2p_comparison

    args_bill, hours = args.bill, s["steps"] * args.interval / 3600
    day = _kst_day(start)
    scale = Fraction(calendar.monthrange(day.year, day.month)[1] * 24) / Fraction(hours).limit_denominator(3600) \
        if args_bill == "month" else Fraction(1)
    s.update({"trades": m["fills"], "wh_traded": m["ordered_wh"], "wh_delivered": m["delivered_wh"],
              "settlements_final": m["settle_txs"], "intervals_settled": m["settled_intervals"],
              "intervals_with_fills": m["intervals_with_fills"], "noia_escrowed": _noia(m["escrowed"]),
              "noia_paid": _noia(m["paid"]), "noia_refunded": _noia(m["refunds"]),
              "conservation_ok": m["conservation_ok"],
              "conservation": {k: m[k] for k in ("money_ok", "energy_ok", "balances_ok", "exactly_once",
                                                 "unsettled_fills")},
              "refused": m["refused"], "mechanism": args.mechanism, "validators": args.validators,
              "traded_intervals": m["traded"], "bill_basis": ("the run scaled to the month x%.2f" % float(scale))
              if args_bill == "month" else "the run's metering as the month to date", "savings_won": {}})
    for name, h in s["per_household"].items():
        a = m["households"][h["household"]]
        k = scale
        cmp = p2p_comparison("residential-low", (day.year, day.month), import_wh=int(h["import_wh"] * k),
                             export_wh=int(h["export_wh"] * k), bought_wh=int(a["bought_wh"] * k),
                             sold_wh=int(a["sold_wh"] * k), paid_won=Decimal(a["paid"]) * Decimal(k.numerator)
                             / Decimal(k.denominator) / 10**18,
                             received_won=Decimal(a["received"]) * Decimal(k.numerator) / Decimal(k.denominator)
                             / 10**18)
        h.update({"bought_wh": a["bought_wh"], "sold_wh": a["sold_wh"], "ordered_buy_wh": a["ordered_buy_wh"],
                  "ordered_sell_wh": a["ordered_sell_wh"], "noia_paid": _noia(a["paid"]),
                  "noia_received": _noia(a["received"]), "noia_refunded": _noia(a["refunds"]),
                  "balance_ok": a["balance_ok"],
                  "bill_without_p2p_won": float(round(cmp.without_p2p.net_cost_won, 2)),
                  "bill_with_p2p_won": float(round(cmp.with_p2p.net_cost_won, 2)),
                  "savings_won": float(round(cmp.savings_won, 2))})
        s["savings_won"][name] = h["savings_won"]


def _print_market(args: argparse.Namespace, s: dict[str, Any], m: dict[str, Any]) -> None:
    _out(args, "")
    _out(args, f"bills (won): KEPCO residential low voltage, net metering; {s['bill_basis']}; 1 NOIA = 1 won; "
               "net = bill - surplus credit (+ NOIA paid - NOIA received with P2P)")
    _out(args, f"{'household':10} {'import Wh':>9} {'export Wh':>9} {'PV Wh':>7} {'bought Wh':>9} {'sold Wh':>8} "
               f"{'NOIA paid':>10} {'NOIA recv':>10} {'net w/o P2P':>12} {'net w/ P2P':>11} {'savings':>8}")
    for name, h in s["per_household"].items():
        _out(args, f"{name:10} {h['import_wh']:9d} {h['export_wh']:9d} {h['pv_wh']:7d} {h['bought_wh']:9d} "
                   f"{h['sold_wh']:8d} {h['noia_paid']:10.2f} {h['noia_received']:10.2f} "
                   f"{h['bill_without_p2p_won']:12,.0f} {h['bill_with_p2p_won']:11,.0f} {h['savings_won']:8,.0f}")
    c = s["conservation"]
    _out(args, f"{s['trades']} fills, {s['wh_traded']} Wh ordered, {s['wh_delivered']} Wh delivered; "
               f"{s['settlements_final']} settle-batches final for {s['intervals_settled']} intervals; "
               f"NOIA escrowed {s['noia_escrowed']} = paid {s['noia_paid']} + refunded {s['noia_refunded']}: "
               f"{c['money_ok']}; Wh paid <= Wh metered: {c['energy_ok']}; balances = genesis + received - paid: "
               f"{c['balances_ok']}; every fill settled exactly once: {c['exactly_once']} "
               f"(unsettled {c['unsettled_fills']}) -> conservation {s['conservation_ok']}")
