"""`metanoia bench NAME [options]`: run one benchmark, JSON result as the last line.

Each bench is a module ``bench.<NAME>`` with ``run(args) -> dict`` and,
optionally, ``add_arguments(parser)`` for its own options (``metanoia bench
NAME --help`` lists them). ``run`` prints its progress; this command prints the
returned dict as one JSON object on the last line (docs/DESIGN.md, "Machine-
readable output"). A new bench plugs in with one line in ``BENCHES``.

Exit status: 0 the bench ran and its measurement is valid; 1 it ran but reports
``"valid": false`` (or failed); 2 unknown bench or bad options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

# name -> (module, one-line description)
BENCHES: dict[str, tuple[str, str]] = {
    "firmware": ("bench.firmware", "bytes per signed reading; bytes allocated per read-sign-buffer cycle on MicroPython"),
    "ingest": ("bench.ingest", "signed readings verified and durably stored per second through Mosquitto"),
    "chain": ("bench.chain", "signed fills final per second: one validator, and four sharing the machine"),
    "quote": ("bench.quote", "p99 latency of a signed quote from a maker's Peer at 500 requests/s over HTTP"),
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    listing = "\n".join(f"  {n:10s} {d}" for n, (_m, d) in sorted(BENCHES.items()))
    p = sub.add_parser("bench", help="run a benchmark (last line: one JSON object)",
                       description="Run a benchmark. Available:\n" + listing,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", metavar="NAME", help="which bench: " + ", ".join(sorted(BENCHES)))
    p.add_argument("options", nargs=argparse.REMAINDER, help="the bench's own options (NAME --help)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    name = args.name
    if name not in BENCHES:
        what = "no bench given" if name is None else f"unknown bench {name!r}"
        print(f"metanoia bench: {what}; available: {', '.join(sorted(BENCHES))}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(BENCHES[name][0])
    parser = argparse.ArgumentParser(prog=f"metanoia bench {name}", description=BENCHES[name][1])
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    try:
        opts = parser.parse_args(args.options)
    except SystemExit as e:  # --help (0) or bad options (2)
        return int(e.code or 0)
    result: dict[str, Any] = module.run(opts)
    print(json.dumps(result), flush=True)
    return EXIT_OK if result.get("valid", True) else EXIT_FAILED
