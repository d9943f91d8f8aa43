"""``metanoia market``: forecasts, manual orders, mechanism comparison (docs/market.md).

    metanoia market forecast --db DB HOUSEHOLD --interval T [--json]
    metanoia market backtest --db DB HOUSEHOLD --days N
    metanoia market compare  --db DB --grid G --wallet-dir DIR --interval T
    metanoia market order place  HOUSEHOLD --side sell|buy --interval T --wh N --price P [--mechanism rfq|auction]
    metanoia market order list   [--household H]
    metanoia market order cancel HOUSEHOLD ORDER_ID [--chain URL]

Order commands take ``--db`` (the gateway's database), ``--wallet-dir`` (the
master secret from ``--secret-file`` or $METANOIA_WALLET_SECRET), ``--grid`` and
``--genesis`` (the chain's domain). Each prints one JSON object on its last
line; errors go to stderr with their reason, exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("market", help="forecasts, manual orders, mechanism comparison")
    msub = p.add_subparsers(dest="market_cmd", metavar="CMD", required=True)

    f = msub.add_parser("forecast", help="a household's explained forecast for an interval")
    f.add_argument("household")
    f.add_argument("--db", required=True, type=Path)
    f.add_argument("--interval", type=int, help="interval start (unix s); default: the next one")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_forecast)

    b = msub.add_parser("backtest", help="forecast error (MAE, bias) against the meter over the last days")
    b.add_argument("household")
    b.add_argument("--db", required=True, type=Path)
    b.add_argument("--days", type=int, default=7)
    b.set_defaults(func=cmd_backtest)

    c = msub.add_parser("compare", help="RFQ vs call auction on one interval's forecast surplus and deficit")
    c.add_argument("--db", required=True, type=Path)
    c.add_argument("--grid", required=True)
    c.add_argument("--wallet-dir", required=True, type=Path)
    c.add_argument("--secret-file", type=Path)
    c.add_argument("--interval", type=int)
    c.set_defaults(func=cmd_compare)

    o = msub.add_parser("order", help="a homeowner's manual orders")
    osub = o.add_subparsers(dest="order_cmd", metavar="CMD", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", required=True, type=Path, help="the gateway's database")
        q.add_argument("--wallet-dir", required=True, type=Path)
        q.add_argument("--secret-file", type=Path, help="master secret (0600); default $METANOIA_WALLET_SECRET")
        q.add_argument("--grid", required=True)
        q.add_argument("--genesis", required=True, type=Path, help="the chain's genesis (chain id, contract)")

    for parent in (o,):
        common(parent)
    pl = osub.add_parser("place", help="sell or buy Wh for an interval at a limit price (NOIA units per Wh)")
    pl.add_argument("household")
    pl.add_argument("--side", required=True, choices=("sell", "buy"))
    pl.add_argument("--interval", required=True, type=int)
    pl.add_argument("--wh", required=True, type=int)
    pl.add_argument("--price", required=True, type=int, help="limit, NOIA smallest units per Wh")
    pl.add_argument("--mechanism", choices=("rfq", "auction"), default="rfq")
    pl.set_defaults(func=cmd_place)
    ls = osub.add_parser("list", help="manual orders and their states")
    ls.add_argument("--household")
    ls.set_defaults(func=cmd_list)
    cn = osub.add_parser("cancel", help="withdraw an order (a cancel tx if it was signed)")
    cn.add_argument("household")
    cn.add_argument("order_id")
    cn.add_argument("--chain", help="the validator's JSON-RPC URL (signed orders are cancelled on chain)")
    cn.add_argument("--timeout", type=float, default=30.0)
    cn.set_defaults(func=cmd_cancel)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _next_interval() -> int:
    now = int(time.time())
    return now - now % 900 + 900


def _engine(db: Path):  # type: ignore[no-untyped-def]
    from gateway import db as gdb
    from gateway.aggregator.intervals import IntervalEngine
    return IntervalEngine(gdb.connect(db))


def cmd_forecast(args: argparse.Namespace) -> int:
    from gateway.market.forecast import Forecaster, ForecastError
    try:
        f = Forecaster(_engine(args.db)).forecast(args.household, args.interval or _next_interval(),
                                                  min(args.interval or _next_interval(), int(time.time())))
    except (ForecastError, Exception) as exc:  # noqa: BLE001 - a CLI reports every failure
        return _fail(exc)
    if not args.json:
        print("\n".join(f.explanation))
    print(json.dumps(f.to_json()))
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from gateway.market.forecast import DAY, Forecaster, backtest_source
    end = int(time.time()) // 900 * 900
    try:
        bt = backtest_source(Forecaster(_engine(args.db)), args.household, end - args.days * DAY, end)
    except Exception as exc:  # noqa: BLE001
        return _fail(exc)
    print(json.dumps(bt.to_json()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from gateway.market.forecast import Forecaster
    from gateway.market.mechanisms import books_from_net, compare
    from gateway.market.wallet import Wallet, load_master_secret
    try:
        engine = _engine(args.db)
        start = args.interval or _next_interval()
        w = Wallet(args.wallet_dir, load_master_secret(file=args.secret_file))
        fc = Forecaster(engine)
        net, asks, bids, reserve = {}, {}, {}, {}
        for h in engine.households(args.grid):
            net[h] = fc.forecast(h, start, min(start, int(time.time()))).net_wh
            p = w.policy(h) if h in w.households() else None
            if p is not None and p.sell_floor_per_wh is not None:
                asks[h], reserve[h] = max(1, p.sell_floor_per_wh), p.reserve_wh
            if p is not None and p.buy_cap_per_wh is not None:
                bids[h] = p.buy_cap_per_wh
        b, a = books_from_net(net, ask_price=asks, bid_price=bids, reserve_wh=reserve)
        print(json.dumps(compare(start, b, a, net)))
    except Exception as exc:  # noqa: BLE001
        return _fail(exc)
    return 0


def _orders(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway import db as gdb
    from gateway.market.orders import ManualOrders
    from gateway.market.trades import TradeLog
    from gateway.market.wallet import Wallet, load_master_secret
    from gateway.validator.genesis import load_genesis
    g = load_genesis(args.genesis)
    conn = gdb.connect(args.db)
    wallet = Wallet(args.wallet_dir, load_master_secret(file=args.secret_file))
    return ManualOrders(conn, wallet, args.grid, g.params().domain, trades=TradeLog(conn)), g


def _run(args: argparse.Namespace, fn: Any) -> int:
    try:
        orders, g = _orders(args)
        out = fn(orders, g)
    except Exception as exc:  # noqa: BLE001 - WalletError, OrderError, OSError: reported with the reason
        return _fail(exc)
    print(json.dumps(out))
    return 0


def cmd_place(args: argparse.Namespace) -> int:
    return _run(args, lambda o, g: o.place(args.household, args.side, args.interval, args.wh, args.price,
                                           mechanism=args.mechanism).to_json())


def cmd_list(args: argparse.Namespace) -> int:
    return _run(args, lambda o, g: {"orders": [r.to_json() for r in o.list(args.household)]})


def cmd_cancel(args: argparse.Namespace) -> int:
    def go(o: Any, g: Any) -> Any:
        async def run() -> Any:
            chain = None
            if args.chain:
                from gateway.chain_client import BundledBackend, Outbox, OutboxChainClient
                from gateway.market.wallet import WalletKeyring
                backend = BundledBackend.from_genesis(args.chain, g)
                chain = OutboxChainClient(backend, Outbox(args.db, backend.name), WalletKeyring(o.wallet))
                chain.start()
            try:
                return (await o.cancel(args.order_id, args.household, chain, timeout=args.timeout)).to_json()
            finally:
                if chain is not None:
                    await chain.aclose()
        return asyncio.run(run())
    return _run(args, go)
