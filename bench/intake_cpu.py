"""CPU per fill of a validator's intake path, main process and signature worker apart.

``python -m bench.intake_cpu [--fills 20000]`` signs real fills (bench/chain.py's
``_sign_range``: 2,000 takers, nonces in order), builds a real ``Node`` (SQLite store in
a temporary folder, no network started) and plays what one of the four validators of
``metanoia bench chain`` does with each fill:

- a quarter arrive over JSON-RPC (``chain_sendRawTransactions``, 1,000 hex txs per call:
  hex decoding, admit, the checks, finish, the TXS relay frame, the intake log's fsync);
- the rest arrive as TXS frames from peers (``decode_txs``, ``Intake.on_txs``);
- every 5,000 fills a block is committed: ``Mempool.remove`` (the account nonces at the
  new tip are put in the node's cache first: the state reads are not intake's);
  a quarter of those blocks are this node's to propose: ``Mempool.select`` first.

The verifier's process pool is replaced by an executor that runs the same worker call in
this process, with the same pickling both ways, and measures the worker's share (unpickle
the chunk, ``verify_compact``, pickle the answer) with ``time.process_time`` around it:
``worker_us_per_fill``. Everything else in the measured windows is the main process's:
``main_us_per_fill`` (weighted as one node of four sees it) and its parts per fill that
took that path. The multiprocessing queues' own threads are not in either figure.
``recover_us_per_fill`` is libsecp256k1's two recoveries alone on the same fills, measured in
the same run, and ``worker_overhead_us_per_fill`` the worker's CPU beyond them: that figure
moves less with the machine's load than the worker's total.

Prints one JSON line; ``--repeat`` runs the whole thing that many times on fresh nodes and
reports the median of each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from bench.chain import genesis_doc, sign_fills
from gateway.validator.crypto import keccak256, private_key

BLOCK = 5000
BATCH = 1000


class InProcessPool(Executor):
    """What ``ProcessPoolExecutor`` does with a call, in this process: the call and its answer go
    through pickle, and the worker's share of the CPU is counted in ``worker_s``."""

    def __init__(self) -> None:
        self.worker_s = 0.0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        sent = pickle.dumps((fn, args, kwargs), pickle.HIGHEST_PROTOCOL)
        t = time.process_time()
        f2, a2, k2 = pickle.loads(sent)
        answer = pickle.dumps(f2(*a2, **k2), pickle.HIGHEST_PROTOCOL)
        self.worker_s += time.process_time() - t
        fut: Future[Any] = Future()
        fut.set_result(pickle.loads(answer))
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


