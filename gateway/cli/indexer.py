"""``metanoia indexer``: ``run`` the Indexer's JSON-RPC service, ``status`` of its database."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

DEFAULT_CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"


def register(sub: argparse._SubParsersAction) -> None:
    ix = sub.add_parser("indexer", help="the market's Indexer: makers post intents, takers find them")
    xs = ix.add_subparsers(dest="indexer_command", metavar="ACTION", required=True)
    run = xs.add_parser("run", help="serve indexer_* JSON-RPC over HTTP")
    run.add_argument("--db", type=Path, required=True, help="SQLite file (created if missing)")
    run.add_argument("--listen", default="127.0.0.1:8702", metavar="HOST:PORT")
    _domain_args(run)
    run.add_argument("--max-per-maker", type=int, default=200, help="live intents per maker")
    run.add_argument("--ip-rate", type=float, default=10.0, help="writes per second per source IP")
    run.add_argument("--maker-rate", type=float, default=2.0, help="writes per second per maker")
    run.set_defaults(func=cmd_run)
    status = xs.add_parser("status", help="live intents and makers in the database")
    status.add_argument("--db", type=Path, required=True)
    _domain_args(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)


def _domain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chain-id", type=int, default=31337, help="EIP-712 domain: chain id (as the orders')")
    p.add_argument("--contract", default=DEFAULT_CONTRACT, help="EIP-712 domain: verifying contract")


def _setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway.market.indexer import IndexerConfig
    from gateway.validator.crypto import parse_address
    from gateway.validator.order import Domain

    domain = Domain(args.chain_id, parse_address(args.contract))
    cfg = IndexerConfig(max_per_maker=getattr(args, "max_per_maker", 200), ip_rate=getattr(args, "ip_rate", 10.0),
                        maker_rate=getattr(args, "maker_rate", 2.0))
    return domain, cfg


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.market.indexer import Indexer, IndexerService

    try:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {args.listen!r}")
        domain, cfg = _setup(args)
        indexer = Indexer(args.db, domain, cfg)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("gateway.market.indexer").setLevel(logging.INFO)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner, (h, p) = await IndexerService(indexer).start(host, int(port))
        print(json.dumps({"ready": True, "listen": f"{h}:{p}", "db": str(args.db)}), flush=True)
        try:
            while not stop.is_set():
                indexer.prune()
                try:
                    await asyncio.wait_for(stop.wait(), cfg.prune_every_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            await runner.cleanup()
            indexer.conn.close()

    asyncio.run(main())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.market.indexer import Indexer

    domain, cfg = _setup(args)
    st = Indexer(args.db, domain, cfg).status()
    del st["limits"], st["uptime_s"], st["accepted"], st["refused"]  # process counters: not in the file
    if not args.json:
        print(f"intents {st['intents']} (sell {st['sell']}, buy {st['buy']}) from {st['makers']} makers")
    print(json.dumps(st))
    return 0
