"""``metanoia settle``: settle closed intervals on the chain (``run``), one interval (``interval START``), ``status``,
and the reclaim watchtower (``reclaim-expired``: every fill nobody settled by its settle-timeout deadline
gets its escrow back to its taker, sent from any account; gateway/market/reclaim_watch.py).

The chain is the bundled one (``--genesis``, or without it the node's ``chain_status``) or an EVM
deployment (``--deployment``, the record ``metanoia chain deploy --out`` writes; ``--rpc`` is then the
EVM node, checked against the record's chain id and contract code before anything is sent). A missing
or bad record, a node that cannot be reached or is not the deployment's chain: a one-line error, exit 2.

Fills come from the agents' ``trades`` table and from the chain's own blocks (scanned
and indexed in the gateway database); households of chain-only fills from the trades
table's addresses and ``--households`` (a JSON file ``{"household": "0xaddress"}``).
The batch is signed with the complex authority's key (``--authority-key``, a 0600
key file as ``metanoia validator init`` writes) and submitted through the chain
client's outbox in the same database. See docs/settlement.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.chain_client.evm import EvmBackend
    from gateway.evm.record import Deployment
    from gateway.validator.genesis import ChainParams

DEFAULT_CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("settle", help="settle delivered energy on the chain, interval by interval")
    ps = p.add_subparsers(dest="settle_command", metavar="ACTION", required=True)

    def chain_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", type=Path, required=True, help="the gateway database")
        q.add_argument("--grid", required=True, help="grid (complex) name, as in the device registry")
        q.add_argument("--rpc", required=True, help="the chain's JSON-RPC URL (validator, or EVM node with "
                                                    "--deployment)")
        q.add_argument("--authority-key", type=Path, required=True, help="the complex authority's key file (0600)")
        chain = q.add_mutually_exclusive_group()
        chain.add_argument("--genesis", type=Path, help="bundled chain: genesis file (chain id, contract, interval)")
        chain.add_argument("--deployment", type=Path, help="EVM chain: the deployment record of `metanoia chain "
                                                           "deploy` (chain id, exchange, interval)")
        q.add_argument("--contract", default=None, help="bundled chain: EIP-712 verifying contract (without "
                                                        f"--genesis; default {DEFAULT_CONTRACT})")
        q.add_argument("--interval-seconds", type=int, default=None,
                       help="default: the genesis's or deployment's, else 900")
        q.add_argument("--grace", type=int, default=120, help="seconds after an interval's end before settling")
        q.add_argument("--households", type=Path, help='JSON {"household": "0xaddress"} for fills the trades '
                                                       "table does not know")
        q.add_argument("--wait-final", type=float, default=30.0, help="seconds to wait for a batch per pass")
        q.add_argument("--json", action="store_true", help="one JSON object on the last line")

    run = ps.add_parser("run", help="loop: settle every closed interval not yet settled")
    chain_args(run)
    run.add_argument("--every", type=float, default=5.0, help="seconds between passes")
    run.add_argument("--once", action="store_true", help="one pass, then exit")
    run.set_defaults(func=cmd_run)

    one = ps.add_parser("interval", help="settle one interval (idempotent)")
    one.add_argument("start", help="interval start: unix seconds or ISO 8601 (no offset = UTC)")
    chain_args(one)
    one.set_defaults(func=cmd_interval)

    rw = ps.add_parser("reclaim-expired", help="watchtower: reclaim every fill on the chain that nobody settled "
                                               "before its settle-timeout deadline (refunds go to the takers)")
    rw.add_argument("--db", type=Path, required=True, help="database for the chain index, outbox and outcomes")
    rw.add_argument("--rpc", required=True, help="the chain's JSON-RPC URL (validator, or EVM node with "
                                                 "--deployment)")
    rchain = rw.add_mutually_exclusive_group(required=True)
    rchain.add_argument("--genesis", type=Path, help="bundled chain: its genesis (interval, settle timeout)")
    rchain.add_argument("--deployment", type=Path, help="EVM chain: the deployment record of `metanoia chain "
                                                        "deploy` (interval, settle timeout)")
    rw.add_argument("--key", type=Path, required=True,
                    help="the sending account's key file (0600); any account: a reclaim needs no NOIA")
    rw.add_argument("--every", type=float, default=60.0, help="seconds between passes")
    rw.add_argument("--once", action="store_true", help="one pass, then exit")
    rw.add_argument("--json", action="store_true", help="one JSON object on the last line")
    rw.set_defaults(func=cmd_reclaim_expired)

    st = ps.add_parser("status", help="settled / open / failed intervals and their batches")
    st.add_argument("--db", type=Path, required=True)
    st.add_argument("--grid", required=True)
    st.add_argument("--limit", type=int, default=20)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)


def parse_start(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


class SetupError(Exception):
    """What the arguments point at is unusable (a record, a key, a node): one line on stderr, exit 2."""


def load_deployment(path: Path) -> Deployment:
    """The deployment record at ``path``, or ``SetupError`` saying what is wrong with it."""
    from gateway.evm.record import DeployError, read_record
    try:
        return read_record(path)
    except FileNotFoundError:
        raise SetupError(f"--deployment {path}: no such file (`metanoia chain deploy --out` writes it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"--deployment {path}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SetupError(f"--deployment {path}: not JSON ({exc})") from None
    except DeployError as exc:
        raise SetupError(f"--deployment {path}: {exc}") from None


async def attach_evm(url: str, dep: Deployment, path: Path) -> EvmBackend:
    """An ``EvmBackend`` on ``url`` that has checked the node is the record's chain with its contracts."""
    from gateway.chain_client import ChainClientError, ChainUnavailable
    from gateway.chain_client.evm import EvmBackend
    backend = EvmBackend(url, dep)
    try:
        await backend.attach()
    except ChainUnavailable as exc:
        await backend.aclose()
        raise SetupError(f"--rpc {url}: cannot reach the EVM node ({exc})") from None
    except ChainClientError as exc:   # another chain id, no contract code, a node without eth_ methods
        await backend.aclose()
        raise SetupError(f"--rpc {url} is not the chain of --deployment {path}: {exc}") from None
    return backend


