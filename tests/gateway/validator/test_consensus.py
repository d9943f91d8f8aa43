"""Consensus state machine (consensus.py) in a simulated network: no sockets, no clock.

The simulator delivers proposals and votes with random delays, drops and
reorderings, runs crashed, restarted and equivocating (Byzantine) authorities,
and checks: never two different decided blocks at one height among honest
authorities (safety), every certificate holds > 2/3 distinct precommits for the
decided hash, and with 3 of 4 up after the network settles, every live honest
authority keeps deciding (liveness).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.validator.consensus import (NEW_HEIGHT, PROPOSE, Decide, Equivocation, Machine, ProposalIn, Propose,
                                         Schedule, SignVote, Timeouts)
from gateway.validator.crypto import address_of, keccak256, private_key
from gateway.validator.votes import (DOUBLE_SIGN_REFUSED, PRECOMMIT, PREVOTE, PROPOSAL, ConsensusError, Signer,
                                     Vote, VoteLog, quorum, sign_vote, verify_certificate)

CHAIN = 7
KEYS = [private_key((500 + i).to_bytes(32, "big")) for i in range(7)]
ADDRS = [address_of(k) for k in KEYS]
T = Timeouts(block_time=1.0, propose=3.0, propose_delta=1.0, vote=1.0, vote_delta=0.5)


class MemLog:
    """VoteLog's interface without the file (the simulator signs thousands of votes)."""

    def __init__(self) -> None:
        self.votes: dict[tuple[int, int, int], Vote] = {}

    def get(self, h: int, r: int, k: int) -> Vote | None:
        return self.votes.get((h, r, k))

    def append(self, v: Vote) -> None:
        self.votes[v.key] = v

    def at_height(self, h: int) -> list[Vote]:
        return [v for v in self.votes.values() if v.height == h]


@dataclass
class SimNode:
    i: int
    machine: Machine
    signer: Signer
    byzantine: bool = False
    up: bool = True
    epoch: int = 0                     # bumps on crash: stale timers are ignored
    decided: dict[int, bytes] = field(default_factory=dict)
    seen: set = field(default_factory=set)


