"""A proposal's txs that a follower lacks, asked of the peer that sent the proposal.

A proposal carries its block's tx hashes, not the txs (proposals.py): intake has
gossiped every tx to every peer before it can be in a block, so a follower
normally holds them all. What it lacks (it restarted, it was cut off, the gossip
is still on its way) it asks for by hash::

    GET_TXS   request u32 | count u32 | count x tx hash 32          (1..MAX_BLOCK_TXS hashes)
    TX_REPLY  request u32 | count u32 | count x (len u32 | signed tx) (the asked txs the peer holds)

One reply per request; the requester hashes each tx once and takes it only if
that hash was asked in that request. What it did not get it does not have: the
proposal is not valid at this node (prevote nil) and may be tried again if the
proposer sends it again. The txs then go through the ordinary (urgent) signature
checks like any other. Every irregularity is counted: ``tx_reply_unknown_request``
(a reply to nothing this node asked that peer), ``tx_reply_unrequested`` (a tx
not asked for, or whose hash is not the one asked), ``tx_reply_not_served`` (an
asked tx missing from the reply), ``fetch_timeout``, ``fetch_no_peer``; a
malformed frame counts ``get_txs_<reason>`` / ``tx_reply_<reason>`` (node.py).

Serving is bounded per peer: TX_REPLY bytes per second with a burst (``p2p.Limits.serve_bytes_per_s``,
``serve_burst_s``; a reply goes out whole while the peer's budget is not in debt and is charged
after). A GET_TXS beyond it is not answered (``get_txs_over_budget``): the requester times out
(``fetch_timeout``) and prevotes nil, as with a reply that never comes.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import p2p
from .block import MAX_BLOCK_SIZE, MAX_BLOCK_TXS
from .crypto import keccak256
from .errors import BAD_LENGTH, TOO_LARGE, TRUNCATED, DecodeError
from .intake import decode_txs, encode_txs

if TYPE_CHECKING:
    from .node import Node

_HEAD = struct.Struct(">II")
_ID = struct.Struct(">I")


def encode_get_txs(request: int, hashes: Sequence[bytes]) -> bytes:
    return _HEAD.pack(request, len(hashes)) + b"".join(hashes)


def decode_get_txs(data: bytes) -> tuple[int, list[bytes]]:
    if len(data) < _HEAD.size:
        raise DecodeError(TRUNCATED, "get_txs header")
    request, count = _HEAD.unpack_from(data, 0)
    if count > MAX_BLOCK_TXS:
        raise DecodeError(TOO_LARGE, f"{count} tx hashes > {MAX_BLOCK_TXS}")
    if len(data) != _HEAD.size + 32 * count:
        raise DecodeError(BAD_LENGTH, f"{count} tx hashes in {len(data) - _HEAD.size} bytes")
    return request, [data[i:i + 32] for i in range(_HEAD.size, len(data), 32)]


def encode_tx_reply(request: int, raws: Sequence[bytes]) -> bytes:
    return _ID.pack(request) + encode_txs(list(raws))


def decode_tx_reply(data: bytes) -> tuple[int, list[bytes]]:
    if len(data) < _ID.size:
        raise DecodeError(TRUNCATED, "tx_reply header")
    (request,) = _ID.unpack_from(data, 0)
    return request, decode_txs(data[_ID.size:])


@dataclass
class _Request:
    peer: p2p.Peer
    wanted: frozenset[bytes]
    fut: asyncio.Future[dict[bytes, bytes]]
    got: dict[bytes, bytes] = field(default_factory=dict)


class TxFetch:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.requests: dict[int, _Request] = {}
        self.next_id = 1

    @property
    def timeout(self) -> float:
        """Seconds a follower waits for a reply: under the first propose timeout (3 slots)."""
        return 2 * self.node.block_time + 0.5

    async def fetch(self, peer: p2p.Peer | None, hashes: Sequence[bytes]) -> dict[bytes, bytes] | None:
        """The signed txs with these (distinct) hashes from ``peer``, by hash; None (counted) if the
        peer did not send every one of them in time."""
        node = self.node
        if peer is None or peer.closed:
            node.count("fetch_no_peer")
            return None
        rid = self.next_id
        self.next_id = rid % 0xFFFFFFFF + 1
        req = _Request(peer, frozenset(hashes), asyncio.get_running_loop().create_future())
        self.requests[rid] = req
        node.count("fetch_requests")
        peer.send(p2p.GET_TXS, encode_get_txs(rid, hashes))
        try:
            got = await asyncio.wait_for(req.fut, self.timeout)
        except asyncio.TimeoutError:
            node.count("fetch_timeout")
            return None
        finally:
            self.requests.pop(rid, None)
        if len(got) != len(req.wanted):
            return None
        node.count("fetched_txs", len(got))
        return got

    def on_reply(self, peer: p2p.Peer, payload: bytes) -> None:
        node = self.node
        rid, raws = decode_tx_reply(payload)
        req = self.requests.get(rid)
        if req is None or req.peer is not peer or req.fut.done():
            node.count("tx_reply_unknown_request")
            return
        wanted, got = req.wanted, req.got
        for raw in raws:
            h = keccak256(raw)
            if h in wanted and h not in got:
                got[h] = raw
            else:
                node.count("tx_reply_unrequested")
        if len(got) != len(wanted):
            node.count("tx_reply_not_served", len(wanted) - len(got))
        req.fut.set_result(got)

    def serve(self, peer: p2p.Peer, payload: bytes) -> None:
        """The asked txs this node holds (pending, in a block of this height, or in an intake check),
        up to a block's size; nothing (counted ``get_txs_over_budget``) while the peer is over its
        serving budget (``peer.serve_out``: TX_REPLY bytes per second, p2p.Limits): 640 KB of hashes
        ask for up to 20,000 txs (6.6 MB of fills, up to 32 MiB), so any authenticated peer could
        otherwise make this node send ~10 times what it sends, without end. A refused requester gets
        no reply and times out."""
        node = self.node
        budget = peer.serve_out
        if not budget.ready():
            node.count("get_txs_over_budget")
            return
        rid, hashes = decode_get_txs(payload)
        pending = node.mempool.pending
        inflight = node.intake.inflight
        in_blocks: dict[bytes, bytes] | None = None
        out: list[bytes] = []
        size = 0
        for h in hashes:
            v = pending.get(h)
            raw = v.raw if v is not None else None
            if raw is None:
                if in_blocks is None:
                    in_blocks = {v.hash: v.raw for c in node.proposing.blocks.values() for v in c.verified}
                raw = in_blocks.get(h)
            if raw is None:
                job = inflight.get(h)
                raw = job[0].raws[job[1]] if job is not None else None
            if raw is None or size + len(raw) > MAX_BLOCK_SIZE:
                continue
            out.append(raw)
            size += len(raw)
        node.count("get_txs_served", len(out))
        if len(out) != len(hashes):
            node.count("get_txs_unknown", len(hashes) - len(out))
        reply = encode_tx_reply(rid, out)
        budget.spend(len(reply))
        node.count("get_txs_bytes_served", len(reply))
        peer.send(p2p.TX_REPLY, reply)

    def close(self) -> None:
        for req in self.requests.values():
            if not req.fut.done():
                req.fut.cancel()
        self.requests.clear()
