"""What JSON-RPC asks a node (rpc.py): a tx's status, waiting for it to be final, the node's status.

Read-only over the node's parts: the store (final), the blocks being written or
voted on (included), the mempool and the intake checks (pending), the mempool's
memory of rejections (rejected).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node import Node


def tx_status(node: Node, h: bytes) -> dict[str, Any]:
    r = node.store.receipt(h)
    if r is not None:
        return {"status": "final", "height": r.height, "reason": None}
    for cand in (*node.committing, *node.proposing.blocks.values()):
        if h in cand.hashes:
            return {"status": "included", "height": cand.block.header.height, "reason": None}
    if h in node.mempool.pending or h in node.intake.inflight:
        return {"status": "pending", "height": None, "reason": None}
    reason = node.mempool.rejected.get(h)
    if reason is not None:
        return {"status": "rejected", "height": None, "reason": reason}
    return {"status": "unknown", "height": None, "reason": None}


async def wait_final(node: Node, h: bytes, timeout: float) -> dict[str, Any]:
    st = tx_status(node, h)
    if st["status"] in ("final",) or timeout <= 0:
        return st
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    node.waiters.setdefault(h, []).append(fut)
    try:
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        lst = node.waiters.get(h)
        if lst is not None and fut in lst:
            lst.remove(fut)
            if not lst:
                del node.waiters[h]
    return tx_status(node, h)


def status(node: Node) -> dict[str, Any]:
    m = node.machine
    up = 1 + sum(1 for a in node.net.peers if a in node.authorities)
    counters = dict(node.counters)
    counters.update({f"p2p_{k}": v for k, v in node.net.counters.items()})
    counters.update({f"mempool_{k}": v for k, v in node.mempool.counters.items()})
    counters.update({f"verify_{k}": v for k, v in node.verifier.counters.items()})
    return {"chainId": node.genesis.chain_id, "address": "0x" + node.address.hex(),
            "height": node.store.head.height, "finalHeight": node.store.head.height,
            "consensusHeight": m.height, "round": m.round, "step": m.step,
            "lockedRound": m.locked_round,
            "peers": ["0x" + a.hex() for a in node.net.peers], "validators": len(node.authorities),
            "validatorsUp": up, "mempool": len(node.mempool), "counters": counters,
            "timing": {**{k: round(v, 3) for k, v in node.timing.items()},
                       "verify_inline": round(node.verifier.seconds, 3)},
            "p2p": f"{node.net.listen[0]}:{node.net.listen[1]}"}
