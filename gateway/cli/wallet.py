"""``metanoia wallet``: household keys (create, list, export, import), policies, homeowner orders, and
reclaiming a household's own fill once the chain's settle timeout has passed (``reclaim``).

The operator's master secret comes from ``--secret-file`` (mode 0600) or the
``METANOIA_WALLET_SECRET`` environment variable, a homeowner's passphrase from
``--passphrase-file`` (0600), ``METANOIA_WALLET_PASSPHRASE`` or a prompt: never
from the command line, where every user of the machine can read it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

PASSPHRASE_ENV = "METANOIA_WALLET_PASSPHRASE"


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("wallet", help="household keys, encrypted at rest; policies and homeowner orders")
    ws = w.add_subparsers(dest="wallet_command", metavar="ACTION", required=True)

    def cmd(name: str, help_: str, func: Any, household: bool = True) -> argparse.ArgumentParser:
        p = ws.add_parser(name, help=help_)
        p.add_argument("--dir", type=Path, required=True, help="wallet directory (created 0700)")
        p.add_argument("--secret-file", type=Path, help="master secret file (0600); default: $METANOIA_WALLET_SECRET")
        p.add_argument("--db", type=Path, help="ledger database (default: DIR/wallet.db)")
        p.add_argument("--test-kdf", action="store_true", help=argparse.SUPPRESS)  # light scrypt: tests only
        if household:
            p.add_argument("household")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        return p

    cmd("create", "create a household's key", cmd_create)
    cmd("address", "a household's address", cmd_address)
    cmd("list", "households and addresses", cmd_list, household=False)
    ex = cmd("export", "the key as a keystore v3 file under the homeowner's passphrase", cmd_export)
    ex.add_argument("--out", required=True, help="file to write (0600), or - for stdout")
    ex.add_argument("--passphrase-file", type=Path)
    im = cmd("import", "a returning homeowner's keystore v3 file", cmd_import)
    im.add_argument("file", type=Path)
    im.add_argument("--passphrase-file", type=Path)
    po = cmd("policy", "show, or set with any of the options", cmd_policy)
    po.add_argument("--sell-floor", type=int, help="NOIA smallest units per Wh, at least (omit: no selling)")
    po.add_argument("--buy-cap", type=int, help="NOIA smallest units per Wh, at most (omit: no buying)")
    po.add_argument("--reserve-wh", type=int, default=0)
    po.add_argument("--interval-wh", type=int, default=0)
    po.add_argument("--daily-noia", type=int, default=0)
    po.add_argument("--set", action="store_true", help="replace the policy with the options given")
    ap = cmd("approve", "a homeowner's single-use order (sell, buy or transfer)", cmd_approve)
    ap.add_argument("--kind", choices=("sell", "buy", "transfer"), required=True)
    ap.add_argument("--wh", type=int, default=0)
    ap.add_argument("--price", type=int, help="per Wh: floor for a sell, cap for a buy")
    ap.add_argument("--noia", type=int, help="most NOIA (buy, transfer)")
    ap.add_argument("--interval", type=int, help="delivery interval start (unix s)")
    ap.add_argument("--to", help="transfer recipient address")
    ap.add_argument("--ttl", type=int, default=3600, help="seconds the order stays usable")
    cmd("spent", "NOIA spent today", cmd_spent)
    rc = cmd("reclaim", "take back the escrow of one of the household's fills whose interval was never settled "
                        "(allowed once the genesis's settle_timeout has passed after the interval's end)", cmd_reclaim)
    rc.add_argument("fill_id", nargs="?", help="the fill id (0x + 64 hex: the order's EIP-712 digest)")
    rc.add_argument("--all", metavar="GATEWAY_DB", type=Path,
                    help="instead of one fill id: every fill the household bought that the gateway's trades "
                         "table shows unsettled past its deadline")
    rc.add_argument("--rpc", required=True, help="validator JSON-RPC URL")
    rc.add_argument("--genesis", type=Path, required=True, help="the chain's genesis (chain id, interval, timeout)")
    rc.add_argument("--outbox", type=Path, help="chain client outbox database (default: DIR/outbox.db)")
    rc.add_argument("--wait-final", type=float, default=60.0, help="seconds to wait for finality")


def _wallet(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway.market.wallet import Wallet, WalletKdf, harden_process, load_master_secret
    harden_process()
    secret = load_master_secret(file=args.secret_file)
    return Wallet(args.dir, secret, db=args.db, kdf=WalletKdf.light() if args.test_kdf else None)


def _passphrase(args: argparse.Namespace, confirm: bool) -> str:
    from gateway.market.wallet import INSECURE_FILE, WalletError
    if args.passphrase_file is not None:
        if os.stat(args.passphrase_file).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise WalletError(INSECURE_FILE, f"{args.passphrase_file} is readable by group or others (chmod 600)")
        return args.passphrase_file.read_text().rstrip("\n")
    if PASSPHRASE_ENV in os.environ:
        return os.environ[PASSPHRASE_ENV]
    if not sys.stdin.isatty():
        raise SystemExit(f"error: no passphrase: use --passphrase-file, ${PASSPHRASE_ENV} or a terminal")
    first = getpass.getpass("keystore passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise SystemExit("error: the passphrases differ")
    return first


def _run(args: argparse.Namespace, fn: Any) -> int:
    from gateway.market.wallet import WalletError
    try:
        w = _wallet(args)
        try:
            out = fn(w)
        finally:
            w.close()
    except (WalletError, ValueError) as exc:
        reason = getattr(exc, "reason", "bad_argument")
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": reason}))
        return 1
    if out is not None:
        print(json.dumps(out))
    return 0


def _addr(a: bytes) -> str:
    from gateway.validator.crypto import to_checksum
    return to_checksum(a)


def cmd_create(args: argparse.Namespace) -> int:
    return _run(args, lambda w: {"household": args.household, "address": _addr(w.create(args.household))})


def cmd_address(args: argparse.Namespace) -> int:
    return _run(args, lambda w: {"household": args.household, "address": _addr(w.address(args.household))})


def cmd_list(args: argparse.Namespace) -> int:
    return _run(args, lambda w: {"households": {h: _addr(w.address(h)) for h in w.households()}})


def cmd_export(args: argparse.Namespace) -> int:
    def go(w: Any) -> dict[str, Any]:
        from gateway.market.keystore import ScryptParams
        obj = w.export(args.household, _passphrase(args, confirm=True),
                       ScryptParams(n=16) if args.test_kdf else None)
        text = json.dumps(obj) + "\n"
        if args.out == "-":
            sys.stdout.write(text)
        else:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        return {"household": args.household, "address": _addr(w.address(args.household)), "out": args.out}
    return _run(args, go)


def cmd_import(args: argparse.Namespace) -> int:
    return _run(args, lambda w: {"household": args.household, "address": _addr(
        w.import_keystore(args.household, args.file.read_bytes(), _passphrase(args, confirm=False)))})


def cmd_policy(args: argparse.Namespace) -> int:
    from gateway.market.wallet_policy import Policy

    def go(w: Any) -> dict[str, Any]:
        if args.set:
            w.set_policy(args.household, Policy(args.sell_floor, args.buy_cap, args.reserve_wh, args.interval_wh,
                                                args.daily_noia))
        p = w.policy(args.household)
        return {"household": args.household, "policy": p.to_json() if p else None}
    return _run(args, go)


def cmd_approve(args: argparse.Namespace) -> int:
    from gateway.validator.crypto import parse_address

    def go(w: Any) -> dict[str, Any]:
        to = parse_address(args.to) if args.to else None
        m = w.approve(args.household, args.kind, ttl_s=args.ttl, wh=args.wh, price_per_wh=args.price,
                      noia=args.noia, interval_start=args.interval, to=to)
        return {"id": m.id, "household": m.household, "kind": m.kind, "expires_at": m.expires_at}
    return _run(args, go)


def cmd_spent(args: argparse.Namespace) -> int:
    return _run(args, lambda w: {"household": args.household, "noia_today": str(w.spent_today(args.household))})


def cmd_reclaim(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from gateway.chain_client import BundledBackend, ChainClientError, Outbox, OutboxChainClient
    from gateway.db import open_gateway_db, transaction
    from gateway.market.reclaim import ReclaimRefused, mark_reclaimed, reclaim_candidates, reclaim_fill
    from gateway.market.wallet import WalletError, WalletKeyring
    from gateway.validator.errors import GenesisError
    from gateway.validator.genesis import load_genesis

    def go(w: Any) -> dict[str, Any]:
        if (args.fill_id is None) == (args.all is None):
            raise ValueError("give either a fill id or --all GATEWAY_DB")
        try:
            g = load_genesis(args.genesis)
        except GenesisError as exc:
            raise WalletError(exc.reason, exc.detail) from None
        conn = None if args.all is None else open_gateway_db(args.all)
        fids = [_fill_id(args.fill_id)] if conn is None else reclaim_candidates(conn, args.household, g.params(),
                                                                                  time.time())
        taker = w.address(args.household)
        backend = BundledBackend.from_genesis(args.rpc, g)
        outbox = Outbox(args.outbox or args.dir / "outbox.db", backend.name)

        async def one(client: OutboxChainClient, fid: bytes) -> dict[str, Any]:
            res = await reclaim_fill(client, taker, fid, g.params(), wait_s=args.wait_final)
            if not res.receipt.ok:
                raise ReclaimRefused(res.receipt.reason or "rejected", f"the chain refused tx "
                                     f"0x{(res.receipt.tx_hash or b'').hex()}")
            return res.to_json()

        async def run() -> dict[str, Any]:
            async with OutboxChainClient(backend, outbox, WalletKeyring(w)) as client:
                if args.all is None:
                    return {"household": args.household, **await one(client, fids[0])}
                done, refused = [], []
                for fid in fids:
                    try:
                        done.append(await one(client, fid))
                    except ReclaimRefused as exc:
                        refused.append({"fill_id": "0x" + fid.hex(), "error": exc.reason})
                        continue
                    assert conn is not None
                    with transaction(conn):
                        mark_reclaimed(conn, fid)
                return {"household": args.household, "reclaimed": done, "refused": refused}
        try:
            return asyncio.run(run())
        except ChainClientError as exc:
            raise WalletError(exc.reason, exc.detail) from None
        finally:
            outbox.close()
            if conn is not None:
                conn.close()
    return _run(args, go)


def _fill_id(text: str) -> bytes:
    try:
        fid = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        fid = b""
    if len(fid) != 32:
        raise ValueError(f"not a fill id (0x + 64 hex digits): {text!r}")
    return fid