class Sim:
    def __init__(self, n: int, rng: random.Random, *, byzantine: set[int] = frozenset(), drop: float = 0.0,
                 max_delay: float = 0.3, gst: float = 0.0) -> None:
        self.n = n
        self.auth = tuple(ADDRS[:n])
        self.rng = rng
        self.drop = drop
        self.max_delay = max_delay
        self.gst = gst          # before: drops and long delays; after: delivery within max_delay
        self.now = 0.0
        self.q: list[tuple[float, int, int, int, object]] = []
        self.seq = 0
        self.nodes = [SimNode(i, Machine(self.auth, ADDRS[i], T, CHAIN), Signer(KEYS[i], CHAIN, MemLog()),  # type: ignore[arg-type]
                              byzantine=i in byzantine) for i in range(n)]
        self.equivocations = 0
        self.blocks: dict[bytes, int] = {}
        self.certs: list[tuple[int, Decide]] = []
        self.events: list[tuple[float, str, int]] = []

    def push(self, delay: float, to: int, epoch: int, ev: object) -> None:
        self.seq += 1
        heapq.heappush(self.q, (self.now + delay, self.seq, to, epoch, ev))

    def send(self, frm: int, ev: object, only: int | None = None, skip_self: bool = False) -> None:
        for j in range(self.n):
            if only is not None and j != only:
                continue
            if j == frm:
                if skip_self:
                    continue
                self.push(0.0, j, -1, ev)
                continue
            if self.now < self.gst and self.rng.random() < self.drop:
                continue
            hi = self.max_delay * (5 if self.now < self.gst else 1)
            self.push(self.rng.uniform(0, hi), j, -1, ev)

    def start(self) -> None:
        for nd in self.nodes:
            self.act(nd, nd.machine.start(1, self.now))
            self.push(1.0, nd.i, -2, ("tick",))

    def tick(self, nd: SimNode) -> None:
        """The node's periodic re-gossip: its proposals and every vote it holds for the current height
        (what node.py does when a height stalls), so messages lost before GST are not lost forever."""
        m = nd.machine
        for per_kind in m.h.votes.values():
            for per in per_kind.values():
                for v in per.values():
                    self.send(nd.i, ("vote", v), skip_self=True)
        for p in m.h.proposals.values():
            if m.proposer(p.height, p.round) == ADDRS[nd.i]:
                self.send(nd.i, ("prop", p, nd.i), skip_self=True)

    def new_block(self, h: int, r: int, who: int) -> bytes:
        bh = keccak256(f"{h}/{r}/{who}/{self.rng.random()}".encode())
        self.blocks[bh] = h
        return bh

    def act(self, nd: SimNode, actions: list) -> None:
        for a in actions:
            if isinstance(a, Propose):
                if nd.byzantine:  # a different block to every peer
                    for j in range(self.n):
                        bh = self.new_block(a.height, a.round, nd.i)
                        self.send(nd.i, ("prop", ProposalIn(a.height, a.round, bh, -1, True), nd.i), only=j)
                    continue
                bh = a.block_hash or self.new_block(a.height, a.round, nd.i)
                try:
                    nd.signer.sign(PROPOSAL, a.height, a.round, bh, a.pol_round)
                except ConsensusError:
                    continue
                self.send(nd.i, ("prop", ProposalIn(a.height, a.round, bh, a.pol_round, True), nd.i))
            elif isinstance(a, SignVote):
                if nd.byzantine:  # equivocate: two different values to alternate peers, signed without the log
                    for j in range(self.n):
                        val = a.block_hash if j % 2 == 0 else keccak256(bytes([j, a.round % 256]))
                        v = sign_vote(KEYS[nd.i], a.kind, CHAIN, a.height, a.round, val)
                        self.send(nd.i, ("vote", v), only=j)
                    continue
                try:
                    v = nd.signer.sign(a.kind, a.height, a.round, a.block_hash)
                except ConsensusError as exc:
                    assert exc.reason == DOUBLE_SIGN_REFUSED
                    continue
                self.send(nd.i, ("vote", v))
            elif isinstance(a, Schedule):
                self.push(a.delay, nd.i, nd.epoch, ("timeout", a.height, a.round, a.step))
            elif isinstance(a, Decide):
                assert a.height not in nd.decided
                nd.decided[a.height] = a.block_hash
                self.certs.append((nd.i, a))
            elif isinstance(a, Equivocation):
                self.equivocations += 1

    def crash(self, i: int) -> None:
        nd = self.nodes[i]
        nd.up = False
        nd.epoch += 1

    def restart(self, i: int) -> None:
        """A fresh machine over the same vote log: restores round and lock from it."""
        nd = self.nodes[i]
        nd.up = True
        nd.epoch += 1
        nd.machine = Machine(self.auth, ADDRS[i], T, CHAIN)
        h = max(nd.decided, default=0) + 1
        self.act(nd, nd.machine.start(h, self.now, own_votes=nd.signer.log.at_height(h)))  # type: ignore[attr-defined]

    def sync(self, nd: SimNode) -> None:
        """Catch-up: adopt the heights decided (with certificates) by other nodes, then join."""
        if nd.byzantine:
            return
        adopted = False
        while True:
            h = max(nd.decided, default=0) + 1
            d = next((d for j, d in self.certs if d.height == h and j != nd.i), None)
            if d is None:
                break
            verify_certificate(d.certificate, CHAIN, self.auth, h, d.block_hash)
            nd.decided[h] = d.block_hash
            nd.machine.decided[h] = d.block_hash
            adopted = True
        if adopted:
            h = max(nd.decided) + 1
            self.act(nd, nd.machine.start(h, self.now, own_votes=nd.signer.log.at_height(h)))  # type: ignore[attr-defined]

    def at(self, t: float, what: str, i: int) -> None:
        self.events.append((t, what, i))
        self.events.sort()

    def run(self, until: float) -> None:
        while True:
            tq = self.q[0][0] if self.q else float("inf")
            te = self.events[0][0] if self.events else float("inf")
            if min(tq, te) > until:
                self.now = until
                return
            if te <= tq:
                t, what, i = self.events.pop(0)
                self.now = max(self.now, t)
                self.crash(i) if what == "crash" else self.restart(i)
                continue
            t, _, to, epoch, ev = heapq.heappop(self.q)
            self.now = t
            nd = self.nodes[to]
            if not nd.up and ev[0] != "tick":
                continue
            if not nd.up:
                self.push(1.0, nd.i, -2, ("tick",))
                continue
            if ev[0] == "tick":
                self.push(1.0, nd.i, -2, ("tick",))
                if not nd.byzantine:
                    self.tick(nd)
                continue
            if ev[0] == "timeout":
                if epoch != nd.epoch:
                    continue
                self.act(nd, nd.machine.on_timeout(ev[1], ev[2], ev[3], self.now))
            elif ev[0] == "prop":
                p, frm = ev[1], ev[2]
                if nd.machine.proposer(p.height, p.round) != ADDRS[frm]:
                    continue
                if p.height > nd.machine.height:
                    self.sync(nd)
                self.act(nd, nd.machine.on_proposal(p, self.now))
            else:
                v = ev[1]
                if v.height > nd.machine.height:
                    self.sync(nd)
                if not nd.byzantine and (v.signer, v.key, v.block_hash) not in nd.seen:
                    nd.seen.add((v.signer, v.key, v.block_hash))   # gossip: relay each new vote once
                    if v.signer != ADDRS[nd.i]:
                        self.send(nd.i, ("vote", v), skip_self=True)
                self.act(nd, nd.machine.on_vote(v, self.now))

    def check_safety(self) -> int:
        honest = [nd for nd in self.nodes if not nd.byzantine]
        heights = set().union(*(nd.decided for nd in honest))
        for h in heights:
            vals = {nd.decided[h] for nd in honest if h in nd.decided}
            assert len(vals) == 1, f"conflicting final blocks at height {h}: {vals}"
        for _i, d in self.certs:
            verify_certificate(d.certificate, CHAIN, self.auth, d.height, d.block_hash)
        return max(heights, default=0)


