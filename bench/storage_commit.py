"""The SQLite commit's cost per fill as the chain grows (a measurement, not a test).

Run: ``python -m bench.storage_commit [--blocks 24] [--fills 5000]``. Commits synthetic blocks
through ``SqliteStore.commit_block`` into a fresh database: each "fill" writes what a real fill
writes (an escrow under a random 33-byte key, an order-nonce row, the taker's account out of
1,000) and one 97-byte receipt under a random tx hash; each block carries N 330-byte txs. The
state root is not recomputed (the store only checks that the header and the result agree), so
this times storage alone. As execution does, the result says which written keys were absent before
the block (the new escrows and order nonces), so the store does not look for old rows of them;
``--no-before`` leaves that out (every written escrow key is then probed for a row to delete). Prints one line per block (CPU and wall per fill, WAL bytes written)
and a JSON summary last. Before each commit the WAL is checkpointed
(TRUNCATE) on the caller's thread, so the WAL's size after it is what that block wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from gateway.validator.block import Block, Header
from gateway.validator.execute import BlockResult, Receipt
from gateway.validator.genesis import parse_genesis
from gateway.validator.state import state_root
from gateway.validator.storage import SqliteStore

AUTH = bytes(range(1, 21))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=24)
    ap.add_argument("--fills", type=int, default=5000)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--no-before", action="store_true", help="results without the old values of written keys")
    args = ap.parse_args(argv)
    rng = random.Random(7)
    g = parse_genesis({"chain_id": 1, "name": "bench", "verifying_contract": "0x" + "11" * 20,
                       "block_time_ms": 1000, "interval_seconds": 900, "timestamp": 1_700_000_000,
                       "authorities": ["0x" + AUTH.hex()], "complex_authority": "0x" + AUTH.hex(),
                       "balances": {}})
    accounts = [rng.randbytes(20) for _ in range(1000)]
    rows = []
    hashes: list[bytes] = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chain.db"
        store = SqliteStore(path, g)
        head = store.head
        nonce = 0
        for b in range(args.blocks):
            writes: dict[bytes, bytes | None] = {}
            before: dict[bytes, bytes | None] = {}
            receipts = []
            txs = []
            for i in range(args.fills):
                maker, taker = accounts[nonce % 1000], accounts[(nonce * 7 + 3) % 1000]
                fid = rng.randbytes(32)
                writes[b"O" + maker + nonce.to_bytes(32, "big")] = b"\x01"
                writes[b"E" + fid] = rng.randbytes(144)
                before[b"E" + fid] = before[b"O" + maker + nonce.to_bytes(32, "big")] = None
                writes[b"A" + taker] = rng.randbytes(40)
                h = rng.randbytes(32)
                hashes.append(h)
                receipts.append(Receipt(h, head.height + 1, i, 1, taker, fid))
                txs.append(rng.randbytes(330))
                nonce += 1
            acc = rng.getrandbits(4096)
            root = state_root(acc)
            hd = Header(1, head.height + 1, 0, head.hash, AUTH, 1_700_000_000 + b, b"\x00" * 32, root)
            blk = Block(hd, tuple(txs))
            res = BlockResult(acc, root, tuple(receipts), writes, {} if args.no_before else before)
            k0 = time.perf_counter()
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()   # the last block's pages
            ckpt = time.perf_counter() - k0
            c0, t0 = time.process_time(), time.perf_counter()
            store.commit_block(blk, res)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            wal = os.path.getsize(str(path) + "-wal")
            head = hd
            row = {"block": b + 1, "fills_stored": nonce, "cpu_us_per_fill": round(cpu / args.fills * 1e6, 1),
                   "wall_us_per_fill": round(wall / args.fills * 1e6, 1), "wal_mb": round(wal / 2**20, 1),
                   "prev_checkpoint_ms": round(ckpt * 1000, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        store.close()
        store = SqliteStore(path, g)
        sample = rng.sample(range(len(hashes)), min(args.lookups, len(hashes)))
        t0 = time.perf_counter()
        for j in sample:
            r = store.receipt(hashes[j])
            assert r is not None and r.tx_hash == hashes[j] and r.index == j % args.fills, j
        look = (time.perf_counter() - t0) / len(sample)
        assert store.receipt(rng.randbytes(32)) is None
        size = os.path.getsize(path)
        store.close()
    tail = rows[-4:]
    out = {"bench": "storage_commit", "fills_per_block": args.fills, "blocks": args.blocks,
           "first_cpu_us_per_fill": rows[0]["cpu_us_per_fill"],
           "last4_cpu_us_per_fill": round(sum(r["cpu_us_per_fill"] for r in tail) / len(tail), 1),
           "last4_wall_us_per_fill": round(sum(r["wall_us_per_fill"] for r in tail) / len(tail), 1),
           "receipt_lookup_us": round(look * 1e6, 1), "db_mb": round(size / 2**20, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