def deployment_params(dep: Deployment, backend: EvmBackend) -> ChainParams:
    """The reclaim rule's parameters of an EVM deployment (its interval length and settle timeout)."""
    from gateway.validator.genesis import ChainParams
    if dep.settle_timeout is None:
        raise SetupError("the deployment's Exchange has no settle timeout (no reclaim): nothing to watch")
    return ChainParams(backend.domain, (), dep.complex_authority, dep.interval_seconds, 0, dep.settle_timeout)


class _Setup:
    """Everything a settling command needs, built from the arguments (async: reads the chain id)."""

    async def open(self, args: argparse.Namespace) -> None:
        from gateway.chain_client import BundledBackend, ClientConfig, Outbox, OutboxChainClient, StaticKeyring
        from gateway.cli.peer import read_key_file
        from gateway.db import open_gateway_db
        from gateway.market.settlement import SettlementConfig, Settler
        from gateway.market.settlement_fills import MappingDirectory, TradesFillSource
        from gateway.market.settlement_fills_evm import chain_fill_index
        from gateway.validator.crypto import address_of, parse_address, private_key
        from gateway.validator.genesis import load_genesis

        key = private_key(read_key_file(args.authority_key))
        interval_s = args.interval_seconds
        backend: BundledBackend | EvmBackend
        if args.deployment is not None:
            if args.contract is not None:
                raise SetupError("--contract is for the bundled chain; --deployment names the exchange")
            dep = load_deployment(args.deployment)
            if interval_s is not None and interval_s != dep.interval_seconds:
                raise SetupError(f"--interval-seconds {interval_s} is not the deployment's {dep.interval_seconds}")
            if dep.complex_authority != address_of(key):
                raise SetupError("--authority-key is not the deployment's complex authority")
            backend = await attach_evm(args.rpc, dep, args.deployment)
            interval_s = dep.interval_seconds
        elif args.genesis is not None:
            g = load_genesis(args.genesis)
            backend = BundledBackend.from_genesis(args.rpc, g)
            interval_s = interval_s or g.interval_seconds
            if g.complex_authority != address_of(key):
                raise SetupError("--authority-key is not the genesis's complex authority")
        else:
            from gateway.chain_client.rpc import JsonRpcClient
            probe = JsonRpcClient(args.rpc, timeout=10)
            try:
                chain_id = int((await probe.call("chain_status"))["chainId"])
            finally:
                await probe.aclose()
            backend = BundledBackend(args.rpc, chain_id=chain_id,
                                     verifying_contract=parse_address(args.contract or DEFAULT_CONTRACT))
        self.conn = open_gateway_db(args.db)
        trades = TradesFillSource(self.conn, args.grid)
        mapping: dict[bytes, str] = {}
        for m, mh, t, th in self.conn.execute("SELECT maker, maker_household, taker, taker_household FROM trades"):
            mapping[bytes(m)] = mh
            mapping[bytes(t)] = th
        if args.households is not None:
            for h, a in json.loads(args.households.read_text()).items():
                mapping[parse_address(a)] = h
        directory = MappingDirectory(mapping)
        index = chain_fill_index(self.conn, backend, directory=directory)   # by backend: blocks or Filled events
        self.client = OutboxChainClient(backend, Outbox(args.db, backend.name), StaticKeyring([key]),
                                        config=ClientConfig())
        self.settler = Settler(self.conn, self.client, address_of(key), [trades, index],
                               SettlementConfig(args.grid, interval_s=interval_s or 900, grace_s=args.grace,
                                                wait_final_s=args.wait_final), directory=directory)

    async def close(self) -> None:
        await self.client.aclose()
        self.client.outbox.close()
        self.conn.close()