async def _play(raws: list[bytes], accounts: int, data: Path) -> dict[str, float]:
    from gateway.validator.genesis import parse_genesis
    from gateway.validator.intake import decode_txs, encode_txs
    from gateway.validator.node import Node, NodeConfig
    from gateway.validator.rpc import Rpc

    doc, auth_keys = genesis_doc(4, accounts, 1.0)
    node = Node(NodeConfig(parse_genesis(doc), private_key(auth_keys[0]), data, rpc=None, workers=0))
    pool = InProcessPool()
    v = node.verifier
    v.pool, v.workers, v.max_sent = pool, 1, 2        # as --workers 1, the worker run in this process
    node.net.peers = {b"peer": None}                  # relay frames are built ...
    node.net.broadcast = lambda *a, **k: None         # ... and dropped
    rpc = Rpc(node)
    senders = [r[9:29] for r in raws[:accounts]]      # taker of fill i is account i % accounts
    cpu = {"rpc": 0.0, "gossip": 0.0, "remove": 0.0, "select": 0.0}
    worker = 0.0
    n_rpc = n_gossip = n_select = 0
    node.nonces.update((s, 0) for s in senders)       # the tip's nonces cached (state reads are not intake's)

    def clock() -> tuple[float, float]:
        return time.process_time(), pool.worker_s

    def spent(what: str, t: tuple[float, float]) -> None:
        nonlocal worker
        w = pool.worker_s - t[1]
        worker += w
        cpu[what] += time.process_time() - t[0] - w

    for b0 in range(0, len(raws), BLOCK):
        block = raws[b0:b0 + BLOCK]
        for k in range(0, len(block), BATCH):
            batch = block[k:k + BATCH]
            if (b0 + k) // BATCH % 4 == 0:
                params = [["0x" + r.hex() for r in batch]]
                t = clock()
                res = await rpc.rpc_chain_sendRawTransactions(params)
                spent("rpc", t)
                n_rpc += len(batch)
                assert all(isinstance(x, str) for x in res), res[:3]
            else:
                frame = encode_txs(batch)
                t = clock()
                await node.intake.on_txs(decode_txs(frame))
                while node.intake.relaying:
                    await asyncio.sleep(0)
                spent("gossip", t)
                n_gossip += len(batch)
        pending = node.mempool.pending
        assert len(pending) == len(block), (len(pending), len(block))
        if b0 // BLOCK % 4 == 0:
            t = clock()
            chosen = node.mempool.select(BLOCK)
            spent("select", t)
            n_select += len(block)
            assert len(chosen) == len(block)
        verified = [pending[keccak256(r)] for r in block]
        m = b0 + len(block)                           # fills final: nonces at the new tip
        node.nonces.clear()
        node.nonces.update((s, m // accounts + (1 if i < m % accounts else 0)) for i, s in enumerate(senders))
        t = clock()
        node.mempool.remove(verified)
        spent("remove", t)
        assert not node.mempool.pending
    node.verifier.close()
    node.txlog.close()
    node.store.close()
    n = len(raws)
    per = {"rpc": n_rpc, "gossip": n_gossip, "remove": n, "select": n_select}
    parts = {k: cpu[k] / max(1, per[k]) * 1e6 for k in cpu}
    return {"main_us_per_fill": parts["rpc"] / 4 + parts["gossip"] * 3 / 4 + parts["remove"] + parts["select"] / 4,
            "worker_us_per_fill": worker / n * 1e6,
            **{f"{k}_us_per_fill": parts[k] for k in parts}}


def _recover_only(raws: list[bytes]) -> float:
    """CPU per fill of libsecp256k1's two recoveries alone (the signatures parsed beforehand): the
    floor under ``worker_us_per_fill``, measured in the same run, so the worker's own overhead can be
    told apart from how fast this machine recovers right now."""
    from coincurve._libsecp256k1 import ffi, lib
    from coincurve.context import GLOBAL_CONTEXT
    ctx = GLOBAL_CONTEXT.ctx
    jobs = []
    for raw in raws:
        for sig, digest in ((raw[-65:], keccak256(b"\x19M" + raw[:-65])), (raw[197:262], keccak256(raw[37:197]))):
            rsig = ffi.new("secp256k1_ecdsa_recoverable_signature *")
            lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, rsig, sig, sig[64] - 27)
            jobs.append((rsig, digest))   # the order digest is not the EIP-712 one: same cost, any 32 bytes do
    pub = ffi.new("secp256k1_pubkey *")
    recover = lib.secp256k1_ecdsa_recover
    t = time.process_time()
    for rsig, digest in jobs:
        recover(ctx, pub, rsig, digest)
    return (time.process_time() - t) / len(raws) * 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.intake_cpu", description=__doc__.split("\n")[0])
    p.add_argument("--fills", type=int, default=20_000)
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    n = args.fills // BLOCK * BLOCK
    raws = sign_fills(n, args.accounts)
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            r = asyncio.run(_play(raws, args.accounts, Path(d)))
        r["recover_us_per_fill"] = _recover_only(raws)
        r["worker_overhead_us_per_fill"] = r["worker_us_per_fill"] - r["recover_us_per_fill"]
        runs.append(r)
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        rev = None
    out: dict[str, Any] = {"bench": "intake_cpu", "fills": n, "repeat": args.repeat, "commit": rev}
    for k in runs[0]:
        out[k] = round(statistics.median(r[k] for r in runs), 2)
    out["runs_main_us_per_fill"] = [round(r["main_us_per_fill"], 2) for r in runs]
    out["runs_worker_overhead_us_per_fill"] = [round(r["worker_overhead_us_per_fill"], 2) for r in runs]
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