def test_quorum_sizes():
    assert [quorum(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 3, 3, 4, 5, 5]


def test_single_authority_decides_every_slot():
    m = Machine((ADDRS[0],), ADDRS[0], T, CHAIN)
    acts = m.start(1, 0.0)
    assert acts == [Schedule(1, 0, NEW_HEIGHT, 0.0)]
    acts = m.on_timeout(1, 0, NEW_HEIGHT, 0.0)
    prop = next(a for a in acts if isinstance(a, Propose))
    assert prop == Propose(1, 0, None, -1)
    signer = Signer(KEYS[0], CHAIN, MemLog())  # type: ignore[arg-type]
    bh = keccak256(b"b1")
    acts = m.on_proposal(ProposalIn(1, 0, bh, -1, True), 0.1)
    assert acts == [SignVote(PREVOTE, 1, 0, bh)]
    acts = m.on_vote(signer.sign(PREVOTE, 1, 0, bh), 0.1)
    assert SignVote(PRECOMMIT, 1, 0, bh) in acts and m.locked_hash == bh
    acts = m.on_vote(signer.sign(PRECOMMIT, 1, 0, bh), 0.2)
    d = next(a for a in acts if isinstance(a, Decide))
    assert d.block_hash == bh and len(d.certificate.votes) == 1
    # next height waits out the slot: started at 0.0, block time 1.0, now 0.2
    assert Schedule(2, 0, NEW_HEIGHT, pytest.approx(0.8)) in acts  # type: ignore[comparison-overlap]
    assert m.height == 2


def test_invalid_proposal_gets_nil_prevote_and_locked_node_refuses_other_value():
    m = Machine(tuple(ADDRS[:4]), ADDRS[1], T, CHAIN)
    m.start(1, 0.0)
    m.on_timeout(1, 0, NEW_HEIGHT, 0.0)
    a = keccak256(b"A")
    assert m.on_proposal(ProposalIn(1, 0, a, -1, False), 0.0) == [SignVote(PREVOTE, 1, 0, None)]
    # round 1: valid proposal, 3 prevotes -> lock and precommit
    m.on_timeout(1, 0, "precommit", 0.0)
    assert m.round == 1
    b = keccak256(b"B")
    assert m.on_proposal(ProposalIn(1, 1, b, -1, True), 0.0) == [SignVote(PREVOTE, 1, 1, b)]
    for i in (0, 2, 3):
        acts = m.on_vote(sign_vote(KEYS[i], PREVOTE, CHAIN, 1, 1, b), 0.0)
    assert SignVote(PRECOMMIT, 1, 1, b) in acts and m.locked_hash == b and m.locked_round == 1
    # round 2: another value without a newer POL -> nil prevote (locked on b)
    m.on_timeout(1, 1, "precommit", 0.0)
    c = keccak256(b"C")
    assert m.on_proposal(ProposalIn(1, 2, c, -1, True), 0.0) == [SignVote(PREVOTE, 1, 2, None)]
    # round 3: b re-proposed with POL round 1 -> prevote b
    m.on_timeout(1, 2, "precommit", 0.0)
    assert m.on_proposal(ProposalIn(1, 3, b, 1, True), 0.0) == [SignVote(PREVOTE, 1, 3, b)]


def test_equivocating_vote_is_reported_and_ignored():
    m = Machine(tuple(ADDRS[:4]), ADDRS[0], T, CHAIN)
    m.start(1, 0.0)
    v1 = sign_vote(KEYS[2], PREVOTE, CHAIN, 1, 0, keccak256(b"x"))
    v2 = sign_vote(KEYS[2], PREVOTE, CHAIN, 1, 0, keccak256(b"y"))
    assert m.on_vote(v1, 0.0) == []
    acts = m.on_vote(v2, 0.0)
    assert acts == [Equivocation(v1, v2)]
    assert m.on_vote(v2, 0.0) == []        # seen before: neither reported twice nor counted twice
    assert m._count(0, PREVOTE) == 1 and m._count(0, PREVOTE, keccak256(b"y")) == 1


def test_round_skip_on_f_plus_one_higher_round_messages():
    m = Machine(tuple(ADDRS[:4]), ADDRS[0], T, CHAIN)
    m.start(1, 0.0)
    m.on_timeout(1, 0, NEW_HEIGHT, 0.0)
    m.on_vote(sign_vote(KEYS[1], PREVOTE, CHAIN, 1, 5, None), 0.0)
    assert m.round == 0
    acts = m.on_vote(sign_vote(KEYS[2], PRECOMMIT, CHAIN, 1, 5, None), 0.0)
    assert m.round == 5 and Schedule(1, 5, PROPOSE, T.of(PROPOSE, 5)) in acts


def test_signer_refuses_a_second_different_vote_across_restart(tmp_path):
    log = VoteLog(tmp_path / "votes.log")
    s = Signer(KEYS[0], CHAIN, log)
    v = s.sign(PREVOTE, 3, 1, keccak256(b"a"))
    assert s.sign(PREVOTE, 3, 1, keccak256(b"a")) == v          # same vote: re-sent, not re-signed
    log.close()
    with open(tmp_path / "votes.log", "ab") as f:                 # a torn record from a crash mid-write
        f.write(b"\x01\x02\x03")
    log2 = VoteLog(tmp_path / "votes.log")
    s2 = Signer(KEYS[0], CHAIN, log2)
    with pytest.raises(ConsensusError) as e:
        s2.sign(PREVOTE, 3, 1, keccak256(b"b"))
    assert e.value.reason == DOUBLE_SIGN_REFUSED
    with pytest.raises(ConsensusError):
        s2.sign(PREVOTE, 3, 1, None)
    assert s2.sign(PRECOMMIT, 3, 1, None).kind == PRECOMMIT
    log2.compact(4)
    assert VoteLog(tmp_path / "votes.log").votes == {}


def test_restart_restores_the_lock_from_the_vote_log():
    signer = Signer(KEYS[1], CHAIN, MemLog())  # type: ignore[arg-type]
    b = keccak256(b"B")
    signer.sign(PREVOTE, 4, 2, b)
    signer.sign(PRECOMMIT, 4, 2, b)
    m = Machine(tuple(ADDRS[:4]), ADDRS[1], T, CHAIN)
    m.start(4, 0.0, own_votes=signer.log.at_height(4))  # type: ignore[attr-defined]
    assert (m.round, m.locked_round, m.locked_hash) == (2, 2, b)
    m.on_timeout(4, 2, "precommit", 0.0)
    c = keccak256(b"C")
    assert m.on_proposal(ProposalIn(4, 3, c, -1, True), 0.0) == [SignVote(PREVOTE, 4, 3, None)]


def test_four_honest_nodes_decide_every_height_with_slot_pacing():
    sim = Sim(4, random.Random(1), max_delay=0.05)
    sim.start()
    sim.run(20.0)
    top = sim.check_safety()
    assert top >= 17  # 1 s slots, decisions well inside each slot
    assert all(len(nd.decided) >= 17 for nd in sim.nodes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), byz=st.sampled_from([None, 0, 1, 2, 3]),
       drop=st.floats(0.0, 0.5), max_delay=st.floats(0.01, 1.5))
