"""``metanoia bench chain --backend evm``: fills final per second on anvil with 1 s blocks, next to the
bundled chain's single-validator figure measured in the same run.

Set-up (before the clock): anvil (``@foundry-rs/anvil``) with 1 s blocks, the block gas limit of
``--evm-gas-limit`` and base fee 0 (a PoA chain's free-gas setting, so pre-signed fees stay valid
however full the blocks get), NoiaToken + Exchange deployed and ``--evm-takers`` takers onboarded
(NOIA + approve) with gateway/evm/deploy.py. Fills are signed before the clock starts, each exactly
as the chain client signs it (``EvmBackend.build``: type-2 tx, fixed gas limit, the maker's EIP-712
order). Then for ``--evm-seconds`` they are offered at ``--evm-rate`` per second as JSON-RPC batches
of ``eth_sendRawTransaction``; a poller follows the ``finalized`` tag (two blocks behind the head:
``--slots-in-an-epoch 1``) and reads each final block's receipts: a fill counts when its receipt
has status 1 and its block is final within the window.

What limits it: the gas per fill x the block gas limit (``bound`` = gas limit / gas per fill / block
time: what the chain's configuration allows), and anvil's own execution and JSON-RPC intake, which
a larger ``--evm-gas-limit`` exposes. The bundled figure is bench/chain.py's setting (a) with the
same duration, measured in the same run unless ``--skip-bundled``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.validator.crypto import keccak256, private_key, to_checksum

BLOCK_TIME = 1
CHAIN_ID = 31337


def log(msg: str) -> None:
    print(msg, flush=True)


def add_evm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--backend evm")
    g.add_argument("--evm-seconds", type=float, default=10.0,
                   help="load duration on anvil, and of the bundled figure beside it (default 10: a smoke run)")
    g.add_argument("--evm-rate", type=int, default=400, help="fills offered per second to anvil")
    g.add_argument("--evm-gas-limit", type=int, default=30_000_000, help="anvil's block gas limit (default 30M)")
    g.add_argument("--evm-takers", type=int, default=200, help="taker accounts (each sends its fills in nonce order)")
    g.add_argument("--evm-batch", type=int, default=100, help="eth_sendRawTransaction calls per JSON-RPC batch")
    g.add_argument("--skip-bundled", action="store_true", help="only the EVM figure (no bundled_value)")


def _bundled(args: argparse.Namespace) -> dict[str, Any]:
    from bench import chain
    ns = argparse.Namespace(**vars(args))
    ns.seconds, ns.skip_four, ns.skip_one, ns.backend = args.evm_seconds, True, False, "bundled"
    log(f"bundled chain, single validator, {args.evm_seconds:.0f} s (bench chain setting (a)):")
    return chain.run(ns)


def run_evm(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "chain", "backend": "evm", "unit": "fills/s", "goal": 10000,
                           "block_time_s": BLOCK_TIME, "block_gas_limit": args.evm_gas_limit, "base_fee_wei": 0,
                           "seconds": args.evm_seconds, "offered_per_s": args.evm_rate}
    if not args.skip_bundled:
        b = _bundled(args)
        out.update({"bundled_value": b.get("value"), "bundled_bound": b.get("bound"), "bundled_ratio": b.get("ratio"),
                    "bundled_seconds": args.evm_seconds})
    with tempfile.TemporaryDirectory() as d:
        out.update(_evm(args, Path(d)))
    log(f"evm: {out['value']:,} fills final/s on anvil (bound {out['bound']:,} by gas: "
        f"{args.evm_gas_limit:,} gas/block / {out['gas_per_fill']:,} gas per fill)"
        + (f"; bundled single validator {out['bundled_value']:,}/s" if "bundled_value" in out else ""))
    return out


def _evm(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from gateway.chain_client import Intent
    from gateway.chain_client.evm import EvmBackend
    from gateway.chain_client.evm_codec import Fees
    from gateway.evm.anvil import Anvil
    from gateway.evm.deploy import deploy, onboard
    from gateway.validator.crypto import ZERO_ADDRESS, address_of
    from gateway.validator.order import Order, grid_id, sign_order
    from gateway.validator.tx import Fill

    node = Anvil(chain_id=CHAIN_ID, block_time=BLOCK_TIME, auto_impersonate=False,
                 extra_args=("--slots-in-an-epoch", "1", "--gas-limit", str(args.evm_gas_limit), "--base-fee", "0",
                             "--no-request-size-limit")).start()
    try:
        fees = Fees(max_fee_per_gas=10**9, max_priority_fee_per_gas=0)
        deployer = private_key(b"\x5e" * 32)
        node.rpc("anvil_setBalance", [to_checksum(address_of(deployer)), hex(10**30)])
        takers = [private_key(keccak256(b"bench-taker-%d" % i)) for i in range(args.evm_takers)]
        makers = [private_key(keccak256(b"bench-maker-%d" % i)) for i in range(16)]
        for k in takers:
            node.rpc("anvil_setBalance", [to_checksum(address_of(k)), hex(10**22)])
        log(f"evm: anvil {node.rpc('web3_clientVersion')}, 1 s blocks, gas limit {args.evm_gas_limit:,}; deploying "
            f"and onboarding {len(takers)} takers...")
        dep = deploy(node.url, deployer, address_of(deployer), 10**30, max_fee=fees.max_fee_per_gas)
        onboard(node.url, dep, deployer, {k: 10**26 for k in takers}, ether=0, max_fee=fees.max_fee_per_gas)
        from gateway.chain_client.evm import EvmConfig
        backend = EvmBackend(node.url, dep, EvmConfig(fees=fees))
        n = int(args.evm_rate * args.evm_seconds)
        log(f"evm: signing {n:,} fills before the clock starts...")
        t = time.perf_counter()
        now = int(time.time())
        grid = grid_id("bench")
        raws: list[bytes] = []
        hashes: list[bytes] = []
        for i in range(n):
            taker = takers[i % len(takers)]
            maker = makers[i % len(makers)]
            o = Order(i, now + 86_400, address_of(maker), ZERO_ADDRESS, 250 + i % 100, now // 900 * 900,
                      10**12 + i, grid)
            intent = Intent(f"f{i}", address_of(taker), Fill(sign_order(o, backend.domain, maker)))
            stx = backend.build(intent, 1 + i // len(takers), taker)   # nonce 0 was the approve
            raws.append(stx.raw)
            hashes.append(stx.tx_hash)
        log(f"  signed in {time.perf_counter() - t:.1f} s; fill tx = {len(raws[0])} bytes")
        return asyncio.run(_drive(node.url, raws, hashes, args))
    finally:
        node.stop()


async def _drive(url: str, raws: list[bytes], hashes: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    ours = set(hashes)
    submit_t: dict[bytes, float] = {}
    final_t: dict[bytes, float] = {}
    gas_used: list[int] = []
    reverted = 0
    errors: dict[str, int] = {}
    block_fills: list[int] = []
    block_times: list[int] = []
    done = False

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        async def rpc(method: str, *params: Any) -> Any:
            async with s.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}) as r:
                body = await r.json(content_type=None)
            if "error" in body:
                raise RuntimeError(f"{method}: {body['error']}")
            return body["result"]

        start_fin = int((await rpc("eth_getBlockByNumber", "finalized", False))["number"], 16)

        async def poll() -> None:
            nonlocal reverted
            h = start_fin
            while not done:
                top = int((await rpc("eth_getBlockByNumber", "finalized", False))["number"], 16)
                now = time.perf_counter()
                while h < top:
                    h += 1
                    k = 0
                    for rc in await rpc("eth_getBlockReceipts", hex(h)):
                        th = bytes.fromhex(rc["transactionHash"][2:])
                        if th not in ours:
                            continue
                        if int(rc["status"], 16) == 1:
                            final_t.setdefault(th, now)
                            gas_used.append(int(rc["gasUsed"], 16))
                            k += 1
                        else:
                            reverted += 1
                    block_fills.append(k)
                    if k:
                        blk = await rpc("eth_getBlockByNumber", hex(h), False)
                        block_times.append(int(blk["timestamp"], 16))
                await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll())
        t0 = time.perf_counter()
        t_end = t0 + args.evm_seconds
        per_batch = args.evm_batch
        for b0 in range(0, len(raws), per_batch):
            due = t0 + b0 / args.evm_rate        # pace the offered load
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if time.perf_counter() >= t_end:
                break
            chunk = range(b0, min(len(raws), b0 + per_batch))
            body = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction", "params": ["0x" + raws[i].hex()]}
                    for i in chunk]
            now = time.perf_counter()
            for i in chunk:
                submit_t[hashes[i]] = now
            async with s.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r:
                for item in await r.json(content_type=None):
                    if "error" in item:
                        m = str(item["error"].get("message", ""))[:60]
                        errors[m] = errors.get(m, 0) + 1
        submitted = len(submit_t)
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        final_in_window = sum(1 for t in final_t.values() if t <= t_end)
        drain_end = time.perf_counter() + 8
        while len(final_t) + reverted < submitted and time.perf_counter() < drain_end:
            await asyncio.sleep(0.1)
        done = True
        await poller
    lat = sorted(final_t[h] - submit_t[h] for h in final_t if h in submit_t)
    gas_per_fill = round(statistics.mean(gas_used)) if gas_used else 0
    bound = round(args.evm_gas_limit / gas_per_fill / BLOCK_TIME, 1) if gas_per_fill else None
    value = round(final_in_window / args.evm_seconds, 1)
    full = [k for k in block_fills if k]
    gaps = [b - a for a, b in zip(block_times, block_times[1:])]

    def pct(xs: list[float], p: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 2) if xs else None

    return {"value": value, "bound": bound, "ratio": round(value / bound, 3) if bound else None,
            "bound_is": "block gas limit / gas per fill / block time (the chain's configuration, not the machine)",
            "gas_per_fill": gas_per_fill, "submitted": submitted, "final": len(final_t), "reverted": reverted,
            "fills_per_block_max": max(block_fills, default=0),
            "fills_per_block_mean": round(statistics.mean(full), 1) if full else 0,
            "block_interval_mean_s": round(statistics.mean(gaps), 2) if gaps else None,
            "latency_p50_s": pct(lat, 0.5), "latency_p99_s": pct(lat, 0.99), "finality": "finalized tag (head - 2)",
            "submit_errors": errors}
