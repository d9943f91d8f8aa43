"""In-process validators over real loopback TCP: a 4-node network under load, catch-up of a late
node, and hostile peers (wrong genesis, oversize frames, non-authority votes and proposals,
equivocation, forged certificates, malformed compact proposals, irregular tx fetch replies): each
rejected with a specific counted reason, node still up. Compact proposals: a follower fetches the
txs it lacks from the proposer, and prevotes nil when it cannot get them."""

from __future__ import annotations

import asyncio
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.validator import p2p
from gateway.validator.block import Block, CompactBlock, Header
from gateway.validator.crypto import address_of, keccak256, private_key
from gateway.validator.execute import build_block
from gateway.validator.genesis import parse_genesis
from gateway.validator.node import Node
from gateway.validator.storage import MemoryStore
from gateway.validator.tx import verify_tx
from gateway.validator.txfetch import decode_get_txs, decode_tx_reply, encode_get_txs, encode_tx_reply
from gateway.validator.votes import PRECOMMIT, PREVOTE, PROPOSAL, Certificate, decode_vote, sign_vote

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


# ---- compact proposals: txs a follower lacks are fetched from the proposer --------------------------

class _AsProposer:
    """The test as the proposer of height 1, round 0 (authority 1), connected to a node (authority 0):
    it records the node's frames and answers its GET_TXS with ``answer(request, hashes)``."""

    def __init__(self, g, answer=None) -> None:
        self.g = g
        self.key = AUTH_KEYS[1]
        self.answer = answer
        self.frames: list[tuple[int, bytes]] = []
        self.net: p2p.Network | None = None

    async def connect(self, target) -> p2p.Peer:
        async def handler(peer, mtype, payload):
            self.frames.append((mtype, payload))
            if mtype == p2p.GET_TXS and self.answer is not None:
                rid, hashes = decode_get_txs(payload)
                peer.send(p2p.TX_REPLY, encode_tx_reply(rid, self.answer(rid, hashes)))
        self.net = p2p.Network(self.key, self.g.chain_id, self.g.hash, ("127.0.0.1", 0), [target], handler)
        await self.net.start()
        assert await wait_until(lambda: _peered(self.net), 5)
        return next(iter(self.net.peers.values()))

    def block(self, raws: list[bytes], round: int = 0) -> Block:
        s = MemoryStore(self.g)
        params = self.g.params()
        vs = [verify_tx(r, params.domain) for r in raws]
        blk, _res, rejected = build_block(s, s.accumulator, s.head, vs, params, address_of(self.key),
                                          max(s.head.timestamp, int(time.time())), round, header_at=s.header_at)
        assert not rejected
        return blk

    def proposal(self, blk: Block, round: int = 0) -> bytes:
        pv = sign_vote(self.key, PROPOSAL, self.g.chain_id, 1, round, blk.hash)
        return pv.encode() + CompactBlock(blk.header, tuple(keccak256(r) for r in blk.txs)).encode()

    def asked(self) -> list[list[bytes]]:
        return [decode_get_txs(p)[1] for m, p in self.frames if m == p2p.GET_TXS]

    def prevote(self, round: int = 0):
        for m, p in self.frames:
            if m == p2p.VOTE:
                v = decode_vote(p)
                if v.kind == PREVOTE and (v.height, v.round) == (1, round):
                    return v
        return None

    async def stop(self) -> None:
        if self.net is not None:
            await self.net.stop()


async def _node_at_height_1(tmp_path, block_time: float) -> Node:
    g = parse_genesis(genesis_doc(4, block_time))
    node = Node(node_configs(tmp_path, g, 4)[0])     # alone: stays at height 1, round 0
    await node.start()
    assert node.machine.proposer(1, 0) == address_of(AUTH_KEYS[1])
    return node


