"""``metanoia gateway status [--json]``: the complex at a glance for its operator."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(gsub: argparse._SubParsersAction) -> None:
    p = gsub.add_parser("status", help="devices online, last readings, rejections by reason, backlog, db size")
    p.add_argument("--db", required=True, metavar="FILE")
    p.add_argument("--grid", default=None, metavar="ID")
    p.add_argument("--stale", type=int, default=600, metavar="S", help="no reading for S seconds = not online")
    p.add_argument("--json", action="store_true", help="one JSON object as the last line")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.db import connect
    from gateway.status import gateway_status

    if not Path(args.db).is_file():
        print(f"metanoia gateway status: no database at {args.db}", file=sys.stderr)
        return 2
    conn = connect(args.db, readonly=True)
    try:
        s = gateway_status(conn, args.db, args.grid, stale_s=args.stale)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"grid {s['grid'] or '(all)'}: {s['devices_online']}/{s['devices_total']} devices online, "
          f"{s['readings_stored']} readings stored, {s['quarantined']} quarantined, {s['rejected']} rejected, "
          f"db {s['db_bytes'] / 1e6:.1f} MB")
    print(f"{'device':18} {'name':8} {'state':10} {'firmware':14} {'ack':>7} {'gap':>5} {'last seq':>8} {'last reading (UTC)':20} "
          f"{'import Wh':>10} {'export Wh':>10} {'PV Wh':>10}")
    for dev, i in sorted(s["devices"].items()):
        lr = i.get("last_reading") or {}
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(lr["time"])) if lr.get("time") else "-"
        state = "revoked" if i.get("registry") == "revoked" else ("online" if i["online"] else i["state"])
        print(f"{dev:18} {str(i.get('name') or '-'):8} {state:10} {str(i.get('fw') or '-'):14} {i.get('acked', 0):7} {i.get('gap', 0):5} "
              f"{lr.get('seq', '-'):>8} {when:20} {lr.get('import_wh', '-'):>10} {lr.get('export_wh', '-'):>10} "
              f"{lr.get('pv_wh', '-'):>10}")
    if s["rejections"]:
        print("rejections: " + ", ".join(f"{k} {v}" for k, v in s["rejections"].items()))
    if s["notes"]:
        print("notes: " + ", ".join(f"{k} {v}" for k, v in s["notes"].items()))
    if s["latest_interval"]:
        b = s["latest_interval"]
        print(f"latest interval {time.strftime('%Y-%m-%d %H:%M', time.gmtime(b['start']))} UTC: import {b['import_wh']} Wh, "
              f"export {b['export_wh']} Wh, PV {b['pv_wh']} Wh, net {b['net_wh']} Wh "
              f"({b['reporting']}/{b['devices']} reporting)")
    return 0
