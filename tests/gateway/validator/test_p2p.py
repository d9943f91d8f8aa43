"""P2P: sending order (a vote queued behind a large backlog of tx gossip goes out first, so consensus
latency does not grow with the tx load; the gossip itself still arrives complete and in order) and the
connection limits (observers, handshakes in progress, handshake frame size)."""

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

_HELLO_HEAD = b"\x00"     # first byte of a HELLO frame's length (93)


async def _ignore(peer, mtype, payload):
    return None


async def _net(key, g, dial=(), **kw) -> p2p.Network:
    net = p2p.Network(key, g.chain_id, g.hash, ("127.0.0.1", 0), list(dial), _ignore, **kw)
    await net.start()
    return net


def test_observers_beyond_the_cap_are_refused_and_authorities_still_connect():
    async def main() -> None:
        g = parse_genesis(genesis_doc(2, 0.2))
        auth = set(g.authorities)
        node = await _net(AUTH_KEYS[0], g, limits=p2p.Limits(max_observers=2), authorities=g.authorities)
        observers = [await _net(k, g, [node.listen]) for k in AUTH_KEYS[4:7]]   # three non-authority keys

        def connected_observers() -> set[bytes]:
            return {a for a in node.peers if a not in auth}

        async def full() -> bool:
            return len(connected_observers()) == 2 and node.counters.get(p2p.OBSERVERS_FULL, 0) >= 2
        assert await wait_until(full, 10)                       # the third keeps redialling, refused each time
        await asyncio.sleep(0.5)
        assert len(connected_observers()) == 2
        refused = [o for o in observers if o.address not in node.peers]
        assert len(refused) == 1
        # an authority is admitted with the observer slots full
        other = await _net(AUTH_KEYS[1], g, [node.listen], authorities=g.authorities)

        async def authority_in() -> bool:
            return other.address in node.peers and node.address in other.peers
        assert await wait_until(authority_in, 10)
        assert len(node.peers) == 3
        # an observer leaves: the refused one gets its slot
        leaving = next(o for o in observers if o.address in node.peers)
        await leaving.stop()

        async def swapped() -> bool:
            return refused[0].address in node.peers and leaving.address not in node.peers
        assert await wait_until(swapped, 10)
        assert len(connected_observers()) == 2 and other.address in node.peers
        for n in observers + [other, node]:
            await n.stop()
    asyncio.run(main())


def test_sockets_beyond_the_pending_handshake_cap_are_closed_at_once():
    async def main() -> None:
        g = parse_genesis(genesis_doc(2, 0.2))
        cap = 8
        other = await _net(AUTH_KEYS[1], g, authorities=g.authorities)
        limits = p2p.Limits(max_pending_handshakes=cap, handshake_s=5.0)
        node = await _net(AUTH_KEYS[0], g, [other.listen], limits=limits, authorities=g.authorities)

        async def linked() -> bool:
            return other.address in node.peers
        assert await wait_until(linked, 10)
        for p in list(node.peers.values()):                     # start again with the slow sockets in place
            p.close()
        socks = [await asyncio.open_connection(*node.listen) for _ in range(50)]   # never send a HELLO

        async def counted() -> bool:
            return node.counters.get(p2p.HANDSHAKES_FULL, 0) >= 50 - cap
        assert await wait_until(counted, 5)
        assert node.pending == cap

        async def first(r: asyncio.StreamReader) -> bytes:
            try:
                return await asyncio.wait_for(r.read(1), 1.0)
            except asyncio.TimeoutError:
                return b"timeout"
        got = await asyncio.gather(*(first(r) for r, _ in socks))
        assert got.count(b"") == 50 - cap                       # closed at once, nothing sent
        assert got.count(_HELLO_HEAD) == cap                    # the others got the node's HELLO and wait
        # the authority link comes back while the pending slots are full: the node's own dial is not capped
        assert await wait_until(linked, 5)
        assert node.pending == cap
        for _, w in socks:
            w.close()
        await other.stop()
        await node.stop()
    asyncio.run(main())


def test_a_handshake_frame_longer_than_a_hello_is_refused():
    async def main() -> None:
        g = parse_genesis(genesis_doc(2, 0.2))
        node = await _net(AUTH_KEYS[0], g, authorities=g.authorities)
        r, w = await asyncio.open_connection(*node.listen)
        w.write((p2p.HANDSHAKE_FRAME + 1).to_bytes(4, "big") + b"\x01")
        await w.drain()

        async def refused() -> bool:
            return node.counters.get(p2p.FRAME_TOO_LARGE, 0) == 1
        assert await wait_until(refused, 5)
        assert node.pending == 0
        w.close()
        await node.stop()
    asyncio.run(main())
