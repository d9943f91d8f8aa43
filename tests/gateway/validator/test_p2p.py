"""P2P sending order: a vote queued behind a large backlog of tx gossip goes out first, so consensus
latency does not grow with the tx load; the gossip itself still arrives complete and in order."""

from __future__ import annotations

import asyncio

from gateway.validator import p2p
from gateway.validator.genesis import parse_genesis

from .netkit import AUTH_KEYS, genesis_doc, wait_until


def test_a_vote_overtakes_queued_tx_gossip():
    async def main() -> None:
        g = parse_genesis(genesis_doc(2, 0.2))
        got: list[tuple[int, bytes]] = []

        async def record(peer, mtype, payload):
            got.append((mtype, payload[:4]))

        async def ignore(peer, mtype, payload):
            return None

        rx = p2p.Network(AUTH_KEYS[1], g.chain_id, g.hash, ("127.0.0.1", 0), [], record)
        await rx.start()
        tx = p2p.Network(AUTH_KEYS[0], g.chain_id, g.hash, ("127.0.0.1", 0), [rx.listen], ignore)
        await tx.start()

        async def connected() -> bool:
            return len(tx.peers) == 1 and len(rx.peers) == 1
        assert await wait_until(connected, 10)
        peer = next(iter(tx.peers.values()))
        n = 64
        for i in range(n):                                  # 64 x 256 KiB of gossip queued at once ...
            peer.send(p2p.TXS, i.to_bytes(4, "big") + bytes(256 * 1024))
        peer.send(p2p.VOTE, b"vote")                        # ... then one vote

        async def all_in() -> bool:
            return len(got) == n + 1
        assert await wait_until(all_in, 20)
        kinds = [m for m, _ in got]
        assert kinds.index(p2p.VOTE) < n // 4, kinds.index(p2p.VOTE)
        assert [int.from_bytes(b, "big") for m, b in got if m == p2p.TXS] == list(range(n))
        await tx.stop()
        await rx.stop()
    asyncio.run(main())