def test_a_follower_fetches_the_txs_it_lacks_from_the_proposer_and_prevotes_the_block(tmp_path):
    async def main() -> None:
        node = await _node_at_height_1(tmp_path, 5.0)      # propose timeout 15 s: the prevote is the proposal's
        raws = [kit.raw_tx(2, 0, kit.transfer(6, 5)), kit.raw_tx(3, 0, kit.transfer(6, 7))]
        (known,) = await node.submit(raws[:1], gossip=False, log_intake=False)       # gossiped earlier
        me = _AsProposer(node.genesis, answer=lambda rid, hashes: [r for r in raws if keccak256(r) in hashes])
        peer = await me.connect(node.net.listen)
        blk = me.block(raws)
        payload = me.proposal(blk)
        assert len(payload) == 142 + 144 + 4 + 2 * 32                  # header and hashes, not the txs
        peer.send(p2p.PROPOSAL, payload)
        assert await wait_until(lambda: _async(me.prevote() is not None), 5)
        assert me.prevote().block_hash == blk.hash
        assert me.asked() == [[keccak256(raws[1])]]                     # only the tx it lacked
        c = node.counters
        assert c["fetch_requests"] == 1 and c["fetched_txs"] == 1 and c["validate_checked_txs"] == 1
        assert node.tx_status(known)["status"] == "included"
        # it holds the full block for its lock, and serves the block's txs to a peer that lacks them
        assert node.proposing.proposals[(1, 0)].block == blk.encode()
        got: list[bytes] = []
        me.answer = None
        peer.send(p2p.GET_TXS, encode_get_txs(7, [keccak256(r) for r in raws] + [keccak256(b"unknown")]))
        async def replied() -> bool:
            got[:] = [p for m, p in me.frames if m == p2p.TX_REPLY]
            return bool(got)
        assert await wait_until(replied, 5)
        assert decode_tx_reply(got[0]) == (7, raws)
        assert node.counters["get_txs_unknown"] == 1
        await me.stop()
        await node.stop()
    asyncio.run(main())


def test_txs_not_served_mean_a_nil_prevote_each_irregular_reply_counted(tmp_path):
    async def main() -> None:
        node = await _node_at_height_1(tmp_path, 5.0)
        raws = [kit.raw_tx(2, 0, kit.transfer(6, 5)), kit.raw_tx(3, 0, kit.transfer(6, 7))]
        other = kit.raw_tx(4, 0, kit.transfer(6, 9))
        serve = {"what": lambda hashes: [other]}              # a tx that was not asked for, and nothing else
        me = _AsProposer(node.genesis, answer=lambda rid, hashes: serve["what"](hashes))
        peer = await me.connect(node.net.listen)
        blk = me.block(raws)
        peer.send(p2p.PROPOSAL, me.proposal(blk))
        assert await wait_until(lambda: _async(me.prevote() is not None), 5)
        assert me.prevote().value is None                      # nil: at once, not at the 15 s timeout
        c = node.counters
        assert c["tx_reply_unrequested"] == 1 and c["tx_reply_not_served"] == 2
        assert blk.hash not in node.proposing.blocks and (1, 0) not in node.proposing.proposals
        peer.send(p2p.TX_REPLY, encode_tx_reply(4242, raws))   # a reply to nothing it asked
        assert await wait_until(lambda: _counter(node, "tx_reply_unknown_request"), 5)
        # the proposer sends its proposal again (re-gossip) and serves this time: tried again, valid
        serve["what"] = lambda hashes: [r for r in raws if keccak256(r) in hashes]
        peer.send(p2p.PROPOSAL, me.proposal(blk))
        assert await wait_until(lambda: _async(blk.hash in node.proposing.blocks), 5)
        assert node.counters["fetch_requests"] == 2 and node.counters["fetched_txs"] == 2
        await me.stop()
        await node.stop()
    asyncio.run(main())


