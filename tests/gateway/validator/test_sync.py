"""Catch-up sync (sync.py): a final block that reaches the node while it gets that height by another
way (the same block from a second peer, or its own decision) is counted as decided meanwhile, not as
invalid; a block that really does not execute over the tip still counts ``sync_block_invalid``."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time

from gateway.validator.block import Block
from gateway.validator.crypto import address_of
from gateway.validator.execute import build_block
from gateway.validator.genesis import parse_genesis
from gateway.validator.node import Node
from gateway.validator.storage import MemoryStore
from gateway.validator.tx import verify_tx
from gateway.validator.votes import PRECOMMIT, Certificate, sign_vote

from . import kit
from .netkit import AUTH_KEYS, genesis_doc, node_configs


class _Peer:
    """The sending side of a BLOCK frame: sync.py only reads its height and may ask it for more."""
    height = 1
    closed = False

    def send(self, mtype: int, payload: bytes) -> None:
        pass


def _block_1(g, raws: list[bytes], *, parent: bytes | None = None) -> Block:
    s = MemoryStore(g)
    params = g.params()
    vs = [verify_tx(r, params.domain) for r in raws]
    blk, _res, rejected = build_block(s, s.accumulator, s.head, vs, params, address_of(AUTH_KEYS[1]),
                                      max(s.head.timestamp, int(time.time())), 0, header_at=s.header_at)
    assert not rejected
    if parent is not None:
        blk = Block(dataclasses.replace(blk.header, parent_hash=parent), blk.txs)
    return blk


def _frame(g, blk: Block) -> bytes:
    """BLOCK payload: a certificate of 3 of the 4 authorities' precommits, then the block."""
    cert = Certificate(blk.header.height, 0, blk.hash,
                       tuple(sign_vote(AUTH_KEYS[i], PRECOMMIT, g.chain_id, blk.header.height, 0, blk.hash)
                             for i in range(3))).encode()
    return struct.pack(">I", len(cert)) + cert + blk.encode()


def test_a_block_synced_from_two_peers_at_once_is_committed_once_and_not_counted_invalid(tmp_path):
    """Both copies arrive while the node is at height 0; validating each awaits the signature checks of
    its txs (not in this node's mempool), the first commits, the second finds the tip moved on. Before
    sync.py told the two apart, the second counted ``sync_block_invalid`` (the bench's
    ``sync_block_invalid: 2`` on a node that had fallen behind)."""
    async def main() -> None:
        g = parse_genesis(genesis_doc(4, 5.0))
        node = Node(node_configs(tmp_path, g, 4)[0])          # alone: no quorum, stays at height 0
        await node.start()
        raws = [kit.raw_tx(2, 0, kit.transfer(6, 5)), kit.raw_tx(3, 0, kit.transfer(6, 7))]
        blk = _block_1(g, raws)
        payload = _frame(g, blk)
        await asyncio.gather(node.sync.on_block(_Peer(), payload), node.sync.on_block(_Peer(), payload))
        c = node.counters
        assert node.tip.head.height == 1 and node.tip.head.hash == blk.hash
        assert c.get("blocks_synced") == 1
        assert c.get("sync_block_decided_meanwhile") == 1
        assert "sync_block_invalid" not in c and "sync_block_conflict" not in c, c
        await node.stop()
    asyncio.run(main())


def test_a_certified_block_that_does_not_extend_the_tip_still_counts_invalid(tmp_path):
    async def main() -> None:
        g = parse_genesis(genesis_doc(4, 5.0))
        node = Node(node_configs(tmp_path, g, 4)[0])
        await node.start()
        blk = _block_1(g, [kit.raw_tx(2, 0, kit.transfer(6, 5))], parent=b"\x01" * 32)
        await node.sync.on_block(_Peer(), _frame(g, blk))
        assert node.counters.get("sync_block_invalid") == 1
        assert "sync_block_decided_meanwhile" not in node.counters
        assert node.tip.head.height == 0
        await node.stop()
    asyncio.run(main())
