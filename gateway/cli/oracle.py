"""``metanoia oracle``: P2P price recommendations and KEPCO bills from the tariff tables.

``price --interval ISO|UNIX --buyer-mtd-kwh X --seller-mtd-kwh Y --supply-wh S --demand-wh D``
prints the recommendation with its components; ``bill --month YYYY-MM --kwh N`` prints a
bill line by line; ``tariff --date YYYY-MM-DD`` the tables in force with their sources;
``serve --port P`` runs the JSON-RPC methods (oracle_getPrice, oracle_getTariff,
oracle_bill). ``--json`` puts one JSON object on the last line. Exit 2 on bad arguments.
See docs/oracle.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation

from gateway.market.tariffs import TariffError

EXIT_OK, EXIT_USAGE = 0, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("oracle", help="P2P price recommendations and KEPCO bills (docs/oracle.md)")
    osub = p.add_subparsers(dest="oracle_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda _a: (p.print_help(), EXIT_USAGE)[1])

    pr = osub.add_parser("price", help="recommended price for one interval, with its components")
    pr.add_argument("--grid", default="demo")
    pr.add_argument("--tariff", default="residential-low", help="residential-low | residential-high")
    pr.add_argument("--interval", required=True, metavar="ISO|UNIX",
                    help="interval start: unix seconds or ISO 8601 (no offset = UTC)")
    pr.add_argument("--buyer-mtd-kwh", required=True, help="buyer's month-to-date metered import, kWh")
    pr.add_argument("--seller-mtd-kwh", required=True,
                    help="seller's month-to-date net import (import - export), kWh; <= 0 = in surplus")
    pr.add_argument("--supply-wh", type=int, default=0, help="complex's forecast supply in the interval, Wh")
    pr.add_argument("--demand-wh", type=int, default=0, help="complex's forecast demand in the interval, Wh")
    pr.add_argument("--won-per-noia", default="1", help="exchange rate (default 1 won per NOIA)")
    pr.add_argument("--interval-s", type=int, default=900)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_price)

    bl = osub.add_parser("bill", help="a month's KEPCO bill, line by line")
    bl.add_argument("--tariff", default="residential-low")
    bl.add_argument("--month", required=True, metavar="YYYY-MM")
    bl.add_argument("--kwh", required=True, type=int)
    bl.add_argument("--json", action="store_true")
    bl.set_defaults(func=cmd_bill)

    ta = osub.add_parser("tariff", help="the table and surcharges in force on a date, with sources")
    ta.add_argument("--tariff", default="residential-low")
    ta.add_argument("--date", default=None, metavar="YYYY-MM-DD", help="default: today (KST)")
    ta.add_argument("--json", action="store_true")
    ta.set_defaults(func=cmd_tariff)

    sv = osub.add_parser("serve", help="serve the oracle's JSON-RPC methods over HTTP")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8547)
    sv.add_argument("--tariff", default="residential-low")
    sv.add_argument("--won-per-noia", default="1")
    sv.set_defaults(func=cmd_serve)


def _interval(v: str) -> int:
    if v.isdigit():
        return int(v)
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def _rate(v: str) -> Decimal:
    try:
        return Decimal(v)
    except InvalidOperation:
        raise TariffError("bad_rate", f"not a number: {v!r}") from None


def _usage(exc: Exception) -> int:
    print(f"metanoia oracle: {exc}", file=sys.stderr)
    return EXIT_USAGE


def cmd_price(args: argparse.Namespace) -> int:
    from gateway.market.oracle import Oracle
    try:
        o = Oracle(tariff=args.tariff, won_per_noia=_rate(args.won_per_noia), interval_s=args.interval_s)
        r = o.price(args.grid, _interval(args.interval), args.buyer_mtd_kwh, args.seller_mtd_kwh,
                    args.supply_wh, args.demand_wh)
    except (TariffError, ValueError) as exc:
        return _usage(exc)
    print(f"{r.grid} interval {r.interval_start} ({r.day} KST), {r.tariff}")
    print(f"  buyer ceiling  {r.buyer.won_per_kwh:>12} won/kWh  ({r.buyer.rule}, {r.buyer.block})")
    print(f"  seller floor   {r.seller.won_per_kwh:>12} won/kWh  ({r.seller.rule}, {r.seller.block or '-'})")
    print(f"  midpoint       {r.midpoint:>12} won/kWh")
    print(f"  adjustment     {r.adjustment:>12} won/kWh  (supply {r.supply_wh} Wh, demand {r.demand_wh} Wh)")
    print(f"  price          {r.price_won_per_kwh:>12} won/kWh  = {r.noia_units_per_wh} NOIA units/Wh"
          f"{'' if r.tradeable else '  (NOT tradeable)'}")
    for line in r.explanation:
        print(f"  - {line}")
    for c in r.caveats:
        print(f"  caveat: {c}")
    if args.json:
        print(json.dumps(r.to_json(), ensure_ascii=False, separators=(",", ":")))
    return EXIT_OK


def cmd_bill(args: argparse.Namespace) -> int:
    from gateway.market.bill import bill
    try:
        b = bill(args.kwh, args.tariff, args.month)
    except TariffError as exc:
        return _usage(exc)
    print(b.render())
    if args.json:
        print(json.dumps(b.to_json(), ensure_ascii=False, separators=(",", ":")))
    return EXIT_OK


def cmd_tariff(args: argparse.Namespace) -> int:
    from gateway.market.bill import KST
    from gateway.market.oracle import Oracle
    try:
        day = date.fromisoformat(args.date) if args.date else datetime.now(KST).date()
        info = Oracle(tariff=args.tariff).tariff_info(args.tariff, day)
    except (TariffError, ValueError) as exc:
        return _usage(exc)
    t = info["table"]
    print(f"{t['title']} in force on {day} (from {t['effective']}, verified={t['verified']})")
    print(f"  energy won/kWh {t['energy_won_per_kwh']}, base won {t['base_won']}, "
          f"tiers {t['bounds_other_kwh']} (summer {t['bounds_summer_kwh']})")
    print(f"  super-user {t['super_user_energy_won_per_kwh']} won/kWh above {t['super_user_above_kwh']} kWh "
          f"in months {t['super_user_months']}")
    for k, r in info["surcharges"].items():
        print(f"  {k:<16} {r['value']:>8} from {r['effective']} (verified={r['verified']})")
    print(f"  source: {t['source']}")
    if args.json:
        print(json.dumps(info, ensure_ascii=False, separators=(",", ":")))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.market.oracle import Oracle
    try:
        o = Oracle(tariff=args.tariff, won_per_noia=_rate(args.won_per_noia))
    except TariffError as exc:
        return _usage(exc)

    async def run() -> None:
        runner, addr = await o.server().start(args.host, args.port)
        print(f"oracle JSON-RPC on http://{addr[0]}:{addr[1]}/", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return EXIT_OK
