"""Tendermint consensus as a pure state machine: events in, actions out.

No I/O, no clock, no keys: the node (node.py) turns network messages and
timers into events, and carries out the actions (sign + persist + broadcast a
vote, build a proposal, schedule a timer, commit a decided block). The rules
are those of Buchman, Kwon, Milosevic, "The latest gossip on BFT consensus"
(2018), Algorithm 1, for n equally weighted authorities with quorum
q = floor(2n/3) + 1 (the "2f+1") and round skip at n - q + 1 (the "f+1"):

- round r of height h: the proposer ``authorities[(h + r) % n]`` proposes its
  valid value if it has one, else a new block;
- PROPOSE: a proposal with no POL round gets our prevote if it is valid and we
  are not locked on something else; a proposal re-proposed with a POL round vr
  (and q prevotes for it in vr) gets our prevote if valid and our lock is not
  newer than vr (or is the same value); otherwise we prevote nil; no proposal
  before timeoutPropose(r): prevote nil;
- q prevotes for a valid proposal, first time in the round: lock on it,
  precommit it (if still at PREVOTE), remember it as the valid value;
- q prevotes for nil: precommit nil; q prevotes for anything: timeoutPrevote;
- q precommits for a proposal we hold and found valid: decide it (any round);
- q precommits for anything: timeoutPrecommit, then round r + 1;
- messages from n - q + 1 distinct authorities at a higher round: jump there.

Timeouts grow linearly with the round so that, after GST, some round is long
enough for an honest proposer. Between heights the machine waits out the slot
(``block_time`` after the previous height started) before round 0.

Safety (docs/chain.md, "Consensus and safety"): two quorums of q out of n
intersect in at least q - (n - q) >= f + 1 authorities, so in at least one
honest one; an honest authority signs one prevote and one precommit per round
(the vote log, votes.py) and, once locked on v at round r, prevotes nothing
but v in later rounds unless shown q prevotes for another value at a round
>= its lock. Hence two different blocks can never both gather q precommits
at one height.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

from .votes import NIL, PRECOMMIT, PREVOTE, PROPOSAL, Certificate, Vote, quorum

NEW_HEIGHT, PROPOSE, PREVOTE_STEP, PRECOMMIT_STEP = "new_height", "propose", "prevote", "precommit"
MAX_VALUES = 3   # values kept per (signer, round, kind): equivocation evidence, bounded
STEP_ORDER = {NEW_HEIGHT: 0, PROPOSE: 1, PREVOTE_STEP: 2, PRECOMMIT_STEP: 3}


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Round r waits ``base + r * delta`` at each step."""
    block_time: float = 1.0
    propose: float = 3.0
    propose_delta: float = 1.0
    vote: float = 1.0
    vote_delta: float = 0.5

    @classmethod
    def for_block_time(cls, bt: float) -> Timeouts:
        return cls(bt, propose=3 * bt, propose_delta=bt, vote=bt, vote_delta=bt / 2)

    def of(self, step: str, round: int) -> float:
        if step == PROPOSE:
            return self.propose + round * self.propose_delta
        return self.vote + round * self.vote_delta


# ---- events ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProposalIn:
    """A proposal whose signature and proposer the node checked; ``valid`` = the block executed."""
    height: int
    round: int
    block_hash: bytes
    pol_round: int
    valid: bool


# ---- actions -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Propose:
    """Build (block_hash None) or re-propose (the valid value) a block for (height, round)."""
    height: int
    round: int
    block_hash: bytes | None
    pol_round: int


@dataclass(frozen=True)
class SignVote:
    kind: int
    height: int
    round: int
    block_hash: bytes | None


@dataclass(frozen=True)
class Schedule:
    height: int
    round: int
    step: str
    delay: float


@dataclass(frozen=True)
class Decide:
    height: int
    round: int
    block_hash: bytes
    certificate: Certificate


@dataclass(frozen=True)
class Equivocation:
    first: Vote
    second: Vote


Action = Union[Propose, SignVote, Schedule, Decide, Equivocation]


@dataclass
class _Height:
    """Everything that resets when the height changes."""
    proposals: dict[int, ProposalIn] = field(default_factory=dict)
    # (round, kind) -> signer -> value -> vote: an equivocating signer may appear under several
    # values (at most MAX_VALUES); each value's tally counts distinct signers (see _count)
    votes: dict[tuple[int, int], dict[bytes, dict[bytes, Vote]]] = field(default_factory=dict)
    lock_fired: set[int] = field(default_factory=set)
    prevote_timer: set[int] = field(default_factory=set)
    precommit_timer: set[int] = field(default_factory=set)


