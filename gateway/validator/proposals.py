"""Proposals: building and sending this node's own, validating everyone else's.

``Proposals`` keeps the current height's blocks (built or executed, as
``Candidate``s), the signed proposals per (height, round), and those that
arrived a height early. It carries out the machine's ``Propose`` (build a block
from the mempool with ``build_block`` or re-propose the valid value; sign, vote
log first; broadcast) and turns a PROPOSAL frame into a ``ProposalIn``: the
signed proposal is checked (authority, proposer of its round), the block is
validated with ``execute_block`` over transactions already verified at intake
(the mempool), awaiting the ones still in their intake check and checking only
the others, urgently.

A precommit is a lock: the node signs it only once the proposal it locks on is
on disk (held.py); on restart the held proposals are replayed through the same
path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from . import p2p
from .block import Block, decode_block
from .consensus import Propose, ProposalIn, SignVote
from .crypto import keccak256
from .errors import BAD_NONCE, BlockInvalid, ChainError, DecodeError
from .execute import build_block, execute_block, touched_keys
from .tip import Candidate
from .tx import VerifiedTx
from .verifier import VerifyJob
from .votes import PROPOSAL, VOTE_SIZE, ConsensusError, Vote, check_vote, decode_vote

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

FUTURE_PROPOSALS = 16        # proposals kept for the next height until this one is decided


class Proposals:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.blocks: dict[bytes, Candidate] = {}           # current height's built/executed blocks
        self.proposals: dict[tuple[int, int], tuple[Vote, bytes]] = {}  # (h, r) -> signed proposal, block bytes
        self.validating: dict[bytes, asyncio.Future[Candidate | None]] = {}
        self.future: dict[tuple[int, int], bytes] = {}     # the next height's, until this one is decided
        self.from_disk: dict[int, list[bytes]] = {}        # held proposals loaded at start, replayed at their height
        self.deferred: Propose | None = None               # waits for the parent to be durable

    # ---- own proposals -----------------------------------------------------------------------

    def propose(self, a: Propose) -> None:
        node = self.node
        signed = node.vote_log.get(a.height, a.round, PROPOSAL)
        if signed is not None:
            # proposed before a restart: the same signed proposal again if its block is back (replayed
            # from the held proposals), never a second one
            prop = self.proposals.get((a.height, a.round))
            if prop is None or prop[0].block_hash != signed.block_hash:
                node.count("propose_already_signed")
                return
            node.net.broadcast(p2p.PROPOSAL, prop[0].encode() + prop[1])
            return
        held = self.blocks.get(a.block_hash) if a.block_hash is not None else None
        if a.block_hash is not None and held is None:
            node.count("repropose_missing_block")
            return
        if node.committing:
            # a proposal extends a durable head only: a lone authority that crashed while its parent was
            # still being written would hold votes above a block it no longer has and nobody could resend
            # (with peers, a follower's vote over the tip is fine: a restart fetches the parent from them)
            self.deferred = a
            node.count("propose_waits_for_commit")
            return
        if held is not None:
            cand = held
        else:
            t0 = time.perf_counter()
            s = node.tip
            head = s.head
            cands = node.mempool.select(node.cfg.max_block_txs)
            s.prefetch(touched_keys(cands))
            ts = max(head.timestamp, int(node.cfg.clock()))
            block, result, rejected = build_block(s, s.accumulator, head, cands, node.params, node.address, ts,
                                                  a.round, header_at=s.header_at)
            for vtx, exc in rejected:
                # a later nonce behind a rejected one waits for the gap to be filled; the rest is dropped
                if not (exc.reason == BAD_NONCE and vtx.nonce > node._nonce_of(vtx.sender)):
                    node.mempool.drop(vtx.hash, exc.reason)
            by_hash = {v.hash: v for v in cands}
            kept = tuple(by_hash[r.tx_hash] for r in result.receipts)
            cand = Candidate(block, result, kept, frozenset(v.hash for v in kept))
            node._time("build_block", t0)
        block = cand.block
        pv = node.signer.sign(PROPOSAL, a.height, a.round, block.hash, a.pol_round)
        self.blocks[block.hash] = cand
        raw = block.encode()
        self.proposals[(a.height, a.round)] = (pv, raw)
        node.held.keep(a.height, a.round, block.hash, pv.encode() + raw)
        node.net.broadcast(p2p.PROPOSAL, pv.encode() + raw)
        node.count("proposed")
        node._do(node.machine.on_proposal(ProposalIn(a.height, a.round, block.hash, a.pol_round, True),
                                          time.monotonic()))

    def resend_own(self, peer: p2p.Peer | None = None) -> None:
        """This node's proposals at the current height again: to a new connection, or (``peer`` None)
        to every peer when the height stalls."""
        node = self.node
        for (h, _r), (pv, raw) in self.proposals.items():
            if h == node.machine.height and pv.signer == node.address:
                if peer is None:
                    node.net.broadcast(p2p.PROPOSAL, pv.encode() + raw)
                else:
                    peer.send(p2p.PROPOSAL, pv.encode() + raw)

    # ---- locks on disk (held.py) -------------------------------------------------------------

    def held_for(self, a: SignVote) -> bool:
        """A precommit is a lock: sign it only once the proposal it locks on is on disk (held.py), so a
        restart finds the block with the lock. If the write is still running, the precommit waits for it."""
        node = self.node
        prop = self.proposals.get((a.height, a.round))
        if prop is None or prop[0].block_hash != a.block_hash:   # cannot happen: the machine locks on proposals[r]
            node.count("precommit_without_proposal")
            return False
        fut = node.held.keep(a.height, a.round, prop[0].block_hash, prop[0].encode() + prop[1])
        if not fut.done():
            node.count("precommit_waits_for_disk")
            fut.add_done_callback(lambda _f: self._held_done(a))
            return False
        if fut.exception() is not None:
            node.count("held_write_failed")
            log.error("cannot hold proposal h=%d r=%d: %r; not precommitting", a.height, a.round, fut.exception())
            return False
        return True

    def _held_done(self, a: SignVote) -> None:
        if a.height == self.node.machine.height:   # else decided meanwhile: nothing left to sign
            self.node._do([a])

    def replay_held(self, height: int) -> None:
        """Proposals this node held on disk for ``height`` (it may be locked on one): through the ordinary
        proposal path again, so a restored lock can decide the block it locks on."""
        for h in [h for h in self.from_disk if h < height]:    # committed meanwhile
            del self.from_disk[h]
        for payload in self.from_disk.pop(height, []):
            self.node.tasks.append(asyncio.create_task(self._replay_one(payload)))

    async def _replay_one(self, payload: bytes) -> None:
        node = self.node
        try:
            pv = decode_vote(payload[:VOTE_SIZE])
            node.held.mark_durable(pv.height, pv.round, pv.block_hash)
            await self.on_proposal(None, payload)
            node.count("held_replayed")
        except ChainError as exc:
            node.count("held_replay_" + exc.reason)
            log.warning("held proposal not replayed: %s", exc)

    # ---- height changes ----------------------------------------------------------------------

    def decided(self, height: int) -> None:
        """Block ``height`` is decided (being written): this height's blocks go; the next height's
        early proposals and held proposals are taken up."""
        node = self.node
        self.blocks.clear()
        self.proposals = {k: v for k, v in self.proposals.items() if k[0] > height}
        for key in [k for k in self.future if k[0] == height + 1]:
            payload = self.future.pop(key)
            node.tasks.append(asyncio.create_task(self.on_proposal(None, payload)))
        self.future = {k: v for k, v in self.future.items() if k[0] > height}
        self.replay_held(height + 1)

    def durable(self) -> None:
        """Every decided block is on disk: a proposal that waited for its parent goes ahead."""
        node = self.node
        a = self.deferred
        if a is not None and not node.committing:
            self.deferred = None
            if (a.height, a.round) == (node.machine.height, node.machine.round):
                node._do([a])

    # ---- others' proposals -------------------------------------------------------------------

    async def on_proposal(self, peer: p2p.Peer | None, payload: bytes) -> None:
        node = self.node
        m = node.machine
        if len(payload) < VOTE_SIZE:
            raise DecodeError("truncated", "proposal")
        pv = decode_vote(payload[:VOTE_SIZE])
        if pv.kind != PROPOSAL:
            raise ConsensusError("bad_kind", "not a proposal")
        check_vote(pv, node.genesis.chain_id, node.authorities)
        if pv.signer != m.proposer(pv.height, pv.round):
            raise ConsensusError("wrong_proposer", f"0x{pv.signer.hex()} is not the proposer of {pv.height}/{pv.round}")
        key = (pv.height, pv.round)
        known = self.proposals.get(key)
        if known is not None:
            if known[0].block_hash != pv.block_hash:
                node.count("equivocations")
                node.count("proposal_equivocation")
                node.evidence.append((known[0], pv))
            return
        if pv.height < m.height:
            return
        if pv.height > m.height:
            if pv.height == m.height + 1 and len(self.future) < FUTURE_PROPOSALS:
                self.future[key] = payload
            elif peer is not None:
                node.sync.want(peer)
            return
        block = decode_block(payload[VOTE_SIZE:])
        hd = block.header
        if block.hash != pv.block_hash or hd.height != pv.height or hd.round > pv.round \
                or hd.proposer != m.proposer(hd.height, hd.round):
            raise ConsensusError("bad_proposal", "block does not match its signed proposal")
        self.proposals[key] = (pv, payload[VOTE_SIZE:])
        cand = self.blocks.get(block.hash) or await self.validate(block)
        if pv.height != m.height:
            return
        if cand is not None:
            self.blocks[block.hash] = cand
            node.held.keep(pv.height, pv.round, pv.block_hash, payload)
        node._do(m.on_proposal(ProposalIn(pv.height, pv.round, pv.block_hash, pv.pol_round, cand is not None),
                               time.monotonic()))

    async def validate(self, block: Block) -> Candidate | None:
        """``block`` executed over the tip, or None if it is not valid there (one validation per block
        at a time: a second caller awaits the first)."""
        bh = block.hash
        fut = self.validating.get(bh)
        if fut is not None:
            return await fut
        fut = asyncio.get_running_loop().create_future()
        self.validating[bh] = fut
        try:
            cand = await self._validate(block)
            fut.set_result(cand)
            return cand
        except BaseException:
            fut.set_result(None)
            raise
        finally:
            self.validating.pop(bh, None)

    async def _validate(self, block: Block) -> Candidate | None:
        node = self.node
        hashes = [keccak256(r) for r in block.txs]
        verified: list[VerifiedTx | None] = [node.mempool.get(h) for h in hashes]
        missing = [i for i, v in enumerate(verified) if v is None]
        if missing:
            # every tx is checked here once: the ones still in an intake check are awaited (their job
            # moves ahead of the queued intake work), only the others are checked now, urgently
            t0 = time.perf_counter()
            waits: dict[int, tuple[VerifyJob, list[tuple[int, int]]]] = {}
            fresh: list[int] = []
            for i in missing:
                got = node.intake.inflight.get(hashes[i])
                if got is None:
                    fresh.append(i)
                else:
                    waits.setdefault(id(got[0]), (got[0], []))[1].append((i, got[1]))
            node.count("validate_awaited_intake", len(missing) - len(fresh))
            node.count("validate_checked_txs", len(fresh))
            for job, _ in waits.values():
                node.verifier.promote(job)
            own = node.verifier.start([block.txs[i] for i in fresh], urgent=True)
            for job, picks in waits.values():
                res = await job.result()
                for i, k in picks:
                    verified[i] = self._checked(res[k])
            for i, v in zip(fresh, await own.result()):
                verified[i] = self._checked(v)
            node._time("validate_wait_checks", t0)
            if any(v is None for v in verified):
                return None
        s = node.tip
        hd = block.header
        if hd.parent_hash != s.head.hash:
            return None
        if hd.timestamp > node.cfg.clock() + 2 * node.block_time + 5:
            node.count("block_from_future")
            return None
        t0 = time.perf_counter()
        try:
            vs = [v for v in verified if v is not None]
            s.prefetch(touched_keys(vs))
            result = execute_block(s, s.accumulator, block, s.head, node.params, header_at=s.header_at, verified=vs)
        except BlockInvalid as exc:
            node.count("block_invalid_" + exc.reason)
            log.warning("invalid block %s: %s", block.hash.hex()[:12], exc)
            return None
        finally:
            node._time("execute_block", t0)
        return Candidate(block, result, tuple(v for v in verified if v is not None), frozenset(hashes))

    def _checked(self, v: VerifiedTx | DecodeError) -> VerifiedTx | None:
        if isinstance(v, DecodeError):
            self.node.count("block_bad_tx_" + v.reason)
            return None
        return v
