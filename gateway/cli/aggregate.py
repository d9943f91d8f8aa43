"""``metanoia aggregate``: aggregated resources (VPP) of households, day-ahead bids, settlement (docs/aggregation.md).

``create``/``add``/``remove``/``list`` manage resources; ``bid`` makes the day's bid from
the members' forecasts, stores it and writes the export (JSON or CSV); ``settle``
compares the stored bid with metered delivery and prints the deviation report.
Exit 0 done, 1 refused (reason printed), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aggregate", help="aggregated resources (VPP): day-ahead bids and their settlement")
    ps = p.add_subparsers(dest="agg_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", type=Path, required=True, help="the gateway database")
        q.add_argument("--interval-s", type=int, default=900)
        q.add_argument("--json", action="store_true", help="one JSON object on the last line")

    q = ps.add_parser("create", help="a new resource of one grid")
    common(q)
    q.add_argument("resource")
    q.add_argument("--grid", required=True)
    q.add_argument("--name")
    q.set_defaults(func=cmd_create)

    for action, help_ in (("add", "add member households"), ("remove", "remove member households")):
        q = ps.add_parser(action, help=help_)
        common(q)
        q.add_argument("resource")
        q.add_argument("households", nargs="+")
        q.set_defaults(func=cmd_members, action=action)

    q = ps.add_parser("list", help="resources and members")
    common(q)
    q.set_defaults(func=cmd_list)

    q = ps.add_parser("bid", help="the day-ahead bid from the members' forecasts; stored and exported")
    common(q)
    q.add_argument("resource")
    q.add_argument("--day", required=True, help="trading day YYYY-MM-DD (KST)")
    q.add_argument("--resolution", type=int, choices=(900, 3600), default=900, help="seconds per period")
    q.add_argument("--margin-pct", type=int, default=10)
    q.add_argument("--margin-wh", type=int, default=0)
    q.add_argument("--quantum-wh", type=int, default=1000)
    q.add_argument("--lead-s", type=int, default=14 * 3600, help="forecast as of day start minus this")
    q.add_argument("--price", type=int, help="won/kWh (omit: a price-taker bid)")
    q.add_argument("--format", choices=("json", "csv"), default="json")
    q.add_argument("--out", type=Path, help="write the export here (default: stdout)")
    q.add_argument("--dry-run", action="store_true", help="do not store the bid")
    q.set_defaults(func=cmd_bid)

    q = ps.add_parser("settle", help="settle the stored bid against metered delivery; the deviation report")
    common(q)
    q.add_argument("resource")
    q.add_argument("--day", required=True)
    q.add_argument("--rules", type=Path, help="deviation rules JSON (tolerance_pct, min_band_wh, basis, "
                                              "capacity_wh, under_won_per_kwh, over_won_per_kwh)")
    q.set_defaults(func=cmd_settle)


def _agg(args: argparse.Namespace) -> Any:
    from gateway.db import open_gateway_db
    from gateway.market.aggregation import Aggregator
    from gateway.market.forecast import ForecastConfig, Forecaster
    agg = Aggregator(open_gateway_db(args.db), interval_s=args.interval_s)
    agg.forecaster = Forecaster(agg.meter, ForecastConfig(interval_s=args.interval_s))
    return agg


def _run(args: argparse.Namespace, fn: Any) -> int:
    from gateway.market.aggregation import AggregationError
    try:
        return int(fn())
    except AggregationError as e:
        print(f"metanoia aggregate {args.agg_command}: refused: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": e.reason, "detail": e.detail}))
        return EXIT_USAGE if e.reason == "bad_request" else EXIT_REFUSED


def _out(args: argparse.Namespace, doc: dict[str, Any], text: str) -> int:
    if text:
        print(text)
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    return EXIT_OK


def cmd_create(args: argparse.Namespace) -> int:
    def go() -> int:
        agg = _agg(args)
        agg.create(args.resource, args.grid, name=args.name)
        r = agg.resource(args.resource)
        return _out(args, r, f"resource {r['id']} ({r['name']}) in grid {r['grid']}")
    return _run(args, go)


def cmd_members(args: argparse.Namespace) -> int:
    def go() -> int:
        agg = _agg(args)
        members = (agg.add if args.action == "add" else agg.remove)(args.resource, args.households)
        return _out(args, {"resource": args.resource, "members": members},
                    f"{args.resource}: {', '.join(members) or 'no members'}")
    return _run(args, go)


def cmd_list(args: argparse.Namespace) -> int:
    def go() -> int:
        rs = _agg(args).resources()
        return _out(args, {"resources": rs}, "\n".join(f"{r['id']:16} grid={r['grid']} members={','.join(r['members'])}"
                                                       for r in rs) or "no resources")
    return _run(args, go)


def cmd_bid(args: argparse.Namespace) -> int:
    from gateway.market.aggregation import BidConfig, bid_csv, bid_json

    def go() -> int:
        agg = _agg(args)
        cfg = BidConfig(resolution_s=args.resolution, margin_pct=args.margin_pct, margin_wh=args.margin_wh,
                        quantum_wh=args.quantum_wh, lead_s=args.lead_s, price_won_per_kwh=args.price)
        bid = agg.make_bid(args.resource, args.day, cfg)
        rev = None if args.dry_run else agg.submit_bid(bid)
        text = bid_csv(bid) if args.format == "csv" else json.dumps(bid_json(bid), indent=2) + "\n"
        if args.out:
            args.out.write_text(text)
        elif not args.json:
            sys.stdout.write(text)
        summary = {"resource": bid.resource_id, "trading_day": bid.trading_day, "revision": rev,
                   "periods": len(bid.periods), "total_wh": bid.total_wh, "members": list(bid.members),
                   "out": str(args.out) if args.out else None}
        if args.json:
            print(json.dumps(summary, sort_keys=True))
        elif args.out:
            print(f"bid {bid.resource_id} {bid.trading_day}: {bid.total_wh} Wh over {len(bid.periods)} periods "
                  f"-> {args.out}")
        return EXIT_OK
    return _run(args, go)


def cmd_settle(args: argparse.Namespace) -> int:
    from gateway.market.aggregation import DeviationRules

    def go() -> int:
        rules = DeviationRules.from_json(json.loads(args.rules.read_text())) if args.rules else DeviationRules()
        rep = _agg(args).settle(args.resource, args.day, rules)
        doc = rep.to_json()
        lines = [f"{p.period:3} {p.state:8} bid={p.bid_wh} delivered={p.delivered_wh} deviation={p.deviation_wh:+d} "
                 f"band={p.band_wh} outside={p.outside_wh} penalty={p.penalty_won} won"
                 for p in rep.periods if p.state == "settled"]
        lines.append(f"settled {doc['settled']}, pending {doc['pending']}, deviation {doc['deviation_wh']:+d} Wh, "
                     f"penalty {doc['penalty_won']} won")
        return _out(args, doc, "\n".join(lines))
    return _run(args, go)
