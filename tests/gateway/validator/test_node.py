"""In-process validators over real loopback TCP: a 4-node network under load, catch-up of a late
node, and hostile peers (wrong genesis, oversize frames, non-authority votes and proposals,
equivocation, forged certificates): each rejected with a specific counted reason, node still up."""

from __future__ import annotations

import asyncio
import struct

from gateway.validator import p2p
from gateway.validator.block import Block, Header
from gateway.validator.crypto import keccak256, private_key
from gateway.validator.genesis import parse_genesis
from gateway.validator.node import Node
from gateway.validator.votes import PRECOMMIT, PREVOTE, PROPOSAL, Certificate, sign_vote

from . import kit
from .netkit import AUTH_KEYS, genesis_doc, node_configs, wait_until


def test_four_nodes_finalise_the_same_chain_and_a_late_node_catches_up(tmp_path):
    async def main() -> None:
        g = parse_genesis(genesis_doc(4, 0.2))
        cfgs = node_configs(tmp_path, g, 4)
        nodes = [Node(c) for c in cfgs[:3]]
        for n in nodes:
            await n.start()
        hashes = []
        for k in range(30):
            res = await nodes[k % 3].submit([kit.raw_tx(2 + k % 3, k // 3, kit.transfer(6, 1 + k))])
            assert isinstance(res[0], bytes)
            hashes.append(res[0])
        assert await wait_until(lambda: _all_final(nodes, hashes), 15)
        late = Node(cfgs[3])                       # joins 3 live authorities: syncs final blocks with certificates
        await late.start()
        nodes.append(late)
        target = max(n.store.head.height for n in nodes[:3])
        assert await wait_until(lambda: _at_least(late, target), 15)
        assert late.counters.get("blocks_synced", 0) >= 1
        assert await wait_until(lambda: _votes_from(nodes[0], late), 10)   # and then takes part in consensus
        top = min(n.store.head.height for n in nodes)
        for h in range(1, top + 1):
            assert len({n.store.header_at(h).hash for n in nodes}) == 1
        for n in nodes:
            await n.stop()
    asyncio.run(main())


async def _all_final(nodes, hashes) -> bool:
    return all(n.store.receipt(h) is not None for n in nodes for h in hashes)


async def _at_least(node, h) -> bool:
    return node.store.head.height >= h


async def _votes_from(node, other) -> bool:
    return any(other.address in per for d in node.machine.h.votes.values() for per in [d])


async def _connect(g, key, target, genesis_hash=None) -> p2p.Network:
    async def handler(peer, mtype, payload):
        return None
    net = p2p.Network(key, g.chain_id, genesis_hash or g.hash, ("127.0.0.1", 0), [target], handler)
    await net.start()
    return net


def test_hostile_peers_are_rejected_and_counted(tmp_path):
    async def main() -> None:
        g = parse_genesis(genesis_doc(4, 0.2))
        node = Node(node_configs(tmp_path, g, 4)[0])    # alone: no quorum, stays at height 1
        await node.start()
        target = node.net.listen
        c = node.status
        # wrong genesis: refused at hello
        bad = await _connect(g, private_key(b"\x05" * 32), target, genesis_hash=b"\x01" * 32)
        assert await wait_until(lambda: _counter(node, "p2p_wrong_genesis"), 5)
        await bad.stop()
        # oversize frame header
        r, w = await asyncio.open_connection(*target)
        w.write(struct.pack(">I", p2p.MAX_FRAME + 1) + b"\x01")
        await w.drain()
        assert await wait_until(lambda: _counter(node, "p2p_frame_too_large"), 5)
        w.close()
        # an observer (non-authority) peer: its votes and proposals are rejected and counted
        outsider = private_key(b"\x06" * 32)
        obs = await _connect(g, outsider, target)
        assert await wait_until(lambda: _peered(obs), 5)
        peer = next(iter(obs.peers.values()))
        peer.send(p2p.VOTE, sign_vote(outsider, PREVOTE, g.chain_id, 1, 0, keccak256(b"x")).encode())
        assert await wait_until(lambda: _counter(node, "vote_not_authority"), 5)
        # a proposal signed by an authority that is not this round's proposer
        h1 = Header(g.chain_id, 1, 0, node.store.head.hash, kit.addr(0), 0, b"\x00" * 32, b"\x00" * 32)
        pv = sign_vote(AUTH_KEYS[3], PROPOSAL, g.chain_id, 1, 0, h1.hash)
        assert node.machine.proposer(1, 0) != pv.signer
        peer.send(p2p.PROPOSAL, pv.encode() + Block(h1, ()).encode())
        assert await wait_until(lambda: _counter(node, "proposal_wrong_proposer"), 5)
        # a garbled vote (bad signature)
        v = bytearray(sign_vote(AUTH_KEYS[1], PREVOTE, g.chain_id, 1, 0, None).encode())
        v[100] ^= 0xFF
        peer.send(p2p.VOTE, bytes(v))
        assert await wait_until(lambda: _counter_any(node, "vote_"), 5)
        # equivocation: one authority, two different prevotes for the same height and round
        peer.send(p2p.VOTE, sign_vote(AUTH_KEYS[2], PREVOTE, g.chain_id, 1, 0, keccak256(b"a")).encode())
        peer.send(p2p.VOTE, sign_vote(AUTH_KEYS[2], PREVOTE, g.chain_id, 1, 0, keccak256(b"b")).encode())
        assert await wait_until(lambda: _counter(node, "equivocations"), 5)
        assert node.evidence and node.evidence[-1][0].signer == node.evidence[-1][1].signer
        # a "final" block whose certificate has one precommit (no quorum): refused, not committed
        fake = Header(g.chain_id, 1, 0, node.store.head.hash, node.machine.proposer(1, 0), 0, b"\x00" * 32,
                      b"\x00" * 32)
        cert = Certificate(1, 0, fake.hash, (sign_vote(AUTH_KEYS[1], PRECOMMIT, g.chain_id, 1, 0, fake.hash),))
        ce = cert.encode()
        peer.send(p2p.BLOCK, struct.pack(">I", len(ce)) + ce + Block(fake, ()).encode())
        assert await wait_until(lambda: _counter(node, "block_no_quorum"), 5)
        assert node.store.head.height == 0
        st = c()
        assert st["validatorsUp"] == 1 and st["height"] == 0     # observers are not validators
        await obs.stop()
        await node.stop()
    asyncio.run(main())


async def _counter(node, name) -> bool:
    return node.status()["counters"].get(name, 0) >= 1


async def _counter_any(node, prefix) -> bool:
    return any(k.startswith(prefix) and k != "vote_not_authority" for k in node.status()["counters"])


async def _peered(net) -> bool:
    return bool(net.peers)


def test_a_block_is_final_only_once_its_sqlite_transaction_committed(tmp_path):
    """The writer thread is held inside the block's transaction: the tx is 'included', the head and the
    receipt index do not move, and the intake keeps answering; released, the tx is final."""
    import threading

    async def main() -> None:
        g = parse_genesis(genesis_doc(1, 0.1))
        node = Node(node_configs(tmp_path, g, 1)[0])
        await node.start()
        gate = threading.Event()
        def hold(at: str) -> None:   # on the writer thread; committing[0] is the block being written
            if at == "meta" and node.committing and node.committing[0].block.txs:
                gate.wait(10)
        node.store.fault = hold
        (h,) = await node.submit([kit.raw_tx(2, 0, kit.transfer(6, 5))])
        assert await wait_until(lambda: _included(node, h), 5)
        h0 = node.committing[0].block.header.height - 1       # the head below the block held in its write
        await asyncio.sleep(0.3)                     # several slots: the next proposal waits for the parent
        assert node.tx_status(h)["status"] == "included"
        assert node.store.head.height == h0 and node.store.receipt(h) is None
        (h2,) = await node.submit([kit.raw_tx(2, 1, kit.transfer(6, 5))])    # intake goes on meanwhile
        assert node.tx_status(h2)["status"] == "pending"
        assert node.counters.get("propose_waits_for_commit", 0) >= 1
        gate.set()
        st = await node.wait_final(h, 5)
        assert st["status"] == "final" and node.store.receipt(h) is not None
        assert (await node.wait_final(h2, 5))["status"] == "final"
        node.store.fault = None
        await node.stop()
    asyncio.run(main())


async def _included(node, h) -> bool:
    return node.tx_status(h)["status"] == "included" and bool(node.committing)
