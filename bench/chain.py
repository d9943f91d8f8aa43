"""``metanoia bench chain``: signed fills final per second through the validator's whole pipeline.

Fills are signed before the clock starts (coincurve through the chain core's
``sign_order`` / ``sign_tx``, in a process pool). Then, for ``--seconds`` each:

(a) one validator (``metanoia validator run``, a single-authority network with
    1 s blocks and a signature-check pool of one process per core) gets the
    load over JSON-RPC (``chain_sendRawTransactions`` batches);
(b) four validators sharing this machine over loopback get the same load,
    round-robin across their RPC ports.

A poller follows ``chain_finalizedNumber`` / ``chain_getBlockByNumber`` every
50 ms and stamps each tx final when its block is seen: fills final/s over the
window, block interval (seen) mean and p99, submit-to-final latency p50/p99.
The same run measures raw secp256k1 public-key recovery per core; each figure's
bound = recoveries/s x cores / (2 signatures per fill x validators sharing
the machine). The submitter keeps at most ``--window`` fills submitted but not
final (a client that does not outrun finality without bound). The window opens
after ``--warmup`` seconds of the same load (steady state: as much in flight at
its start as at its end); ``fills_final_per_s_whole_run`` counts from the first
submission. Over the window it
also reads from /proc the CPU the validators' process trees used and how busy
the whole machine was: on a shared machine that says how much of it a run had.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from coincurve import PublicKey

from gateway.validator.crypto import ZERO_ADDRESS, address_of, keccak256, private_key

CHAIN_ID = 31337
CONTRACT = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
SIGS_PER_FILL = 2


def log(msg: str) -> None:
    print(msg, flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=30.0, help="measured load per setting (default 30)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="load before the measured window opens (default 5; 0 measures from a cold start)")
    p.add_argument("--rate", type=int, default=20_000, help="fills signed per second of load (the offered ceiling)")
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--batch", type=int, default=1000, help="fills per chain_sendRawTransactions call")
    p.add_argument("--window", type=int, default=25_000, help="max fills submitted but not yet final")
    p.add_argument("--skip-four", action="store_true", help="only the single-validator setting")
    p.add_argument("--skip-one", action="store_true", help="only the four-validator setting")
    p.add_argument("--block-time", type=float, default=1.0)
    p.add_argument("--four-workers", type=int, default=1, help="signature-check processes per validator in (b)")
    p.add_argument("--four-max-block-txs", type=int, default=5000,
                   help="block cap with four validators on one machine (a block must validate within a slot)")
    p.add_argument("--backend", choices=("bundled", "evm"), default="bundled",
                   help="evm: fills final/s on anvil next to the bundled single-validator figure (bench/chain_evm.py)")
    from bench.chain_evm import add_evm_arguments
    add_evm_arguments(p)


def _keys(n: int) -> list[bytes]:
    return [(20_000 + i).to_bytes(32, "big") for i in range(n)]


def _sign_range(args: tuple[int, int, int, int]) -> list[bytes]:
    """Fills lo..hi: taker = i % accounts (nonce i // accounts), maker = a different account."""
    from gateway.validator.order import Domain, Order, grid_id, sign_order
    from gateway.validator.tx import Fill, Tx, sign_tx
    lo, hi, accounts, t0 = args
    keys = [private_key(k) for k in _keys(accounts)]
    addrs = [address_of(k) for k in keys]
    domain = Domain(CHAIN_ID, CONTRACT)
    grid = grid_id("bench")
    out = []
    for i in range(lo, hi):
        t = i % accounts
        m = (t + 1 + (i // accounts) % (accounts - 1)) % accounts
        o = Order(i, t0 + 86_400, addrs[m], ZERO_ADDRESS, 250 + i % 100, t0, 10**12 + i, grid)
        out.append(sign_tx(Tx(CHAIN_ID, addrs[t], i // accounts, Fill(sign_order(o, domain, keys[m]))), keys[t]))
    return out


def sign_fills(n: int, accounts: int, step: int = 5000, t0: int | None = None) -> list[bytes]:
    """``n`` signed fills (``_sign_range``) in a pool of one process per core."""
    t0 = int(time.time()) if t0 is None else t0
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        parts = pool.map(_sign_range, [(lo, min(n, lo + step), accounts, t0) for lo in range(0, n, step)])
        return [r for p in parts for r in p]


def genesis_doc(n_auth: int, accounts: int, block_time: float) -> tuple[dict[str, Any], list[bytes]]:
    auth_keys = [(30_000 + i).to_bytes(32, "big") for i in range(n_auth)]
    addrs = [address_of(private_key(k)) for k in _keys(accounts)]
    doc = {"chain_id": CHAIN_ID, "name": "bench", "verifying_contract": "0x" + CONTRACT.hex(),
           "block_time_ms": int(block_time * 1000), "interval_seconds": 900, "timestamp": int(time.time()),
           "authorities": ["0x" + address_of(private_key(k)).hex() for k in auth_keys],
           "complex_authority": "0x" + addrs[0].hex(),
           "balances": {"0x" + a.hex(): str(10**24) for a in addrs}}
    return doc, auth_keys


def recover_rate() -> float:
    k = private_key(b"\x07" * 32)
    d = keccak256(b"x")
    sig = k.sign_recoverable(d, hasher=None)
    n = 20_000
    t = time.perf_counter()
    for _ in range(n):
        PublicKey.from_signature_and_message(sig, d, hasher=None)
    return n / (time.perf_counter() - t)


def _free_ports(n: int) -> list[int]:
    import socket
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Network:
    """``n`` validator processes on loopback."""

    def __init__(self, tmp: Path, n: int, accounts: int, block_time: float, workers: int,
                 max_block_txs: int = 20_000) -> None:
        from gateway.cli.validator import write_key
        doc, auth_keys = genesis_doc(n, accounts, block_time)
        gpath = tmp / "genesis.json"
        gpath.write_text(json.dumps(doc))
        ports = _free_ports(2 * n)
        self.urls = [f"http://127.0.0.1:{ports[n + i]}/" for i in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(n):
            key = tmp / f"a{i}.key"
            write_key(key, auth_keys[i])
            peers = ",".join(f"127.0.0.1:{ports[j]}" for j in range(n) if j != i)
            logf = open(tmp / f"node{i}.log", "wb")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "validator", "run", "--genesis", str(gpath), "--key", str(key),
                 "--data", str(tmp / f"node{i}"), "--p2p", f"127.0.0.1:{ports[i]}", "--peers", peers,
                 "--rpc", f"127.0.0.1:{ports[n + i]}", "--workers", str(workers),
                 "--max-block-txs", str(max_block_txs)],
                stdout=logf, stderr=logf))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def _rpc(session: Any, url: str, method: str, params: list[Any]) -> Any:
    async with session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}) as r:
        body = await r.json(content_type=None)
    if "error" in body:
        raise RuntimeError(body["error"])
    return body["result"]


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_sample(roots: Sequence[int]) -> tuple[float, float] | None:
    """(CPU seconds used so far by ``roots`` and their child processes, busy CPU seconds of the whole
    machine): read at both ends of the window, they show how much of the machine the validators
    had and what each final fill cost them, whatever else was running. None without /proc."""
    try:
        kids: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        st = f.read()
                except OSError:
                    continue
                kids.setdefault(int(st[st.rfind(")") + 2:].split()[1]), []).append(int(name))
        total, todo = 0.0, list(roots)
        while todo:
            pid = todo.pop()
            try:
                total += _proc_cpu(pid)
            except OSError:
                continue
            todo.extend(kids.get(pid, ()))
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(cpu) - cpu[3] - cpu[4]) / os.sysconf("SC_CLK_TCK")   # all but idle and iowait
        return total, busy
    except OSError:  # pragma: no cover - not Linux
        return None


async def drive(urls: list[str], bodies: list[bytes], hashes: list[list[bytes]], seconds: float,
                window: int, pids: Sequence[int] = (), warmup: float = 0.0) -> dict[str, Any]:
    """Load for ``warmup`` + ``seconds``; every figure but latency counts only the last ``seconds``.

    From a cold start the first blocks are empty while the first txs are checked and gossiped,
    and whatever is in flight when the clock stops was checked but not counted: over a short
    window both edges weigh on fills/s and CPU per fill. After a warm-up the window opens with
    as much in flight as it closes with (steady state). ``fills_final_per_s_whole_run`` still
    counts from the first submission."""
    import aiohttp
    submit_t: dict[bytes, float] = {}
    final_t: dict[bytes, float] = {}
    block_seen: list[tuple[int, float, int]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        for url in urls:  # wait until every node answers
            for _ in range(300):
                try:
                    await _rpc(s, url, "chain_status", [])
                    break
                except Exception:
                    await asyncio.sleep(0.1)
        start_h = await _rpc(s, urls[0], "chain_finalizedNumber", [])
        done = False
        errors: dict[str, int] = {}

        async def poll() -> None:
            h = start_h
            while not done:
                top = await _rpc(s, urls[0], "chain_finalizedNumber", [])
                now = time.perf_counter()
                while h < top:
                    h += 1
                    b = await _rpc(s, urls[0], "chain_getBlockByNumber", [h])
                    block_seen.append((h, now, b["txCount"]))
                    for t in b["transactions"]:
                        final_t.setdefault(bytes.fromhex(t[2:]), now)
                await asyncio.sleep(0.05)

        next_batch = [0]

        async def submitter() -> None:
            # batches are claimed in order, once the window has room: a taker's nonce n+1 sits two
            # batches after nonce n, so a submitter holding a later batch while an earlier one waits
            # would fill the window with txs that cannot be included (a load-generator deadlock)
            while time.perf_counter() < t_end:
                while len(submit_t) - len(final_t) > window and time.perf_counter() < t_end:
                    await asyncio.sleep(0.01)
                i = next_batch[0]
                if i >= len(bodies) or time.perf_counter() >= t_end:
                    return
                next_batch[0] = i + 1
                now = time.perf_counter()
                for h in hashes[i]:
                    submit_t[h] = now
                async with s.post(urls[i % len(urls)], data=bodies[i],
                                  headers={"Content-Type": "application/json"}) as r:
                    res = (await r.json(content_type=None))["result"]
                for x in res:
                    if isinstance(x, dict):
                        errors[x["error"]] = errors.get(x["error"], 0) + 1

        poller = asyncio.create_task(poll())
        t_load = time.perf_counter()
        t0 = t_load + warmup
        t_end = t0 + seconds
        conc = 2 * len(urls)

        async def sample_at_t0() -> tuple[float, float] | None:
            await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
            return cpu_sample(pids)

        at_t0 = asyncio.create_task(sample_at_t0())
        await asyncio.gather(*(submitter() for _ in range(conc)))
        submitted_by_end = len(submit_t)
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu1 = cpu_sample(pids)
        t1 = time.perf_counter()
        cpu0 = await at_t0
        final_by_t1 = sum(1 for t in final_t.values() if t0 < t <= t1)
        final_in_window = sum(1 for t in final_t.values() if t0 < t <= t_end)
        final_whole_run = sum(1 for t in final_t.values() if t <= t_end)
        # drain: let what was submitted finish, for the latency figures
        drain_end = time.perf_counter() + 15
        while len(final_t) < len(submit_t) and time.perf_counter() < drain_end:
            await asyncio.sleep(0.1)
        done = True
        await poller
        statuses = [await _rpc(s, u, "chain_status", []) for u in urls]
    lat = sorted(final_t[h] - submit_t[h] for h in final_t if h in submit_t)
    seen = [t for (_h, t, n) in block_seen if t0 < t <= t_end]
    gaps = [b - a for a, b in zip(seen, seen[1:])]

    def pct(xs: list[float], p: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 3) if xs else None

    cpu: dict[str, Any] = {}
    if cpu0 is not None and cpu1 is not None and pids:
        used, busy, dt = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], t1 - t0
        cpu = {"validators_cpu_cores": round(used / dt, 2), "machine_busy_cores": round(busy / dt, 2),
               "validators_cpu_us_per_fill": round(1e6 * used / final_by_t1, 1) if final_by_t1 else None}
    return {"fills_final_per_s": round(final_in_window / seconds, 1), **cpu,
            "warmup_s": warmup, "fills_final_per_s_whole_run": round(final_whole_run / (seconds + warmup), 1),
            "submitted": submitted_by_end, "final": len(final_t), "seconds": seconds, "blocks": len(seen),
            "block_interval_mean_s": round(statistics.mean(gaps), 3) if gaps else None,
            "block_interval_p99_s": pct(sorted(gaps), 0.99),
            "latency_p50_s": pct(lat, 0.5), "latency_p99_s": pct(lat, 0.99),
            "max_block_txs": max((n for (_h, _t, n) in block_seen), default=0),
            "submit_errors": errors,
            "node_timing_s": statuses[0].get("timing", {}),
            "node_counters": {k: v for k, v in statuses[0]["counters"].items() if not k.startswith("rpc_")}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "backend", "bundled") == "evm":
        from bench.chain_evm import run_evm
        return run_evm(args)
    cores = os.cpu_count() or 1
    rec = recover_rate()
    log(f"raw secp256k1 public-key recovery: {rec:,.0f}/s on one core ({cores} cores)")
    n = int(args.rate * (args.seconds + args.warmup))
    log(f"signing {n:,} fills ({args.accounts} accounts) before the clock starts...")
    t = time.perf_counter()
    raws = sign_fills(n, args.accounts)
    log(f"  signed in {time.perf_counter() - t:.1f} s; fill tx = {len(raws[0])} bytes")
    bodies, hashes = [], []
    for i in range(0, n, args.batch):
        chunk = raws[i:i + args.batch]
        bodies.append(json.dumps({"jsonrpc": "2.0", "id": i, "method": "chain_sendRawTransactions",
                                  "params": [["0x" + r.hex() for r in chunk]]}).encode())
        hashes.append([keccak256(r) for r in chunk])

    out: dict[str, Any] = {"bench": "chain", "unit": "fills/s", "goal": 10000, "cores": cores,
                           "recover_per_s_per_core": round(rec, 1), "signatures_per_fill": SIGS_PER_FILL,
                           "block_time_s": args.block_time, "offered_fills": n}
    bound1 = rec * cores / (SIGS_PER_FILL * 1)
    if args.skip_one:
        out.update({"value": None, "bound": round(bound1, 1), "ratio": None})
    log(f"(a) one validator with the whole machine ({cores} verify workers), {args.seconds:.0f} s of load...")
    with tempfile.TemporaryDirectory() as d:
        if args.skip_one:
            return _four(args, out, rec, cores, bodies, hashes)
        net = Network(Path(d), 1, args.accounts, args.block_time, workers=cores)
        try:
            one = asyncio.run(drive(net.urls, bodies, hashes, args.seconds, args.window, net.pids,
                                         args.warmup))
        finally:
            net.close()
    log(f"  {one['fills_final_per_s']:,.0f} fills final/s; blocks every {one['block_interval_mean_s']} s "
        f"(p99 {one['block_interval_p99_s']}); latency p50 {one['latency_p50_s']} s, p99 {one['latency_p99_s']} s")
    log(f"  node time per stage (s): {one['node_timing_s']}")
    _log_cpu(one)
    out.update({"value": one["fills_final_per_s"], "bound": round(bound1, 1),
                "ratio": round(one["fills_final_per_s"] / bound1, 3), "one_validator": one})
    if not args.skip_four:
        _four(args, out, rec, cores, bodies, hashes)
    return out


def _log_cpu(r: dict[str, Any]) -> None:
    if "validators_cpu_cores" in r:
        log(f"  validators used {r['validators_cpu_cores']} cores ({r['validators_cpu_us_per_fill']} us of CPU per "
            f"final fill); the whole machine was busy {r['machine_busy_cores']} cores")


def _four(args: argparse.Namespace, out: dict[str, Any], rec: float, cores: int, bodies: list[bytes],
          hashes: list[list[bytes]]) -> dict[str, Any]:
    if True:
        bound4 = rec * cores / (SIGS_PER_FILL * 4)
        log(f"(b) four validators on this machine over loopback, {args.seconds:.0f} s of load...")
        with tempfile.TemporaryDirectory() as d:
            net = Network(Path(d), 4, args.accounts, args.block_time, workers=args.four_workers,
                          max_block_txs=args.four_max_block_txs)
            try:
                four = asyncio.run(drive(net.urls, bodies, hashes, args.seconds, args.window, net.pids,
                                         args.warmup))
            finally:
                net.close()
        four.update({"bound": round(bound4, 1), "ratio": round(four["fills_final_per_s"] / bound4, 3),
                     "goal": round(bound4 / 2, 1)})
        log(f"  {four['fills_final_per_s']:,.0f} fills final/s (bound {bound4:,.0f}); blocks every "
            f"{four['block_interval_mean_s']} s (p99 {four['block_interval_p99_s']}); latency p50 "
            f"{four['latency_p50_s']} s, p99 {four['latency_p99_s']} s")
        log(f"  node 0 time per stage (s): {four['node_timing_s']}")
        _log_cpu(four)
        four["max_block_txs_cap"] = args.four_max_block_txs
        out["four_validators"] = four
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    print(json.dumps(run(ap.parse_args())))
