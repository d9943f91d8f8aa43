"""``metanoia chain``: anchor the bundled side chain to a main chain, and verify against the anchors.

- ``chain deploy-registry --main-rpc URL --genesis FILE --key FILE``: the CheckpointRegistry for the side
  chain of that genesis (gateway/anchor/deploy.py).
- ``chain anchor --rpc SIDE_URL... --main-rpc URL --registry ADDR --key FILE [--every N]``: the relayer
  (gateway/anchor/relayer.py), until SIGINT/SIGTERM, or ``--rounds N``.
- ``chain checkpoints --main-rpc URL --registry ADDR [--rpc SIDE_URL]``: what is anchored, how far behind.
- ``chain verify --checkpoint --rpc SIDE_URL --main-rpc URL --registry ADDR --block H [--tx HASH] [--genesis FILE]
  [--json]``:
  exit 0 when the block (and the tx) are covered by an anchored checkpoint, 1 when the proof fails (the
  reason says where), 2 on bad arguments.

Other chain sub-commands register from their own modules into ``SUBCOMMANDS`` (one line each).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

SUBCOMMANDS: tuple[str, ...] = ("chain_deploy",)     # more ``gateway.cli.<module>`` with register_chain(subparsers)


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("chain", help="EVM main chain: deploy contracts, anchor the bundled chain, verify")
    cs = c.add_subparsers(dest="chain_command", metavar="ACTION", required=True)

    r = cs.add_parser("deploy-registry", help="deploy the CheckpointRegistry for a side chain (from its genesis)")
    r.add_argument("--main-rpc", required=True, metavar="URL", help="the main (EVM) chain's JSON-RPC URL")
    r.add_argument("--genesis", type=Path, required=True, help="the side chain's genesis file")
    r.add_argument("--key", type=Path, required=True, help="key file of the account that pays the deployment")
    r.add_argument("--json", action="store_true", help="one JSON object as the last line")
    r.set_defaults(func=cmd_deploy_registry)

    a = cs.add_parser("anchor", help="relay checkpoints signed by > 2/3 of the authorities into the registry")
    a.add_argument("--rpc", nargs="+", required=True, metavar="SIDE_URL", help="the validators' JSON-RPC URLs")
    a.add_argument("--main-rpc", required=True, metavar="URL", help="the main (EVM) chain's JSON-RPC URL")
    a.add_argument("--registry", required=True, metavar="ADDR", help="the CheckpointRegistry's address")
    a.add_argument("--key", type=Path, required=True, help="key file of the main-chain account that pays gas")
    a.add_argument("--side-key", type=Path, default=None,
                   help="an authority's key file: also record each anchored checkpoint on the side chain")
    a.add_argument("--every", type=int, default=10, metavar="N", help="anchor every N final blocks (default 10)")
    a.add_argument("--max-age", type=float, default=None, metavar="SECONDS",
                   help="also anchor once the last checkpoint is this old in side-chain block time")
    a.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="seconds between rounds")
    a.add_argument("--confirmations", type=int, default=1, metavar="K",
                   help="main-chain blocks, the receipt's included, before a checkpoint counts (default 1: PoA)")
    a.add_argument("--journal", type=Path, default=Path("anchor.db"),
                   help="the relayer's crash-safe journal (SQLite; default ./anchor.db)")
    a.add_argument("--rounds", type=int, default=None, help="stop after this many rounds (default: run)")
    a.add_argument("--json", action="store_true", help="on exit, one JSON object of counters as the last line")
    a.set_defaults(func=cmd_anchor)

    k = cs.add_parser("checkpoints", help="the checkpoints anchored in a registry, and how far the side chain is ahead")
    k.add_argument("--main-rpc", required=True, metavar="URL")
    k.add_argument("--registry", required=True, metavar="ADDR")
    k.add_argument("--rpc", default=None, metavar="SIDE_URL", help="a side-chain RPC: also show its final height")
    k.add_argument("--last", type=int, default=10, metavar="N", help="list the last N (default 10)")
    k.add_argument("--from-block", type=int, default=0, help="main-chain block to search checkpoint logs from")
    k.add_argument("--json", action="store_true", help="one JSON object as the last line")
    k.set_defaults(func=cmd_checkpoints)

    v = cs.add_parser("verify", help="prove a side-chain block and tx are covered by an anchored checkpoint")
    v.add_argument("--checkpoint", action="store_true", required=True,
                   help="verify against the checkpoints anchored in the registry")
    v.add_argument("--rpc", required=True, metavar="SIDE_URL", help="a side-chain JSON-RPC URL (not trusted)")
    v.add_argument("--main-rpc", required=True, metavar="URL", help="the main chain's JSON-RPC URL (trusted)")
    v.add_argument("--registry", required=True, metavar="ADDR")
    v.add_argument("--block", type=int, default=None, metavar="HEIGHT",
                   help="the block to prove (with --tx it may be left out: the block the side chain names)")
    v.add_argument("--tx", default=None, metavar="TXHASH", help="also prove this tx is in the block")
    v.add_argument("--from-block", type=int, default=0, help="main-chain block to search checkpoint logs from")
    v.add_argument("--genesis", type=Path, default=None,
                   help="the side chain's genesis file: check the registry anchors this chain")
    v.add_argument("--json", action="store_true", help="one JSON object as the last line")
    v.set_defaults(func=cmd_verify)

    for name in SUBCOMMANDS:
        importlib.import_module(f"gateway.cli.{name}").register_chain(cs)


def _address(text: str) -> bytes:
    from gateway.validator.crypto import parse_address
    return parse_address(text)


def cmd_deploy_registry(args: argparse.Namespace) -> int:
    from gateway.anchor.deploy import deploy_registry
    from gateway.anchor.errors import AnchorError
    from gateway.anchor.evm import EvmRpc
    from gateway.chain_client.errors import ChainClientError
    from gateway.cli.validator import read_key
    from gateway.validator.checkpoint import threshold
    from gateway.validator.crypto import to_checksum
    from gateway.validator.errors import GenesisError
    from gateway.validator.genesis import load_genesis

    try:
        genesis = load_genesis(args.genesis)
        secret = read_key(args.key)
    except (ValueError, OSError, GenesisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> Any:
        evm = EvmRpc(args.main_rpc)
        try:
            return await deploy_registry(evm, secret, genesis)
        finally:
            await evm.aclose()
    try:
        dep = asyncio.run(main())
    except (AnchorError, ChainClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"CheckpointRegistry {to_checksum(dep.address)} on chain {dep.chain_id} (block {dep.block}) for side chain "
          f"0x{dep.genesis_hash.hex()}, {len(dep.authorities)} authorities "
          f"(threshold {threshold(len(dep.authorities))})")
    if args.json:
        print(json.dumps({"registry": to_checksum(dep.address), "chain_id": dep.chain_id, "block": dep.block,
                          "tx": "0x" + dep.tx_hash.hex(), "genesis_hash": "0x" + dep.genesis_hash.hex(),
                          "authorities": [to_checksum(a) for a in dep.authorities]}))
    return 0


def cmd_anchor(args: argparse.Namespace) -> int:
    from gateway.anchor.errors import AnchorError
    from gateway.anchor.relayer import Relayer, RelayerConfig
    from gateway.cli.validator import read_key

    try:
        cfg = RelayerConfig(side_urls=tuple(args.rpc), main_url=args.main_rpc, registry=_address(args.registry),
                            key=read_key(args.key), journal=args.journal, every=args.every, poll=args.poll,
                            confirmations=args.confirmations, max_age=args.max_age,
                            side_key=read_key(args.side_key) if args.side_key else None)
        if args.every < 1 or args.confirmations < 1 or (args.max_age is not None and args.max_age <= 0):
            raise ValueError("--every and --confirmations must be >= 1, --max-age > 0")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers or logging.getLogger().level > logging.INFO:
        logging.getLogger("gateway.anchor").setLevel(logging.INFO)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> dict[str, int] | None:
        try:
            relayer = Relayer(cfg)
        except AnchorError as exc:      # e.g. journal_in_use: another relayer runs on this journal
            print(f"error: {exc}", file=sys.stderr)
            return None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await relayer.run(stop, rounds=args.rounds)
        finally:
            await relayer.aclose()
        return relayer.counters

    counters = asyncio.run(main())
    if counters is None:
        return 2
    if args.json:
        print(json.dumps({"counters": counters}))
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from gateway.anchor.errors import AnchorError
    from gateway.anchor.evm import EvmRpc
    from gateway.anchor.registry import Registry
    from gateway.chain_client.errors import ChainClientError
    from gateway.chain_client.rpc import JsonRpcClient

    try:
        address = _address(args.registry)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> dict[str, Any]:
        evm = EvmRpc(args.main_rpc)
        try:
            reg = Registry(evm, address)
            heights = (await reg.anchored_heights(args.from_block))[-max(0, args.last):] if args.last else []
            latest = await reg.latest()      # read after the logs: never below the last one listed
            rows = []
            for h in heights:
                cp = await reg.at(h)
                if cp is not None:
                    rows.append({"height": h, "block_hash": "0x" + cp.block_hash.hex(),
                                 "state_root": "0x" + cp.state_root.hex()})
            out: dict[str, Any] = {"registry": args.registry, "genesis_hash": "0x" + (await reg.genesis_hash()).hex(),
                                   "authorities": len(await reg.authorities()), "latest": latest.height,
                                   "checkpoints": rows}
        finally:
            await evm.aclose()
        if args.rpc:
            async with JsonRpcClient(args.rpc) as side:
                final = int(await side.call("chain_finalizedNumber"))
            out["side_final"] = final
            out["unanchored_blocks"] = max(0, final - latest.height)
        return out
    try:
        out = asyncio.run(main())
    except (AnchorError, ChainClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"registry {out['registry']}: side chain {out['genesis_hash']}, {out['authorities']} authorities, "
          f"latest checkpoint at height {out['latest']}")
    for r in out["checkpoints"]:
        print(f"  {r['height']:>10}  {r['block_hash']}")
    if "side_final" in out:
        print(f"side chain final height {out['side_final']}: {out['unanchored_blocks']} blocks not yet anchored")
    if args.json:
        print(json.dumps(out))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.anchor.evm import EvmRpc
    from gateway.anchor.registry import Registry
    from gateway.anchor.verify import verify_checkpoint
    from gateway.chain_client.rpc import JsonRpcClient
    from gateway.validator.errors import GenesisError
    from gateway.validator.genesis import load_genesis

    try:
        registry = _address(args.registry)
        tx = bytes.fromhex(args.tx.removeprefix("0x")) if args.tx else None
        if tx is not None and len(tx) != 32:
            raise ValueError("--tx: a 32-byte hash")
        genesis_hash = load_genesis(args.genesis).hash if args.genesis else None
        if args.block is None and tx is None:
            raise ValueError("--block HEIGHT, --tx TXHASH or both")
        if args.block is not None and args.block < 1:
            raise ValueError("--block: a height >= 1 (block 0 is the genesis)")
    except (ValueError, OSError, GenesisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> dict[str, Any]:
        evm = EvmRpc(args.main_rpc)
        side = JsonRpcClient(args.rpc)
        try:
            v = await verify_checkpoint(side, Registry(evm, registry), args.block, tx, from_block=args.from_block,
                                        genesis_hash=genesis_hash)
        finally:
            await side.aclose()
            await evm.aclose()
        return v.to_json()

    out = asyncio.run(main())
    if out["ok"]:
        cp = out["checkpoint"]
        assert isinstance(cp, dict)
        print(f"block {out['block']} ({out['block_hash']}) is covered by the checkpoint at height {cp['height']} "
              f"({cp['block_hash']}), {out['headers_checked']} headers checked")
        t = out.get("tx")
        if isinstance(t, dict):
            print(f"tx {t['hash']} ({t['type']} from {t['sender']}) is in block {out['block']}: Merkle proof of "
                  f"{t['proof_length']} steps checks against its txRoot")
    else:
        print(f"NOT VERIFIED: {out['reason']}: {out.get('detail', '')}")
    if args.json:
        print(json.dumps(out))
    return 0 if out["ok"] else 1
