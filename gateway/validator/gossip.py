"""Gossip that keeps validators in step: STATUS frames, re-gossip of a stalled height, and what a new
connection gets.

Tendermint assumes every message an honest node has eventually reaches every
honest node. Here: every new valid vote is relayed once (node.py); every half
slot each node sends its STATUS (``height u64 | round u32``: a peer behind it
starts a catch-up sync); when a height makes no progress for two slots the node
sends every vote it holds for that height and its own proposal again; a new
connection gets the node's status, current votes, own proposal and pending txs.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import TYPE_CHECKING

from . import p2p
from .intake import TX_GOSSIP_CHUNK, encode_txs
from .votes import Vote

if TYPE_CHECKING:
    from .node import Node

STATUS = struct.Struct(">QI")
TICK_S = 0.05


class Gossip:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.progress = (0, 0, 0.0)                         # (height, round, when) for stall detection

    def on_connect(self, peer: p2p.Peer) -> None:
        node = self.node
        peer.send(p2p.STATUS, STATUS.pack(node.store.head.height, node.machine.round))
        node.proposing.resend_own(peer)
        for v in self.height_votes():
            peer.send(p2p.VOTE, v.encode())
        pend = [v.raw for v in node.mempool.pending.values()]
        for i in range(0, len(pend), TX_GOSSIP_CHUNK):
            peer.send(p2p.TXS, encode_txs(pend[i:i + TX_GOSSIP_CHUNK]))

    def on_status(self, peer: p2p.Peer, payload: bytes) -> None:
        height, _round = STATUS.unpack(payload)
        peer.height = height
        if height > self.node.tip.head.height:
            self.node.sync.want(peer)

    def height_votes(self) -> list[Vote]:
        return [v for d in self.node.machine.h.votes.values() for per in d.values() for v in per.values()]

    async def ticker(self) -> None:
        """Status to peers, and re-gossip of the current height when it stalls."""
        node = self.node
        last_status = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if now - last_status < max(0.1, node.block_time / 2):
                continue
            last_status = now
            m = node.machine
            node.net.broadcast(p2p.STATUS, STATUS.pack(node.store.head.height, m.round))
            if (m.height, m.round) != self.progress[:2]:
                self.progress = (m.height, m.round, now)
            elif now - self.progress[2] > 2 * node.block_time:
                node.count("regossip")
                self.progress = (m.height, m.round, now)
                for v in self.height_votes():
                    node.net.broadcast(p2p.VOTE, v.encode())
                node.proposing.resend_own()
