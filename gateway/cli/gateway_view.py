"""``metanoia gateway view operator|household``: the pages' figures on the command line (docs/web-readmodel.md).

    metanoia gateway view operator  --db DB --grid ID [--validator URL ...] [--outbox FILE ...] [--day T] [--json]
    metanoia gateway view household HOUSEHOLD --db DB --grid ID [--wallet-dir DIR [--secret-file F]] ... [--json]

The same read model the web pages render (``gateway.web.readmodel``), for
operators who script the gateway: a few human-readable lines, or with
``--json`` one JSON object as the last line. Without ``--wallet-dir`` and its
master secret the household's policy and manual orders are left out (the
wallet's records are MAC-checked with that secret). Exit 1 with the reason on
stderr when the read model refuses (unknown household, no database, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def register(gsub: argparse._SubParsersAction) -> None:
    v = gsub.add_parser("view", help="the operator's or a household's page as text or JSON")
    vsub = v.add_subparsers(dest="view_cmd", metavar="VIEW", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", required=True, type=Path, help="the gateway's SQLite database")
        q.add_argument("--grid", required=True, metavar="ID")
        q.add_argument("--validator", action="append", default=[], metavar="URL", help="a validator's JSON-RPC URL")
        q.add_argument("--outbox", action="append", default=[], type=Path, metavar="FILE",
                       help="a chain client outbox besides the gateway db (the market's fills)")
        q.add_argument("--tariff", default="residential-low")
        q.add_argument("--day", default=None, metavar="T", help="a day to chart: unix seconds or YYYY-MM-DD (KST)")
        q.add_argument("--timeout", type=float, default=1.0, help="seconds per validator call")
        q.add_argument("--json", action="store_true", help="one JSON object as the last line")

    o = vsub.add_parser("operator", help="devices, the complex's balance, the chain, settlements, the VPP")
    common(o)
    o.set_defaults(func=cmd_operator)
    h = vsub.add_parser("household", help="one household's energy, trades, balance, bill, policy, orders, RECs")
    h.add_argument("household")
    common(h)
    h.add_argument("--wallet-dir", type=Path, help="the wallet (addresses; with its secret: policy and orders)")
    h.add_argument("--secret-file", type=Path, help="the wallet's master secret (0600); default "
                                                    "$METANOIA_WALLET_SECRET if set")
    h.add_argument("--genesis", type=Path, help="the chain's genesis (manual orders)")
    h.set_defaults(func=cmd_household)


def _day(text: str | None) -> float | None:
    if text is None:
        return None
    if text.isdigit():
        return float(text)
    d = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return d.timestamp() + 3 * 3600          # noon KST that day: inside the KST day whatever the zone rules


def _complex(args: argparse.Namespace, wallet: bool = False) -> Any:
    import os

    from gateway.web.readmodel import Complex, Sources
    src = Sources(grid=args.grid, gateway_db=args.db, wallet_dir=getattr(args, "wallet_dir", None),
                  outbox_dbs=tuple(args.outbox), validators=tuple(args.validator),
                  genesis=getattr(args, "genesis", None), tariff=args.tariff, rpc_timeout_s=args.timeout)
    secret = None
    if wallet and src.wallet_dir is not None and (args.secret_file or os.environ.get("METANOIA_WALLET_SECRET")):
        from gateway.market.wallet import load_master_secret
        secret = load_master_secret(file=args.secret_file)
    return Complex.open(src, secret)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def cmd_operator(args: argparse.Namespace) -> int:
    from gateway.web.readmodel import ReadModelError, operator_view, to_json
    try:
        v = asyncio.run(operator_view(_complex(args), time.time(), day=_day(args.day)))
    except (ReadModelError, ValueError, OSError) as exc:
        return _fail(exc)
    if not args.json:
        print(f"grid {v.grid}: {v.devices_online}/{len(v.devices)} devices online, {v.readings_stored} readings, "
              f"{v.rejected} rejected" + (f" ({', '.join(f'{k} {n}' for k, n in v.rejections.items())})"
                                          if v.rejections else ""))
        for d in v.devices:
            print(f"  {d.device_id} {d.household or '-':12} {d.state:10} fw {d.fw or '-':14} "
                  f"last power {d.last_power_w if d.last_power_w is not None else '-'} W")
        c = v.chain
        print(f"chain: height {c.height if c.height is not None else '-'}, {c.up} validator(s) up"
              + (f", down: {', '.join(c.down)}" if c.down else "") + f", quorum {c.quorum}")
        print(f"settlements: {', '.join(f'{k} {n}' for k, n in sorted(v.settlement_states.items())) or 'none'}; "
              f"today: import {sum(b.import_wh for b in v.balance)} Wh, export {sum(b.export_wh for b in v.balance)} "
              f"Wh, P2P {sum(b.p2p_wh for b in v.balance)} Wh")
        for r in v.resources:
            print(f"resource {r.id} ({len(r.members)} members): " + ", ".join(
                f"{b.trading_day} {b.total_wh} Wh bid, {b.settled_periods}/{b.periods} settled" for b in r.bids))
    else:
        print(json.dumps(to_json(v)))
    return 0


def cmd_household(args: argparse.Namespace) -> int:
    from gateway.market.wallet import WalletError
    from gateway.web.readmodel import ReadModelError, household_view, to_json
    try:
        v = asyncio.run(household_view(_complex(args, wallet=True), args.household, time.time(), day=_day(args.day)))
    except (ReadModelError, WalletError, ValueError, OSError) as exc:
        return _fail(exc)
    if not args.json:
        lp = v.live
        print(f"{v.household}: {lp.power_w if lp.power_w is not None else '-'} W"
              + (f" ({lp.age_s:.0f} s ago)" if lp.age_s is not None else "")
              + f"; day: import {v.today.import_wh} Wh, export {v.today.export_wh} Wh, PV {v.today.pv_wh} Wh")
        print(f"balance: {v.balance_noia if v.balance_noia is not None else '- (' + str(v.balance_error) + ')'} NOIA; "
              f"{len(v.fills)} fill(s), {sum(1 for f in v.fills if f.settlement == 'final')} settled")
        b = v.bill
        if b.comparison is not None:
            print(f"bill {b.month}: {b.comparison.without_p2p.net_cost_won:.0f} won without P2P, "
                  f"{b.comparison.with_p2p.net_cost_won:.0f} won with; saved {b.savings_won:.0f} won")
        if v.policy is not None:
            print(f"policy: sell at >= {v.policy.sell_floor_won_kwh} won/kWh, buy at <= {v.policy.buy_cap_won_kwh} "
                  f"won/kWh, reserve {v.policy.reserve_wh} Wh")
    else:
        print(json.dumps(to_json(v)))
    return 0