def test_a_fetch_never_answered_times_out_and_the_follower_prevotes_nil(tmp_path):
    async def main() -> None:
        node = await _node_at_height_1(tmp_path, 0.4)       # fetch timeout 2 x 0.4 + 0.5 s
        me = _AsProposer(node.genesis)                       # asks go unanswered
        peer = await me.connect(node.net.listen)
        blk = me.block([kit.raw_tx(2, 0, kit.transfer(6, 5))])
        peer.send(p2p.PROPOSAL, me.proposal(blk))
        assert await wait_until(lambda: _counter(node, "fetch_timeout"), 5)
        assert me.prevote() is not None and me.prevote().value is None
        assert blk.hash not in node.proposing.blocks
        await me.stop()
        await node.stop()
    asyncio.run(main())


def test_a_get_txs_flood_is_served_at_most_the_budget_and_an_honest_follower_still_is(tmp_path):
    """An observer (not an authority) floods GET_TXS for txs the node holds: it gets TX_REPLY bytes
    within its serving budget (burst + rate x time + the one reply that took the budget into debt),
    every request beyond it is refused and counted, and the node keeps making blocks. Another peer
    that needs a few txs meanwhile has a budget of its own and is served."""
    rate, burst_s = 20_000.0, 1.0
    limits = p2p.Limits(serve_bytes_per_s=rate, serve_burst_s=burst_s)

    async def main() -> None:
        g = parse_genesis(genesis_doc(1, 0.2))
        node = Node(node_configs(tmp_path, g, 1, limits=limits)[0])      # a lone authority: makes blocks
        await node.start()
        # a nonce gap keeps these pending (servable) and out of blocks
        held = [kit.raw_tx(2, 100 + i, kit.transfer(6, 1 + i)) for i in range(60)]
        assert all(isinstance(r, bytes) for r in await node.submit(held, gossip=False, log_intake=False))
        hashes = [keccak256(r) for r in held]
        flood: list[bytes] = []
        got: list[bytes] = []

        def recorder(into: list[bytes]):
            async def record(peer, mtype, payload):
                if mtype == p2p.TX_REPLY:
                    into.append(payload)
            return record

        flooder = p2p.Network(AUTH_KEYS[5], g.chain_id, g.hash, ("127.0.0.1", 0), [node.net.listen], recorder(flood))
        honest = p2p.Network(AUTH_KEYS[6], g.chain_id, g.hash, ("127.0.0.1", 0), [node.net.listen], recorder(got))
        for net in (flooder, honest):
            await net.start()
            assert await wait_until(lambda: _peered(net), 5)
        f_peer, h_peer = next(iter(flooder.peers.values())), next(iter(honest.peers.values()))
        one_reply = len(encode_tx_reply(0, held))
        height0 = node.store.head.height
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < 2.0:
            for _ in range(20):
                f_peer.send(p2p.GET_TXS, encode_get_txs(sent, hashes))
                sent += 1
            await asyncio.sleep(0.02)
        h_peer.send(p2p.GET_TXS, encode_get_txs(1, hashes[:3]))            # a follower that lacks 3 txs

        async def all_handled() -> bool:
            c = node.counters
            return len(flood) + len(got) + c.get("get_txs_over_budget", 0) == sent + 1
        assert await wait_until(all_handled, 10)
        elapsed = time.monotonic() - t0
        served = sum(len(r) for r in flood)
        assert served <= rate * burst_s + rate * elapsed + one_reply, (served, elapsed)
        assert len(flood) < sent // 4                                        # most of the flood refused ...
        assert node.counters["get_txs_over_budget"] == sent - len(flood)    # ... each refusal counted
        assert [decode_tx_reply(r) for r in got] == [(1, held[:3])]          # the honest follower: served
        # a budget, not a ban: once its debt is repaid the flooder is served again
        await asyncio.sleep((one_reply + 1) / rate)
        n = len(flood)
        f_peer.send(p2p.GET_TXS, encode_get_txs(10**6, hashes[:2]))
        assert await wait_until(lambda: _async(len(flood) > n), 5)
        assert decode_tx_reply(flood[-1]) == (10**6, held[:2])
        # still up, still making blocks
        (h,) = await node.submit([kit.raw_tx(3, 0, kit.transfer(6, 1))])
        assert await wait_until(lambda: _async(node.store.receipt(h) is not None), 10)
        assert node.store.head.height > height0
        for net in (flooder, honest):
            await net.stop()
        await node.stop()
    asyncio.run(main())