class Machine:
    """One authority's view of consensus. Call ``start`` once, then feed events."""

    def __init__(self, authorities: tuple[bytes, ...], me: bytes | None, timeouts: Timeouts, chain_id: int) -> None:
        self.authorities = authorities
        self.n = len(authorities)
        self.q = quorum(self.n)
        self.skip = self.n - self.q + 1
        self.me = me
        self.t = timeouts
        self.chain_id = chain_id
        self.height = 0
        self.round = 0
        self.step = NEW_HEIGHT
        self.locked_round = -1
        self.locked_hash: bytes | None = None
        self.valid_round = -1
        self.valid_hash: bytes | None = None
        self.h = _Height()
        self.next_h = _Height()      # buffered messages for height + 1
        self.height_started = 0.0
        self.decided: dict[int, bytes] = {}

    def proposer(self, height: int, round: int) -> bytes:
        return self.authorities[(height + round) % self.n]

    # ---- entry points ------------------------------------------------------------------------

    def start(self, height: int, now: float, own_votes: Sequence[Vote] = (), wait: float | None = None
              ) -> list[Action]:
        """Begin ``height`` (after block height-1 is committed). ``own_votes``: what the vote log
        holds for this height (restores the round and the lock after a restart)."""
        self.height = height
        self._reset()
        out: list[Action] = []
        self.height_started = now if wait is None else now + wait
        if own_votes:
            self.round = max(v.round for v in own_votes)
            for v in own_votes:
                if v.kind == PRECOMMIT and v.value is not None and v.round >= self.locked_round:
                    self.locked_round, self.locked_hash = v.round, v.block_hash
            out += self._start_round(self.round)
            for v in own_votes:
                if v.kind != PROPOSAL:
                    out += self.on_vote(v, now)
            return out
        self.step = NEW_HEIGHT
        out.append(Schedule(height, 0, NEW_HEIGHT, wait or 0.0))
        return out

    def on_proposal(self, p: ProposalIn, now: float) -> list[Action]:
        if p.height == self.height + 1:
            self.next_h.proposals.setdefault(p.round, p)
            return []
        if p.height != self.height or p.round in self.h.proposals and self.h.proposals[p.round].valid:
            return []
        self.h.proposals[p.round] = p
        return self._rules(now)

    def on_vote(self, v: Vote, now: float) -> list[Action]:
        """``v``: signature, chain id and authority already checked by the node."""
        if v.kind == PROPOSAL:
            return []
        if v.height == self.height + 1:
            self._record(self.next_h, v)
            return []
        if v.height != self.height:
            return []
        eq = self._record(self.h, v)
        if eq is not None:
            return [eq]
        return self._rules(now)

    def on_timeout(self, height: int, round: int, step: str, now: float) -> list[Action]:
        if height != self.height:
            return []
        out: list[Action] = []
        if step == NEW_HEIGHT and self.step == NEW_HEIGHT:
            out += self._start_round(0)
        elif step == PROPOSE and round == self.round and self.step == PROPOSE:
            out += self._vote(PREVOTE, None)
            self.step = PREVOTE_STEP
        elif step == PREVOTE_STEP and round == self.round and self.step == PREVOTE_STEP:
            out += self._vote(PRECOMMIT, None)
            self.step = PRECOMMIT_STEP
        elif step == PRECOMMIT_STEP and round == self.round:
            out += self._start_round(round + 1)
        else:
            return out
        return out + self._rules(now)

    # ---- internals -------------------------------------------------------------------------

    def _reset(self) -> None:
        self.round = 0
        self.step = NEW_HEIGHT
        self.locked_round, self.locked_hash = -1, None
        self.valid_round, self.valid_hash = -1, None
        self.h, self.next_h = self.next_h, _Height()
        # buffered messages must be for the new height: drop anything else the buffer may hold
        self.h.votes = {k: {s: {b: v for b, v in per.items() if v.height == self.height} for s, per in d.items()}
                        for k, d in self.h.votes.items()}
        self.h.proposals = {r: p for r, p in self.h.proposals.items() if p.height == self.height}

    @staticmethod
    def _record(hs: _Height, v: Vote) -> Equivocation | None:
        """Keep the vote; a second value from one signer is equivocation: reported, and also
        counted in that value's tally (a quorum for a value is about who signed it; an honest
        authority never signs two values, so quorum intersection still holds)."""
        per = hs.votes.setdefault((v.round, v.kind), {}).setdefault(v.signer, {})
        if v.block_hash in per:
            return None
        if not per:
            per[v.block_hash] = v
            return None
        first = next(iter(per.values()))
        if len(per) < MAX_VALUES:
            per[v.block_hash] = v
        return Equivocation(first, v)

    def _count(self, round: int, kind: int, value: bytes | bool = True) -> int:
        """Distinct signers at (round, kind) with a vote for ``value`` (a hash, NIL, or True = any)."""
        d = self.h.votes.get((round, kind))
        if not d:
            return 0
        if value is True:
            return sum(1 for per in d.values() if per)
        return sum(1 for per in d.values() if value in per)

    def _vote(self, kind: int, value: bytes | None) -> list[Action]:
        return [SignVote(kind, self.height, self.round, value)] if self.me in self.authorities else []

    def _start_round(self, r: int) -> list[Action]:
        self.round = r
        self.step = PROPOSE
        out: list[Action] = []
        if self.proposer(self.height, r) == self.me:
            if self.valid_hash is not None:
                out.append(Propose(self.height, r, self.valid_hash, self.valid_round))
            else:
                out.append(Propose(self.height, r, None, -1))
        out.append(Schedule(self.height, r, PROPOSE, self.t.of(PROPOSE, r)))
        return out

    def _rules(self, now: float) -> list[Action]:
        out: list[Action] = []
        while True:
            got = self._one_rule(now)
            if got is None:
                return out
            out += got

    def _one_rule(self, now: float) -> list[Action] | None:
        """Fire the first applicable rule and return its actions, or None when none applies."""
        r = self.round
        hs = self.h
        p = hs.proposals.get(r)
        if self.step == PROPOSE and p is not None:
            if p.pol_round < 0:
                ok = p.valid and (self.locked_round == -1 or self.locked_hash == p.block_hash)
                self.step = PREVOTE_STEP
                return self._vote(PREVOTE, p.block_hash if ok else None)
            if p.pol_round < r and self._count(p.pol_round, PREVOTE, p.block_hash) >= self.q:
                ok = p.valid and (self.locked_round <= p.pol_round or self.locked_hash == p.block_hash)
                self.step = PREVOTE_STEP
                return self._vote(PREVOTE, p.block_hash if ok else None)
        if self.step == PREVOTE_STEP and r not in hs.prevote_timer and self._count(r, PREVOTE) >= self.q:
            hs.prevote_timer.add(r)
            return [Schedule(self.height, r, PREVOTE_STEP, self.t.of(PREVOTE_STEP, r))]
        if p is not None and p.valid and STEP_ORDER[self.step] >= STEP_ORDER[PREVOTE_STEP] \
                and r not in hs.lock_fired and self._count(r, PREVOTE, p.block_hash) >= self.q:
            hs.lock_fired.add(r)
            out: list[Action] = []
            if self.step == PREVOTE_STEP:
                self.locked_round, self.locked_hash = r, p.block_hash
                out += self._vote(PRECOMMIT, p.block_hash)
                self.step = PRECOMMIT_STEP
            self.valid_round, self.valid_hash = r, p.block_hash
            return out
        if self.step == PREVOTE_STEP and self._count(r, PREVOTE, NIL) >= self.q:
            self.step = PRECOMMIT_STEP
            return self._vote(PRECOMMIT, None)
        if self.step != NEW_HEIGHT and r not in hs.precommit_timer and self._count(r, PRECOMMIT) >= self.q:
            hs.precommit_timer.add(r)
            return [Schedule(self.height, r, PRECOMMIT_STEP, self.t.of(PRECOMMIT_STEP, r))]
        for pr, prop in hs.proposals.items():
            if prop.valid and self._count(pr, PRECOMMIT, prop.block_hash) >= self.q:
                return self._decide(pr, prop.block_hash, now)
        skip_to = self._skip_round()
        if skip_to is not None:
            return self._start_round(skip_to)
        return None

    def _skip_round(self) -> int | None:
        best = None
        rounds = {rr for (rr, _k) in self.h.votes if rr > self.round}
        for rr in rounds:
            signers: set[bytes] = set()
            for kind in (PREVOTE, PRECOMMIT):
                signers.update(s for s, per in self.h.votes.get((rr, kind), {}).items() if per)
            if len(signers) >= self.skip and (best is None or rr > best):
                best = rr
        return best

    def _decide(self, r: int, block_hash: bytes, now: float) -> list[Action]:
        votes = tuple(per[block_hash] for per in self.h.votes[(r, PRECOMMIT)].values() if block_hash in per)
        cert = Certificate(self.height, r, block_hash, votes)
        self.decided[self.height] = block_hash
        out: list[Action] = [Decide(self.height, r, block_hash, cert)]
        slot_end = self.height_started + self.t.block_time
        out += self.start(self.height + 1, now, wait=max(0.0, slot_end - now))
        return out
