"""``metanoia peer``: ``keygen`` a test maker key, ``run`` a maker's Peer, ``quote`` one from a Peer.

``run`` is the test maker: a hex key file (0600), a fixed price and a fixed
inventory per interval. The production Peer takes the household's key from
the wallet service, its price from the oracle and its inventory from the
maker agent (docs/peer.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import stat
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"  # as `metanoia validator init` writes it
DEFAULT_GRID = "metanoia-dev"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peer", help="a maker's RFQ endpoint (Peer): keygen, run, quote")
    ps = p.add_subparsers(dest="peer_command", metavar="SUBCOMMAND", required=True)

    kg = ps.add_parser("keygen", help="write a new secp256k1 maker key as hex (0600); prints its address")
    kg.add_argument("--out", type=Path, required=True)
    kg.set_defaults(func=cmd_keygen)

    run = ps.add_parser("run", help="serve a test maker's Peer (JSON-RPC 2.0 over HTTP)")
    run.add_argument("--listen", default="127.0.0.1:8600", metavar="HOST:PORT", help="(port 0: any free port)")
    run.add_argument("--key", type=Path, required=True, help="maker key: 64 hex digits, file mode 0600")
    run.add_argument("--nonce-db", type=Path, default=None, help="nonce high-water marks (default: KEY.nonces.db)")
    _domain_args(run)
    run.add_argument("--genesis", type=Path, default=None,
                     help="take chain id, contract and interval length from a validator genesis file")
    run.add_argument("--interval-s", type=int, default=900, help="delivery interval length (default %(default)s)")
    run.add_argument("--horizon-s", type=int, default=86_400, help="quotes up to this far ahead (default %(default)s)")
    run.add_argument("--ttl-s", type=int, default=60, help="order lifetime (default %(default)s)")
    run.add_argument("--price", type=int, default=10**15,
                     help="NOIA smallest units per Wh (default %(default)s = 1 NOIA/kWh at 18 decimals)")
    run.add_argument("--inventory-wh", type=int, default=5_000, help="Wh on offer per interval (default %(default)s)")
    run.add_argument("--min-wh", type=int, default=1)
    run.add_argument("--max-wh", type=int, default=1_000_000, help="largest single quote (default %(default)s)")
    run.add_argument("--ip-rate", type=float, default=20.0, help="requests/s per client IP, 0 = off")
    run.add_argument("--ip-burst", type=int, default=40)
    run.add_argument("--taker-rate", type=float, default=5.0, help="requests/s per taker address, 0 = off")
    run.add_argument("--taker-burst", type=int, default=10)
    run.set_defaults(func=cmd_run)

    q = ps.add_parser("quote", help="ask a Peer for a quote and check the signed order")
    q.add_argument("--url", default="http://127.0.0.1:8600/")
    q.add_argument("--method", default="getSenderSideOrder",
                   choices=("getSenderSideOrder", "getSignerSideOrder", "getMaxQuote"))
    _domain_args(q)
    q.add_argument("--interval-start", type=int, default=None, help="unix s (default: the next interval)")
    q.add_argument("--interval-s", type=int, default=900)
    q.add_argument("--wh", type=int, default=None)
    q.add_argument("--noia", type=int, default=None)
    q.add_argument("--taker", default="0x0", help="taker address (0x0: anyone)")
    q.add_argument("--maker", default=None, help="expected maker address: the signature must recover to it")
    q.set_defaults(func=cmd_quote)


def _domain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", default=DEFAULT_GRID, help="grid name (default %(default)s)")
    p.add_argument("--chain-id", type=int, default=31337)
    p.add_argument("--contract", default=DEFAULT_CONTRACT, help="EIP-712 verifying contract")


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def read_key_file(path: Path) -> bytes:
    """32 bytes from a hex key file that only its owner can read (mode 0600 or stricter)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    text = path.read_text().strip()
    if text.startswith("{"):  # `metanoia validator init` key files
        text = json.loads(text)["private_key"]
    secret = bytes.fromhex(text.removeprefix("0x"))
    if len(secret) != 32:
        raise ValueError("a key file holds 32 bytes of hex")
    return secret


