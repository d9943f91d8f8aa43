"""Catch-up sync: final blocks with their commit certificates, between validators.

A node that is behind (a STATUS from a peer ahead, or messages for a later
height) asks that peer for the next blocks (GET_BLOCKS ``from u64 | count u32``,
at most ``SYNC_BATCH`` per request); the peer answers one BLOCK frame per final
block (``certLen u32 | certificate | block``). Each block's certificate is
checked (q precommits of authorities for that height and hash) and the block is
re-executed before it is committed: synced blocks are not trusted.

Validating a block awaits the signature checks of its txs the node does not hold
yet, so by the time it is done the node may have that height already: decided
by itself from the votes (a node just behind asks for blocks its consensus is
about to decide) or the same block synced from another peer. Such a block is
counted ``sync_block_decided_meanwhile`` and dropped, whatever its validation
said (it ran over a tip that moved on); ``sync_block_invalid`` is a block at
the next height, its certificate checked, that does not execute over the tip.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import TYPE_CHECKING

from . import p2p
from .block import decode_block
from .votes import decode_certificate, verify_certificate

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

_U32 = struct.Struct(">I")
GET = struct.Struct(">QI")
SYNC_BATCH = 16
ASK_EVERY_S = 1.0
CERT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chain_certs (
        height INTEGER PRIMARY KEY,
        hash   BLOB NOT NULL,
        cert   BLOB NOT NULL       -- votes.Certificate: > 2/3 precommits for the block
    )""",
)


class Sync:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.asked = 0.0

    def want(self, peer: p2p.Peer) -> None:
        """Ask ``peer`` for the blocks above our tip (at most once a second)."""
        now = time.monotonic()
        if now - self.asked < ASK_EVERY_S:
            return
        self.asked = now
        peer.send(p2p.GET_BLOCKS, GET.pack(self.node.tip.head.height + 1, SYNC_BATCH))

    def serve(self, peer: p2p.Peer, payload: bytes) -> None:
        start, n = GET.unpack(payload)
        store = self.node.store
        for h in range(start, min(start + min(n, SYNC_BATCH), store.head.height + 1)):
            row = store.conn.execute("SELECT cert FROM chain_certs WHERE height = ?", (h,)).fetchone()
            blk = store.conn.execute("SELECT block FROM chain_blocks WHERE height = ?", (h,)).fetchone()
            if row is None or blk is None:
                return
            peer.send(p2p.BLOCK, _U32.pack(len(row[0])) + bytes(row[0]) + bytes(blk[0]))

    async def on_block(self, peer: p2p.Peer, payload: bytes) -> None:
        node = self.node
        (cl,) = _U32.unpack_from(payload, 0)
        cert = decode_certificate(payload[4:4 + cl])
        block = decode_block(payload[4 + cl:])
        if block.header.height != node.tip.head.height + 1:
            return
        verify_certificate(cert, node.genesis.chain_id, node.authorities, block.header.height, block.hash)
        cand = await node.proposing.validate_block(block)
        if block.header.height != node.tip.head.height + 1:
            # the node got this height meanwhile (decided it itself, or the same block synced from
            # another peer): the copy was executed over a tip that has moved on, so it may have come
            # out "invalid" (parent mismatch) although it is the block just committed
            mine = node.tip.header_at(block.header.height)
            if mine is not None and mine.hash != block.hash:     # two certified blocks at one height
                node.count("sync_block_conflict")
                log.error("synced block %d %s certified, but this node has %s", block.header.height,
                          block.hash.hex(), mine.hash.hex())
            else:
                node.count("sync_block_decided_meanwhile")
            return
        if cand is None:
            node.count("sync_block_invalid")
            return
        node._commit(cand, cert)
        node.count("blocks_synced")
        self.asked = 0.0
        h = node.tip.head.height + 1
        if node.machine.height < h:
            node._do(node.machine.start(h, time.monotonic(), own_votes=node.vote_log.at_height(h)))
        if peer.height > node.tip.head.height and block.header.height % SYNC_BATCH == 0:
            self.want(peer)
