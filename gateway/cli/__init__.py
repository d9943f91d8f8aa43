"""The ``metanoia`` console script: one sub-command group per module here.

Each module in ``COMMANDS`` exposes ``register(subparsers)`` and sets
``func(args) -> int`` on its parsers, so the groups stay independent.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("demo", "meter", "device", "telemetry", "bench", "gateway", "evidence", "validator", "peer", "oracle", "wallet", "indexer", "settle", "market", "recs", "aggregate", "chain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metanoia", description="Metanoia Edge: P2P electricity trading at the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gateway.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