def test_safety_and_liveness_with_one_byzantine_and_a_bad_network(seed, byz, drop, max_delay):
    """Before GST: drops and delays up to 5x max_delay (reordering); one equivocating
    authority (or none). Safety always; after GST (t=10 s) honest nodes keep deciding."""
    rng = random.Random(seed)
    sim = Sim(4, rng, byzantine=set() if byz is None else {byz}, drop=drop, max_delay=max_delay, gst=10.0)
    sim.start()
    sim.run(10.0)
    h_gst = sim.check_safety()
    sim.run(45.0)
    top = sim.check_safety()
    honest = [nd for nd in sim.nodes if not nd.byzantine]
    assert top > h_gst
    assert all(max(nd.decided, default=0) >= h_gst + 1 for nd in honest)
    if byz is not None:
        assert sim.equivocations > 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), who=st.integers(0, 3), t_crash=st.floats(0.5, 10.0),
       down=st.floats(0.1, 8.0), second=st.booleans())
def test_crash_and_restart_never_forks_and_stalls_only_below_quorum(seed, who, t_crash, down, second):
    """One authority crashes (timers lost, vote log kept) and restarts; optionally a
    second one is down at the same time (2 of 4 down: no decisions while both are down)."""
    rng = random.Random(seed)
    sim = Sim(4, rng, max_delay=0.2)
    sim.start()
    other = (who + 1) % 4
    sim.at(t_crash, "crash", who)
    sim.at(t_crash + down, "restart", who)
    if second:
        sim.at(t_crash + 0.01, "crash", other)
        sim.at(t_crash + down + 0.02, "restart", other)
        sim.run(t_crash + 0.02)
        # a height already past its prevotes may still finish; then nothing more while 2 are down
        h_down = sim.check_safety()
        sim.run(t_crash + down)
        assert sim.check_safety() <= h_down + 1
    sim.run(t_crash + down + 25.0)
    top = sim.check_safety()
    assert top >= int(t_crash + down) + 10   # at most ~15 s to re-align rounds after a long outage
    for nd in sim.nodes:
        assert max(nd.decided, default=0) >= top - 2
