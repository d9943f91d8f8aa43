"""``metanoia recs``: renewable energy certificates from metered PV (docs/recs.md).

``issue`` counts the PV of rooted intervals and issues every whole MWh; ``list``,
``show`` (evidence, history, audit) and ``balance`` read; ``transfer``, ``retire``,
``offer``, ``withdraw`` and ``sell`` change a certificate, acting ``--as`` its owner.
Exit 0 done, 1 refused (the reason code is printed), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recs", help="renewable energy certificates: 1 per MWh of metered PV")
    ps = p.add_subparsers(dest="recs_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", type=Path, required=True, help="the gateway database")
        q.add_argument("--interval-s", type=int, default=900, help="interval length (default 900)")
        q.add_argument("--json", action="store_true", help="one JSON object on the last line")

    q = ps.add_parser("issue", help="count new metered PV of rooted intervals; issue every whole MWh")
    common(q)
    q.add_argument("--grid", required=True)
    q.add_argument("--household", help="only this producer (refused when it gets no certificate)")
    q.add_argument("--issuer", default=None, help="issuing gateway id (default metanoia-gateway/GRID)")
    q.add_argument("--by", default="operator", help="who runs the issuance (recorded)")
    q.set_defaults(func=cmd_issue)

    q = ps.add_parser("list", help="certificates, filtered")
    common(q)
    q.add_argument("--grid")
    q.add_argument("--owner")
    q.add_argument("--producer")
    q.add_argument("--state", choices=("issued", "offered", "transferred", "retired"))
    q.add_argument("--offers", action="store_true", help="list open offers instead")
    q.set_defaults(func=cmd_list)

    q = ps.add_parser("show", help="one certificate: evidence (intervals, roots), history, audit")
    common(q)
    q.add_argument("serial")
    q.set_defaults(func=cmd_show)

    q = ps.add_parser("balance", help="a producer's counted, certified, carried and owed Wh")
    common(q)
    q.add_argument("--grid", required=True)
    q.add_argument("household")
    q.set_defaults(func=cmd_balance)

    q = ps.add_parser("transfer", help="give a certificate to another household or 0x address")
    common(q)
    q.add_argument("serial")
    q.add_argument("--to", required=True)
    q.add_argument("--as", dest="actor", required=True, help="the current owner")
    q.add_argument("--note")
    q.set_defaults(func=cmd_transfer)

    q = ps.add_parser("retire", help="retire a certificate for good")
    common(q)
    q.add_argument("serial")
    q.add_argument("--as", dest="actor", required=True, help="the current owner")
    q.add_argument("--reason", required=True)
    q.add_argument("--beneficiary", help="on whose behalf (default: the owner)")
    q.set_defaults(func=cmd_retire)

    q = ps.add_parser("offer", help="list a certificate for sale (a REC manual order)")
    common(q)
    q.add_argument("serial")
    q.add_argument("--as", dest="actor", required=True, help="the current owner")
    q.add_argument("--price", type=int, required=True, help="NOIA base units for the certificate")
    q.set_defaults(func=cmd_offer)

    q = ps.add_parser("withdraw", help="withdraw a certificate's open offer")
    common(q)
    q.add_argument("serial")
    q.add_argument("--as", dest="actor", required=True)
    q.set_defaults(func=cmd_withdraw)

    q = ps.add_parser("sell", help="record the sale of an open offer (payment made off-chain)")
    common(q)
    q.add_argument("offer")
    q.add_argument("--buyer", required=True)
    q.add_argument("--payment-ref", required=True, help="reference of the NOIA payment")
    q.add_argument("--by", default="operator")
    q.set_defaults(func=cmd_sell)


def _registry(args: argparse.Namespace, issuer: str | None = None) -> Any:
    from gateway.db import open_gateway_db
    from gateway.market.recs import RecRegistry
    if args.interval_s <= 0:
        raise SystemExit("--interval-s must be positive")
    return RecRegistry(open_gateway_db(args.db), issuer=issuer or "metanoia-gateway", interval_s=args.interval_s)


def _out(args: argparse.Namespace, doc: dict[str, Any], text: str) -> int:
    if text:
        print(text)
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    return EXIT_OK


def _run(args: argparse.Namespace, fn: Any) -> int:
    from gateway.market.recs import BadRequest, RecError
    try:
        return int(fn())
    except BadRequest as e:
        print(f"metanoia recs {args.recs_command}: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": e.reason, "detail": e.detail}))
        return EXIT_USAGE
    except RecError as e:
        print(f"metanoia recs {args.recs_command}: refused: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": e.reason, "detail": e.detail}))
        return EXIT_REFUSED


def _line(c: Any) -> str:
    from gateway.evidence.roots import iso
    return (f"{c.serial:32} {c.state:11} owner={c.owner} vintage={iso(c.vintage_start)}..{iso(c.vintage_end)} "
            f"intervals={len({(b.device_id, b.start) for b in c.evidence})}")


def cmd_issue(args: argparse.Namespace) -> int:
    def go() -> int:
        reg = _registry(args, args.issuer or f"metanoia-gateway/{args.grid}")
        r = reg.issue(args.grid, household=args.household, by=args.by)
        lines = [f"run {r.run}: {r.claims} interval claim(s), {r.counted_delta_wh:+d} Wh counted, "
                 f"{len(r.certificates)} certificate(s) issued"]
        lines += ["  " + _line(c) for c in r.certificates]
        lines += [f"  {b.household}: {b.certificates} certificate(s), {b.available_wh} Wh carried"
                  + (f", {b.debt_wh} Wh owed" if b.debt_wh else "") for b in r.balances]
        return _out(args, r.to_json(), "\n".join(lines))
    return _run(args, go)


def cmd_list(args: argparse.Namespace) -> int:
    def go() -> int:
        reg = _registry(args)
        if args.offers:
            offers = reg.offers()
            return _out(args, {"offers": [o.to_json() for o in offers]},
                        "\n".join(f"{o.id} {o.serial} seller={o.seller} price={o.price_noia}" for o in offers)
                        or "no open offers")
        certs = reg.list(grid=args.grid, owner=args.owner, producer=args.producer, state=args.state)
        return _out(args, {"certificates": [c.to_json() for c in certs]},
                    "\n".join(_line(c) for c in certs) or "no certificates")
    return _run(args, go)


def cmd_show(args: argparse.Namespace) -> int:
    def go() -> int:
        reg = _registry(args)
        c = reg.get(args.serial)
        problems = reg.audit(args.serial)
        events = reg.history(args.serial)
        lines = [_line(c), f"  producer {c.household}, issuer {c.issuer}, {c.mwh} MWh"]
        lines += [f"  {b.wh:>9} Wh  device {b.device_id.hex()} interval {b.start} root v{b.root_version} "
                  f"{b.root.hex()} ({b.leaf_count} readings)" for b in c.evidence]
        lines += [f"  {e.at} {e.action:8} by {e.actor}: {e.from_owner} -> {e.to_owner} ({e.state_after})"
                  for e in events]
        lines.append("  audit: " + ("ok" if not problems else "; ".join(problems)))
        doc = c.to_json() | {"history": [e.to_json() for e in events], "audit": problems}
        _out(args, doc, "\n".join(lines))
        return EXIT_OK if not problems else EXIT_REFUSED
    return _run(args, go)


def cmd_balance(args: argparse.Namespace) -> int:
    def go() -> int:
        b = _registry(args).balance(args.grid, args.household)
        return _out(args, b.to_json(), f"{b.household}: {b.counted_wh} Wh counted, {b.certificates} certificate(s), "
                                       f"{b.available_wh} Wh carried, {b.debt_wh} Wh owed")
    return _run(args, go)


def cmd_transfer(args: argparse.Namespace) -> int:
    def go() -> int:
        c = _registry(args).transfer(args.serial, args.to, by=args.actor, note=args.note)
        return _out(args, c.to_json(), _line(c))
    return _run(args, go)


def cmd_retire(args: argparse.Namespace) -> int:
    def go() -> int:
        c = _registry(args).retire(args.serial, by=args.actor, reason=args.reason, beneficiary=args.beneficiary)
        return _out(args, c.to_json(), _line(c))
    return _run(args, go)


def cmd_offer(args: argparse.Namespace) -> int:
    def go() -> int:
        o = _registry(args).offer(args.serial, by=args.actor, price_noia=args.price)
        return _out(args, o.to_json(), f"offer {o.id}: {o.serial} at {o.price_noia}")
    return _run(args, go)


def cmd_withdraw(args: argparse.Namespace) -> int:
    def go() -> int:
        c = _registry(args).withdraw(args.serial, by=args.actor)
        return _out(args, c.to_json(), _line(c))
    return _run(args, go)


def cmd_sell(args: argparse.Namespace) -> int:
    def go() -> int:
        c = _registry(args).sell(args.offer, args.buyer, payment_ref=args.payment_ref, by=args.by)
        return _out(args, c.to_json(), _line(c))
    return _run(args, go)
