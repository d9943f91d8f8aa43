"""``metanoia validator``: ``init`` a test network (genesis + keys), ``run`` a validator node."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import mmap
import os
import signal
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
GC_GEN0_THRESHOLD = 50_000   # net allocations between gen-0 collections (CPython default: 700)


def register(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("validator", help="the bundled PoA validator: init a network, run a node")
    vs = v.add_subparsers(dest="validator_command", metavar="ACTION", required=True)
    init = vs.add_parser("init", help="write a genesis and one key file per authority (test networks)")
    init.add_argument("--authorities", type=int, required=True, help="number of authorities (3f+1 tolerates f)")
    init.add_argument("--out", type=Path, required=True, help="folder for genesis.json and keys/")
    init.add_argument("--chain-id", type=int, default=31337)
    init.add_argument("--name", default="metanoia-dev")
    init.add_argument("--block-time", type=float, default=1.0, help="seconds per block (slot)")
    init.add_argument("--interval-seconds", type=int, default=900, help="delivery interval length")
    init.add_argument("--settle-timeout", type=int, default=7 * 86_400,
                      help="seconds after an interval ends before its unsettled fills can be reclaimed")
    init.add_argument("--fund", action="append", default=[], metavar="ADDRESS=AMOUNT",
                      help="initial NOIA balance (smallest units); repeatable")
    init.add_argument("--base-port", type=int, default=26656, help="suggested p2p ports start here (rpc: +100)")
    init.set_defaults(func=cmd_init)

    run = vs.add_parser("run", help="run a validator node")
    run.add_argument("--genesis", type=Path, required=True)
    run.add_argument("--key", type=Path, required=True, help="key file written by init (0600)")
    run.add_argument("--data", type=Path, required=True, help="folder for chain.db and votes.log")
    run.add_argument("--p2p", default="127.0.0.1:26656", metavar="HOST:PORT")
    run.add_argument("--peers", default="", metavar="HOST:PORT,...")
    run.add_argument("--rpc", default="127.0.0.1:8545", metavar="HOST:PORT", help="'' disables JSON-RPC")
    run.add_argument("--workers", type=int, default=None,
                     help="signature-check processes (default: cores; 0 checks in the node process)")
    run.add_argument("--block-time", type=float, default=None, help="override the genesis block time (s)")
    run.add_argument("--max-block-txs", type=int, default=20_000)
    run.add_argument("--debug-rpc", action="store_true", help="enable debug_* methods (fault-injection tests)")
    run.add_argument("--clock-file", type=Path, default=None,
                     help="simulation only: stamp blocks with the unix time in this file (8 bytes, little-endian "
                          "double, written by a driver running an accelerated clock)")
    run.set_defaults(func=cmd_run)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def write_key(path: Path, secret: bytes) -> str:
    from gateway.validator.crypto import address_of, private_key, to_checksum
    addr = to_checksum(address_of(private_key(secret)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"address": addr, "private_key": secret.hex(),
                   "note": "plain hex key for test networks; use an encrypted keystore in production"}, f)
        f.write("\n")
    os.chmod(path, 0o600)
    return addr


def read_key(path: Path) -> bytes:
    text = path.read_text().strip()
    if text.startswith("{"):
        text = json.loads(text)["private_key"]
    text = text.removeprefix("0x")
    secret = bytes.fromhex(text)
    if len(secret) != 32:
        raise ValueError("a key file holds 32 bytes of hex")
    return secret


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.validator.genesis import parse_genesis

    if args.authorities < 1:
        print("error: --authorities must be >= 1", file=sys.stderr)
        return 2
    out: Path = args.out
    keys = out / "keys"
    auths = [write_key(keys / f"authority-{i}.key", os.urandom(32)) for i in range(args.authorities)]
    complex_addr = write_key(keys / "complex.key", os.urandom(32))
    balances: dict[str, str] = {}
    for item in args.fund:
        a, _, amount = item.partition("=")
        balances[a.lower()] = amount
    doc = {"chain_id": args.chain_id, "name": args.name, "verifying_contract": DEFAULT_CONTRACT,
           "block_time_ms": int(round(args.block_time * 1000)), "interval_seconds": args.interval_seconds,
           "settle_timeout": args.settle_timeout,
           "timestamp": int(time.time()), "authorities": [a.lower() for a in auths],
           "complex_authority": complex_addr.lower(), "balances": balances}
    g = parse_genesis(doc)  # the loader's checks, before anything is written
    (out / "genesis.json").write_text(json.dumps(g.to_json(), indent=2) + "\n")
    ports = [(args.base_port + i, args.base_port + 100 + i) for i in range(args.authorities)]
    peers = ",".join(f"127.0.0.1:{p}" for p, _ in ports)
    print(f"genesis {out / 'genesis.json'} (hash 0x{g.hash.hex()}), {args.authorities} authorities; run each with:")
    for i, (p, r) in enumerate(ports):
        print(f"  metanoia validator run --genesis {out / 'genesis.json'} --key {keys / f'authority-{i}.key'} "
              f"--data {out / f'node{i}'} --p2p 127.0.0.1:{p} --peers {peers} --rpc 127.0.0.1:{r}")
    print(json.dumps({"genesis": str(out / "genesis.json"), "genesis_hash": "0x" + g.hash.hex(),
                      "authorities": auths, "complex_authority": complex_addr,
                      "keys": [str(keys / f"authority-{i}.key") for i in range(args.authorities)],
                      "complex_key": str(keys / "complex.key")}))
    return 0


def file_clock(path: Path) -> Callable[[], float]:
    """A clock read from an 8-byte file (little-endian double) that a simulation driver keeps current."""
    f = open(path, "rb")
    mm = mmap.mmap(f.fileno(), 8, access=mmap.ACCESS_READ)
    return lambda: float(struct.unpack_from("<d", mm)[0])


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.validator.crypto import private_key
    from gateway.validator.genesis import load_genesis
    from gateway.validator.node import Node, NodeConfig

    try:
        g = load_genesis(args.genesis)
        key = private_key(read_key(args.key))
        p2p_addr = _hostport(args.p2p)
        peers = tuple(_hostport(p) for p in args.peers.split(",") if p.strip())
        rpc = _hostport(args.rpc) if args.rpc else None
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers or logging.getLogger().level > logging.INFO:
        logging.getLogger("gateway.validator").setLevel(logging.INFO)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    extra = {"clock": file_clock(args.clock_file)} if args.clock_file else {}
    cfg = NodeConfig(genesis=g, key=key, data_dir=args.data, p2p=p2p_addr, peers=peers, rpc=rpc, workers=workers,
                     block_time=args.block_time, max_block_txs=args.max_block_txs, debug_rpc=args.debug_rpc, **extra)

    # The cyclic collector's default gen-0 threshold (700 net allocations) runs it every few
    # hundred txs: about 4% of a validator's main-process CPU under load, for a heap whose
    # objects (txs, futures, rows) are freed by reference counting. Collect far less often, and
    # keep what start-up built (genesis, code, caches) out of every collection.
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)

    async def main() -> None:
        node = Node(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await node.start()
        gc.freeze()
        rpc_addr = f"{node.rpc_address[0]}:{node.rpc_address[1]}" if node.rpc_address else None
        print(json.dumps({"ready": True, "address": "0x" + node.address.hex(), "height": node.store.head.height,
                          "p2p": f"{node.net.listen[0]}:{node.net.listen[1]}", "rpc": rpc_addr}), flush=True)
        try:
            await stop.wait()
        finally:
            await node.stop()

    asyncio.run(main())
    return 0
