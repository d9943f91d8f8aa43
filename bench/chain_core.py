"""Chain core throughput (a measurement, not a test; not yet wired to ``metanoia bench``).

Run: ``.venv/bin/python -m bench.chain_core [--fills N] [--workers W]``. Prints progress,
then one JSON object as the last line. Measures, for signed fills of the real format:

- ``recover_per_s``: raw coincurve public-key recoveries per second on one core (the bound);
- ``verify_fills_per_s``: ``verify_tx`` on fills (tx signature + the maker's EIP-712
  signature) in one process, and ``pool_verify_fills_per_s`` across W processes;
- ``execute_fills_per_s``: ``build_block`` over pre-verified fills (apply_tx + state root);
  ``follow_fills_per_s``: ``execute_block`` of the sealed block (what a follower does);
- ``commit_ms``: ``SqliteStore.commit_block`` of one block of N fills (synchronous=FULL);
- with ``--follow-blocks B``: a follower's path over SQLite, as the node runs it, on the same
  fills cut into B blocks (built first over a memory store): ``Tip.prefetch(touched_keys)``,
  ``execute_block`` over the Tip (the previous block still being written), ``stage`` and
  ``finish``; CPU per fill of each step on the main thread (``thread_time``) and of the other
  threads (the writer, the checkpointer) over the same span, in ``follow_sqlite_us_per_fill``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from coincurve import PublicKey

from gateway.validator.crypto import ZERO_ADDRESS, address_of, keccak256, private_key, sign_digest
from gateway.validator.execute import build_block, execute_block, touched_keys
from gateway.validator.genesis import parse_genesis
from gateway.validator.order import Order, grid_id, sign_order
from gateway.validator.state import update_accumulator
from gateway.validator.storage import MemoryStore, SqliteStore
from gateway.validator.tip import Candidate, Tip
from gateway.validator.tx import Fill, Tx, sign_tx, verify_batch, verify_tx

CHAIN_ID = 31337
CONTRACT = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
T0 = 1_700_000_000


def log(msg: str) -> None:
    print(msg, flush=True)


def make_world(n_fills: int, n_accounts: int):
    keys = [private_key((10_000 + i).to_bytes(32, "big")) for i in range(n_accounts)]
    addrs = [address_of(k) for k in keys]
    g = parse_genesis({
        "chain_id": CHAIN_ID, "name": "bench", "verifying_contract": "0x" + CONTRACT.hex(), "block_time_ms": 1000,
        "interval_seconds": 900, "timestamp": T0, "authorities": ["0x" + addrs[0].hex()],
        "complex_authority": "0x" + addrs[1].hex(),
        "balances": {"0x" + a.hex(): str(10**24) for a in addrs}})
    params = g.params()
    grid = grid_id("bench")
    raws = []
    nonces = [0] * n_accounts
    for i in range(n_fills):
        m, t = i % n_accounts, (i * 7 + 3) % n_accounts
        if m == t:
            t = (t + 1) % n_accounts
        o = Order(i, T0 + 3600, addrs[m], ZERO_ADDRESS, 250 + i % 100, T0, 10**15 + i, grid)
        so = sign_order(o, params.domain, keys[m])
        raws.append(sign_tx(Tx(CHAIN_ID, addrs[t], nonces[t], Fill(so)), keys[t]))
        nonces[t] += 1
    return g, params, raws


def rate(n: int, dt: float) -> float:
    return round(n / dt, 1)


def follow_sqlite(g, params, verified: list, n_blocks: int) -> dict[str, float]:
    """The follower's path over SQLite through a Tip, one block in flight, CPU us per fill per step."""
    per = len(verified) // n_blocks
    mem = MemoryStore(g)
    blocks = []
    for b in range(n_blocks):
        vs = verified[b * per:(b + 1) * per]
        blk, res, rejected = build_block(mem, mem.accumulator, mem.head, vs, params, ZERO_ADDRESS, T0 + 1 + b)
        assert not rejected, rejected[:1]
        mem.commit_block(blk, res)
        blocks.append((blk, vs))
    steps = {"prefetch": 0.0, "execute": 0.0, "stage": 0.0, "finish": 0.0}
    with tempfile.TemporaryDirectory() as d:
        store = SqliteStore(Path(d) / "chain.db", g)
        committing: deque[Candidate] = deque()
        tip = Tip(store, committing)
        p0, t0 = time.process_time(), time.thread_time()
        prev_fut: Future[None] | None = None
        for blk, vs in blocks:
            c0 = time.thread_time()
            tip.prefetch(touched_keys(vs))
            c1 = time.thread_time()
            res = execute_block(tip, tip.accumulator, blk, tip.head, params, header_at=tip.header_at, verified=vs)
            c2 = time.thread_time()
            if prev_fut is not None:   # the previous block: wait for its write, make it the head
                prev = committing[0]
                prev_fut.result()
                c3 = time.thread_time()
                store.finish(prev.block, prev.result)
                committing.popleft()
                steps["finish"] += time.thread_time() - c3
            c3 = time.thread_time()
            prev_fut = store.stage(blk, res)
            steps["stage"] += time.thread_time() - c3
            committing.append(Candidate(blk, res, tuple(vs), frozenset()))
            steps["prefetch"] += c1 - c0
            steps["execute"] += c2 - c1
        assert prev_fut is not None
        prev_fut.result()
        store.finish(committing[0].block, committing[0].result)
        steps["other_threads"] = (time.process_time() - p0) - (time.thread_time() - t0)
        store.close()
    n = per * n_blocks
    return {k: round(v / n * 1e6, 2) for k, v in steps.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fills", type=int, default=10_000)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--follow-blocks", type=int, default=0,
                    help="also run the follower's path over SQLite on the fills cut into this many blocks")
    args = ap.parse_args(argv)
    out: dict = {"bench": "chain_core", "fills": args.fills, "cores": os.cpu_count()}

    log(f"signing {args.fills} fills ({args.accounts} accounts)...")
    g, params, raws = make_world(args.fills, args.accounts)
    out["fill_tx_bytes"] = len(raws[0])

    k = private_key(b"\x07" * 32)
    digest = keccak256(b"x")
    sig = k.sign_recoverable(digest, hasher=None)
    n = 5000
    t = time.perf_counter()
    for _ in range(n):
        PublicKey.from_signature_and_message(sig, digest, hasher=None)
    out["recover_per_s"] = rate(n, time.perf_counter() - t)
    log(f"raw secp256k1 recovery: {out['recover_per_s']:,.0f}/s on one core")
    t = time.perf_counter()
    for _ in range(n):
        sign_digest(k, digest)
    out["sign_per_s"] = rate(n, time.perf_counter() - t)

    t = time.perf_counter()
    verified = [verify_tx(r, params.domain) for r in raws]
    dt = time.perf_counter() - t
    out["verify_fills_per_s"] = rate(len(raws), dt)
    log(f"verify_tx (2 recoveries per fill), one process: {out['verify_fills_per_s']:,.0f} fills/s")

    chunk = 500
    chunks = [raws[i:i + chunk] for i in range(0, len(raws), chunk)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(verify_batch, chunks[:args.workers], [CHAIN_ID] * args.workers, [CONTRACT] * args.workers))
        t = time.perf_counter()
        res = list(pool.map(verify_batch, chunks, [CHAIN_ID] * len(chunks), [CONTRACT] * len(chunks)))
        dt = time.perf_counter() - t
    assert sum(len(r) for r in res) == len(raws)
    out["pool_workers"] = args.workers
    out["pool_verify_fills_per_s"] = rate(len(raws), dt)
    log(f"verify_batch in {args.workers} processes (chunks of {chunk}, results pickled back): "
        f"{out['pool_verify_fills_per_s']:,.0f} fills/s")

    store = MemoryStore(g)
    parent = store.head
    t = time.perf_counter()
    blk, result, rejected = build_block(store, store.accumulator, parent, verified, params, ZERO_ADDRESS, T0 + 1)
    dt = time.perf_counter() - t
    assert not rejected and len(blk.txs) == len(raws), rejected[:1]
    out["execute_fills_per_s"] = rate(len(raws), dt)
    t = time.perf_counter()
    update_accumulator(store.accumulator, store, result.writes, dict(result.before))  # as execution does
    out["state_root_ms"] = round((time.perf_counter() - t) * 1000, 1)
    out["keys_written"] = len(result.writes)
    log(f"build_block over pre-verified fills: {out['execute_fills_per_s']:,.0f} fills/s "
        f"(state root of {len(result.writes)} written keys: {out['state_root_ms']} ms of it)")
    t = time.perf_counter()
    execute_block(store, store.accumulator, blk, parent, params, verified=verified)
    out["follow_fills_per_s"] = rate(len(raws), time.perf_counter() - t)
    log(f"execute_block (follower, pre-verified): {out['follow_fills_per_s']:,.0f} fills/s")

    with tempfile.TemporaryDirectory() as d:
        sq = SqliteStore(Path(d) / "chain.db", g)
        t = time.perf_counter()
        sq.commit_block(blk, result)
        dt = time.perf_counter() - t
        sq.close()
        out["block_bytes"] = len(blk.encode())
    out["commit_ms"] = round(dt * 1000, 1)
    out["commit_fills_per_s"] = rate(len(raws), dt)
    log(f"SQLite commit of one {len(raws)}-fill block ({out['block_bytes']:,} bytes, "
        f"{len(result.writes)} state rows, {len(result.receipts)} receipts): {out['commit_ms']} ms")

    if args.follow_blocks:
        out["follow_sqlite_us_per_fill"] = f = follow_sqlite(g, params, verified, args.follow_blocks)
        log(f"follower over SQLite, {args.follow_blocks} blocks of {len(raws) // args.follow_blocks} fills, "
            f"CPU us per fill: {f}")

    cores = os.cpu_count() or 1
    bound = out["recover_per_s"] * cores / 2
    main_thread = 1 / (1 / out["execute_fills_per_s"] + 1 / out["commit_fills_per_s"])
    out["bound_fills_per_s"] = round(bound, 1)
    out["main_thread_fills_per_s"] = round(main_thread, 1)
    log(f"bound (recoveries/s x {cores} cores / 2 signatures per fill): {bound:,.0f} fills/s; "
        f"execution + commit on one thread: {main_thread:,.0f} fills/s")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