def _print(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(text)
    if args.json:
        print(json.dumps(doc, separators=(",", ":")))


def cmd_run(args: argparse.Namespace) -> int:
    async def go() -> int:
        s = _Setup()
        await s.open(args)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            s.client.start()
            if args.once:
                results = await s.settler.run_once()
                doc = {"intervals": [r.to_json() for r in results], **s.settler.summary()}
                _print(args, doc, "\n".join(f"{r.start} {r.state} fills={r.fills} paid={r.payment} "
                                            f"refunded={r.refund}" for r in results) or "nothing to settle")
            else:
                await s.settler.run(stop, args.every)
        finally:
            await s.close()
        return 0
    return _exit_2_on_error(go)


def _exit_2_on_error(go: Any) -> int:
    """Run ``go()``; a setup or chain failure is one line on stderr and exit 2, never a traceback."""
    try:
        return asyncio.run(go())  # type: ignore[no-any-return]
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 2


def cmd_interval(args: argparse.Namespace) -> int:
    async def go() -> int:
        s = _Setup()
        await s.open(args)
        try:
            s.client.start()
            call = s.settler.client.backend
            from gateway.market.settlement_fills import ChainFillIndex, rpc_of
            rpc = rpc_of(call)
            for src in s.settler.sources:
                if isinstance(src, ChainFillIndex) and rpc is not None:
                    await src.sync(rpc, max_blocks=10**9)
            r = await s.settler.settle_interval(parse_start(args.start))
        finally:
            await s.close()
        _print(args, r.to_json(), f"{r.start} {r.state} fills={r.fills} delivered={r.delivered_wh} Wh "
                                  f"paid={r.payment} refunded={r.refund}" + (f" ({r.reason})" if r.reason else ""))
        return 0 if r.state == "settled" else 1
    return _exit_2_on_error(go)


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.db import open_gateway_db
    from gateway.market.settlement import interval_rows
    conn = open_gateway_db(args.db)
    rows = interval_rows(conn, args.grid, args.limit)
    counts = {s: n for s, n in conn.execute("SELECT state, COUNT(*) FROM settlement_intervals WHERE grid = ? "
                                            "GROUP BY state", (args.grid,))}
    lines = []
    for r in rows:
        batches: list[Any] = r["batches"]  # type: ignore[assignment]
        late = r["late_root_versions"]
        lines.append(f"{r['start']} {r['state']:8} fills={r['fills']} delivered={r['delivered_wh']} Wh "
                     f"paid={r['payment']} refunded={r['refund']} batches={len(batches)}"
                     + (f" late_roots={late}" if late else ""))
    _print(args, {"grid": args.grid, "counts": counts, "intervals": rows}, "\n".join(lines) or "no settlements yet")
    return 0


def cmd_reclaim_expired(args: argparse.Namespace) -> int:
    from gateway.chain_client import BundledBackend, ClientConfig, Outbox, OutboxChainClient, StaticKeyring
    from gateway.cli.peer import read_key_file
    from gateway.db import open_gateway_db
    from gateway.market.reclaim_watch import Watchtower
    from gateway.market.settlement_fills_evm import chain_fill_index
    from gateway.validator.crypto import address_of, private_key
    from gateway.validator.genesis import load_genesis

    async def go() -> int:
        key = private_key(read_key_file(args.key))
        backend: BundledBackend | EvmBackend
        if args.deployment is not None:
            dep = load_deployment(args.deployment)
            backend = await attach_evm(args.rpc, dep, args.deployment)
            try:
                params = deployment_params(dep, backend)
            except SetupError:
                await backend.aclose()
                raise
        else:
            g = load_genesis(args.genesis)
            backend = BundledBackend.from_genesis(args.rpc, g)
            params = g.params()
        conn = open_gateway_db(args.db)
        outbox = Outbox(args.db, backend.name)
        client = OutboxChainClient(backend, outbox, StaticKeyring([key]), config=ClientConfig())
        tower = Watchtower(conn, client, chain_fill_index(conn, backend), params, address_of(key))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with client:
                if not args.once:
                    await tower.run(stop, args.every)
                    return 0
                done = await tower.run_once()
            _print(args, {"outcomes": [o.to_json() for o in done]},
                   "\n".join(f"0x{o.fill_id.hex()} {o.outcome}" + (f" {o.reason}" if o.reason else "")
                             for o in done) or "nothing to reclaim")
            return 0
        finally:
            outbox.close()
            conn.close()
    return _exit_2_on_error(go)
