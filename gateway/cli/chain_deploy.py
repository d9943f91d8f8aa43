"""``metanoia chain deploy``: NoiaToken + Exchange on an EVM chain, and the deployment record.

    metanoia chain deploy --rpc URL --key FILE --authority ADDR [--supply N] [--interval-seconds 900]
                          [--settle-timeout S] [--max-fee-gwei G] [--out deployment.json] [--json]

The deployer (``--key``, a key file as ``validator init`` writes them, funded with ether for gas)
receives the whole NOIA supply; ``--authority`` is the complex authority that may settle. The
record (gateway/evm/deploy.py) is what ``EvmBackend`` attaches to. Exit 0 deployed; 1 the chain
refused or could not be reached; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register_chain(cs: argparse._SubParsersAction) -> None:
    d = cs.add_parser("deploy", help="deploy NoiaToken + Exchange on an EVM chain; write the deployment record")
    d.add_argument("--rpc", required=True, metavar="URL", help="the EVM chain's JSON-RPC URL")
    d.add_argument("--key", type=Path, required=True, help="key file of the deployer (pays gas, holds the supply)")
    d.add_argument("--authority", required=True, metavar="ADDR", help="the complex authority (settles batches)")
    d.add_argument("--supply", type=int, default=10**9 * 10**18, help="NOIA minted to the deployer (smallest unit)")
    d.add_argument("--interval-seconds", type=int, default=900, help="delivery interval length (default 900)")
    d.add_argument("--settle-timeout", type=int, default=7 * 86_400,
                   help="seconds after an interval's end before its fills may be reclaimed (default 7 days)")
    d.add_argument("--max-fee-gwei", type=float, default=100.0, help="EIP-1559 max fee per gas (default 100)")
    d.add_argument("--out", type=Path, default=Path("deployment.json"), help="the record (default ./deployment.json)")
    d.add_argument("--json", action="store_true", help="the record's addresses as one JSON object, last line")
    d.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    from gateway.cli.validator import read_key
    from gateway.evm.deploy import DeployError, deploy, write_record
    from gateway.validator.crypto import parse_address, private_key

    try:
        key = private_key(read_key(args.key))
        authority = parse_address(args.authority)
        if args.supply <= 0 or args.supply >= 1 << 256 or args.interval_seconds <= 0 or args.settle_timeout <= 0:
            raise ValueError("--supply, --interval-seconds and --settle-timeout must be positive (supply < 2**256)")
        if args.max_fee_gwei < 0:
            raise ValueError("--max-fee-gwei must be >= 0")
    except (ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        dep = deploy(args.rpc, key, authority, args.supply, interval_seconds=args.interval_seconds,
                     settle_timeout=args.settle_timeout, max_fee=int(args.max_fee_gwei * 10**9))
        write_record(args.out, dep)
    except (DeployError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # web3 / the node: connection refused, refused tx, ...
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    doc = dep.to_json()
    print(f"NoiaToken {doc['token']}, Exchange {doc['exchange']} on chain {dep.chain_id} (block {dep.block}); "
          f"record: {args.out}")
    if args.json:
        print(json.dumps({k: doc[k] for k in ("chain_id", "token", "exchange", "complex_authority",
                                              "interval_seconds", "settle_timeout", "block")}))
    return EXIT_OK
