"""CPU of the proposal path: one proposal of N fills, from the proposer to a follower's ``ProposalIn``.

``python -m bench.proposal_cpu [--fills 5000] [--repeat 5]`` signs real fills (bench/chain.py's
``_sign_range``), builds two real ``Node``s of a four-authority genesis (SQLite stores in a
temporary folder, no network started, signature checks on the loop) and puts the fills in both
mempools, as tx gossip does before a proposal. Then, with ``time.process_time`` (this process,
all its threads, user + system):

- ``propose``: the proposer's ``Proposals.propose`` (build, sign, encode, held write on disk, the
  frame built for each of 3 peers as ``Peer.send`` does); ``propose_less_build`` without
  ``build_block``;
- ``edge``: one PROPOSAL frame from one ``p2p.Network`` to another over loopback TCP, both ends
  in this process (send queue, kernel, read loop, up to the handler);
- ``follow``: the follower's handling of that frame until it has the executed block and its held
  write is on disk; ``follow_less_execute`` without ``execute_block`` (both timed with ``process_time`` around the
  call, wrapped where proposals.py calls them).

``node_us_per_fill`` is what one node of four spends on the path per fill when each proposes a
quarter of the blocks and follows the rest: (propose + 3 x (edge + follow)) / 4 / fills, and
``node_us_per_fill_less_build_execute`` the same without build and execute (the part the
proposal format decides). Prints one JSON line, medians over ``--repeat`` fresh node pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.chain import genesis_doc, sign_fills
from gateway.validator.crypto import address_of, private_key

_LEN = struct.Struct(">I")


class _Peer:
    """What the follower's frame handler may use of a peer (a fetch would be a bug here: counted)."""

    def __init__(self) -> None:
        self.height = 0
        self.closed = False
        self.sent: list[int] = []

    def send(self, mtype: int, payload: bytes) -> None:
        self.sent.append(mtype)


async def _edge_cpu(payload: bytes, keys: list[Any], chain_id: int, ghash: bytes) -> float:
    from gateway.validator import p2p
    got = asyncio.Event()

    async def on_frame(peer: Any, mtype: int, data: bytes) -> None:
        if mtype == p2p.PROPOSAL and len(data) == len(payload):
            got.set()

    async def ignore(peer: Any, mtype: int, data: bytes) -> None:
        return None

    rx = p2p.Network(keys[1], chain_id, ghash, ("127.0.0.1", 0), [], on_frame)
    await rx.start()
    tx = p2p.Network(keys[0], chain_id, ghash, ("127.0.0.1", 0), [rx.listen], ignore)
    await tx.start()
    while not (tx.peers and rx.peers):
        await asyncio.sleep(0.01)
    peer = next(iter(tx.peers.values()))
    t = time.process_time()
    peer.send(p2p.PROPOSAL, payload)
    await got.wait()
    spent = time.process_time() - t
    await tx.stop()
    await rx.stop()
    return spent


async def _run(raws: list[bytes], accounts: int, data: Path) -> dict[str, float]:
    from gateway.validator import p2p
    from gateway.validator.consensus import Propose
    from gateway.validator.execute import build_block, execute_block
    from gateway.validator.genesis import parse_genesis
    from gateway.validator.node import Node, NodeConfig

    from gateway.validator import proposals
    cpu = {"build_block": 0.0, "execute_block": 0.0}

    def timed(fn: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                cpu[fn.__name__] += time.process_time() - t
        return call
    proposals.build_block = timed(build_block)       # type: ignore[attr-defined]
    proposals.execute_block = timed(execute_block)   # type: ignore[attr-defined]

    doc, auth_keys = genesis_doc(4, accounts, 1.0)
    g = parse_genesis(doc)
    keys = [private_key(k) for k in auth_keys]
    proposer = next(k for k in keys if address_of(k) == g.authorities[1 % 4])     # of height 1, round 0
    follower = next(k for k in keys if k is not proposer)
    pn = Node(NodeConfig(g, proposer, data / "p", rpc=None, workers=0))
    fn = Node(NodeConfig(g, follower, data / "f", rpc=None, workers=0))
    for n in (pn, fn):
        res = await n.submit(raws, gossip=False, log_intake=False)
        assert all(isinstance(r, bytes) for r in res), res[:3]
        n._do(n.machine.start(1, time.monotonic(), wait=3600))   # no timers: the steps are driven here
    frames: list[bytes] = []

    def broadcast(mtype: int, payload: bytes, exclude: Any = None) -> None:
        if mtype == p2p.PROPOSAL:
            frames.append(payload)
            for _ in range(3):                                     # what Peer.send does per peer
                _LEN.pack(len(payload) + 1) + bytes((mtype,)) + payload
    pn.net.broadcast = broadcast      # type: ignore[method-assign]
    fn.net.broadcast = lambda *a, **k: None   # type: ignore[method-assign]

    t = time.process_time()
    pn.proposing.propose(Propose(1, 0, None, -1))
    for fut in list(pn.held.writes.values()):
        await fut
    propose = time.process_time() - t
    build = cpu["build_block"]
    (payload,) = frames
    block_hash = next(iter(pn.proposing.blocks))
    assert len(pn.proposing.blocks[block_hash].block.txs) == len(raws)

    edge = await _edge_cpu(payload, keys, g.chain_id, g.hash)

    peer = _Peer()
    t = time.process_time()
    await fn._on_frame(peer, p2p.PROPOSAL, payload)   # type: ignore[arg-type]
    while block_hash not in fn.proposing.blocks:
        await asyncio.sleep(0)
        if time.process_time() - t > 30:
            raise AssertionError(f"follower did not validate: {fn.counters}")
    for fut in list(fn.held.writes.values()):
        await fut
    follow = time.process_time() - t
    execute = cpu["execute_block"]
    assert not peer.sent, f"the follower asked for txs: {peer.sent}"
    for n in (pn, fn):
        n.verifier.close()
        n.vote_log.close()
        n.txlog.close()
        n.store.close()
    fills = len(raws)
    node = (propose + 3 * (edge + follow)) / 4 / fills
    node_less = ((propose - build) + 3 * (edge + follow - execute)) / 4 / fills
    return {"propose_ms": propose * 1e3, "propose_less_build_ms": (propose - build) * 1e3,
            "edge_ms": edge * 1e3, "follow_ms": follow * 1e3, "follow_less_execute_ms": (follow - execute) * 1e3,
            "frame_bytes": len(payload), "node_us_per_fill": node * 1e6,
            "node_us_per_fill_less_build_execute": node_less * 1e6}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.proposal_cpu", description=__doc__.split("\n")[0])
    p.add_argument("--fills", type=int, default=5000)
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    raws = sign_fills(args.fills, args.accounts)
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            runs.append(asyncio.run(_run(raws, args.accounts, Path(d))))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        rev = None
    out: dict[str, Any] = {"bench": "proposal_cpu", "fills": args.fills, "repeat": args.repeat, "commit": rev}
    for k in runs[0]:
        out[k] = round(statistics.median(r[k] for r in runs), 2)
    out["runs_node_us_per_fill_less_build_execute"] = [round(r["node_us_per_fill_less_build_execute"], 2)
                                                       for r in runs]
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