def write_key_file(path: Path, secret: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    os.chmod(path, 0o600)


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway.validator.crypto import address_of, private_key, to_checksum

    secret = os.urandom(32)
    try:
        write_key_file(args.out, secret)
    except FileExistsError:
        print(f"error: {args.out} exists; not overwriting a key", file=sys.stderr)
        return 2
    print(json.dumps({"key": str(args.out), "maker": to_checksum(address_of(private_key(secret)))}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.market.nonces import NonceStore
    from gateway.market.peer import FixedInventory, FixedPricer, KeySigner, Peer, PeerConfig
    from gateway.validator.crypto import parse_address, private_key, to_checksum
    from gateway.validator.order import Domain

    try:
        host, port = _hostport(args.listen)
        signer = KeySigner(private_key(read_key_file(args.key)))
        chain_id, contract, interval_s = args.chain_id, parse_address(args.contract), args.interval_s
        if args.genesis is not None:
            from gateway.validator.genesis import load_genesis
            g = load_genesis(args.genesis)
            chain_id, contract, interval_s = g.chain_id, g.verifying_contract, g.interval_seconds
        cfg = PeerConfig(grid=args.grid, domain=Domain(chain_id, contract), interval_s=interval_s,
                         horizon_s=args.horizon_s, ttl_s=args.ttl_s, min_wh=args.min_wh, max_wh=args.max_wh,
                         ip_rate=args.ip_rate, ip_burst=args.ip_burst, taker_rate=args.taker_rate,
                         taker_burst=args.taker_burst)
        nonces = NonceStore(args.nonce_db or args.key.with_name(args.key.name + ".nonces.db"), signer.maker)
        peer = Peer(cfg, signer, FixedPricer(args.price), FixedInventory(args.inventory_wh), nonces)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("gateway.market").setLevel(logging.INFO)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner, (h, p) = await peer.start(host, port)
        gc.collect()
        gc.freeze()  # start-up objects out of the collector's way: shorter gen-2 pauses on the quote path
        print(json.dumps({"ready": True, "listen": f"{h}:{p}", "maker": to_checksum(signer.maker),
                          "grid": cfg.grid, "chainId": chain_id, "verifyingContract": to_checksum(contract),
                          "intervalS": interval_s}), flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            nonces.close()
            print(json.dumps({"stopped": True, **peer.stats()}), flush=True)

    asyncio.run(main())
    return 0


def cmd_quote(args: argparse.Namespace) -> int:
    from gateway.market.peer_client import Ask, QuoteInvalid, check_quote, request
    from gateway.validator.crypto import ZERO_ADDRESS, parse_address
    from gateway.validator.order import Domain

    try:
        domain = Domain(args.chain_id, parse_address(args.contract))
        taker = ZERO_ADDRESS if args.taker == "0x0" else parse_address(args.taker)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = args.interval_start
    if start is None:
        start = (int(time.time()) // args.interval_s + 1) * args.interval_s
    ask = Ask(args.grid, start, taker, args.wh, args.noia)
    body = json.dumps(request(args.method, ask, domain)).encode()
    req = urllib.request.Request(args.url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            answer: dict[str, Any] = json.loads(r.read())
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "error" in answer:
        print(json.dumps(answer["error"]))
        return 1
    result = answer["result"]
    if args.method != "getMaxQuote" and args.maker:
        try:
            check_quote(result, domain, parse_address(args.maker), ask, now=time.time())
        except (QuoteInvalid, ValueError) as exc:
            print(f"quote NOT valid: {exc}", file=sys.stderr)
            print(json.dumps(result))
            return 1
        print("signature recovers to the maker; fields as asked", file=sys.stderr)
    print(json.dumps(result))
    return 0