class _StubPeer:
    height = 0
    closed = False

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.serve_out = p2p._Bucket(1e12, 1.0)

    def send(self, mtype: int, payload: bytes) -> None:
        self.sent.append(mtype)


def test_hostile_compact_proposals_and_fetch_frames_are_counted_and_the_node_stays_up(tmp_path):
    """Frames from the right proposer (so past the signature checks): a signed proposal followed by
    garbage or by a mutated compact block (cut, extended, a hash twice, a wrong count, a flipped
    byte), random GET_TXS and TX_REPLY payloads. Each is refused with a counted reason, or taken up
    (a proposal is recorded and validated, a request answered)."""
    reasons = {"truncated", "bad_length", "too_large", "duplicate_tx", "bad_proposal"}

    async def main() -> None:
        node = await _node_at_height_1(tmp_path, 5.0)
        me = _AsProposer(node.genesis)
        raws = [kit.raw_tx(2, 0, kit.transfer(6, 5)), kit.raw_tx(3, 0, kit.transfer(6, 7))]
        loop = asyncio.get_running_loop()
        peer = _StubPeer()
        rounds = iter(range(0, 10**6, 4))                     # rounds whose proposer is authority 1

        def mutate(cb: bytes, how: int, at: int, blob: bytes) -> bytes:
            hashes = [cb[148 + 32 * i:180 + 32 * i] for i in range((len(cb) - 148) // 32)]
            if how == 0:
                return cb[:at % len(cb)]
            if how == 1:
                return cb + blob
            if how == 2:
                h = hashes + [hashes[at % len(hashes)]]
                return cb[:144] + len(h).to_bytes(4, "big") + b"".join(h)
            if how == 3:
                return cb[:144] + at.to_bytes(4, "big") + cb[148:]
            flip = bytearray(cb)
            flip[at % len(cb)] ^= 0xFF
            return bytes(flip)

        def frames():
            return st.one_of(
                st.tuples(st.just(p2p.PROPOSAL), st.binary(max_size=400), st.just(None)),
                st.tuples(st.just(p2p.PROPOSAL), st.just(b""),
                          st.tuples(st.integers(0, 4), st.integers(0, 2**32 - 1), st.binary(max_size=64))),
                st.tuples(st.sampled_from([p2p.GET_TXS, p2p.TX_REPLY]), st.binary(max_size=300), st.just(None)))

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(frame=frames())
        def one(frame) -> None:
            mtype, data, mut = frame
            before = dict(node.counters)
            if mtype == p2p.PROPOSAL:
                r = next(rounds)
                blk = me.block(raws, round=r)
                good = me.proposal(blk, round=r)
                tail = data if mut is None else mutate(good[142:], *mut)
                payload = good[:142] + tail
                if payload == good:
                    return
            else:
                payload = data
            n_sent = len(peer.sent)
            try:
                asyncio.run_coroutine_threadsafe(node._on_frame(peer, mtype, payload), loop).result(10)
            except p2p.P2PError as exc:                        # the connection would be dropped
                assert exc.reason == "bad_frame"
                return
            new = {k for k in node.counters if node.counters[k] != before.get(k)}
            if mtype == p2p.PROPOSAL:
                refused = {k[len("proposal_"):] for k in new if k.startswith("proposal_")}
                assert refused <= reasons, new
                assert refused or (1, r) in node.proposing.proposals, new
            elif mtype == p2p.GET_TXS:
                assert any(k.startswith("get_txs_") for k in new) or len(peer.sent) == n_sent + 1, new
            else:
                assert any(k.startswith("tx_reply_") for k in new), new
        await loop.run_in_executor(None, one)
        assert node.status()["consensusHeight"] == 1          # still up, answering
        await node.stop()
    asyncio.run(main())


async def _async(value: bool) -> bool:
    return value
