"""Proposals: building and sending this node's own, validating everyone else's.

``Proposals`` keeps the current height's blocks (built or executed, as
``Candidate``s), the signed proposals per (height, round), and those that
arrived a height early. It carries out the machine's ``Propose`` (build a block
from the mempool with ``build_block`` or re-propose the valid value; sign, vote
log first; broadcast) and turns a PROPOSAL frame into a ``ProposalIn``.

A proposal on the wire is *compact*: the signed proposal (votes.py, 142 bytes)
and the block's header with its tx hashes in order (block.py, 32 bytes per tx
instead of ~330). Intake gossips every tx to every peer before it can be in a
block, so a follower rebuilds the block from its mempool and from the txs still
in their intake check (awaited, their job moved ahead: each tx is checked once
per node); what it still lacks it asks of the peer that sent the proposal
(txfetch.py) and checks urgently. The tx root is over the hashes, so known txs
are not hashed again. A block whose txs cannot all be had is not valid at this
node (prevote nil); its proposal is forgotten, so a re-sent one is tried again.

A precommit is a lock: the node signs it only once the proposal it locks on is
on disk with the *full* block (held.py); on restart the held proposals are
replayed through the same validation, the txs taken from the file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import p2p
from .block import Block, CompactBlock, Header, decode_block, decode_compact, merkle_root
from .consensus import Propose, ProposalIn, SignVote
from .crypto import keccak256_many
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


@dataclass
class Proposal:
    """A signed proposal this node has: ``block`` (the full encoding, what held.py writes) once the block
    is built or executed here; ``wire`` (the PROPOSAL payload) for the ones this node sends."""
    vote: Vote
    block: bytes | None = None
    wire: bytes | None = None


class Unavailable(ChainError):
    """Some of a proposal's txs could not be had (not served, timed out): not valid here, for now."""


def encode_proposal(vote: Vote, cand: Candidate) -> bytes:
    """The PROPOSAL payload: the signed proposal and the block's header with its tx hashes."""
    return vote.encode() + CompactBlock(cand.block.header, tuple(v.hash for v in cand.verified)).encode()


class Proposals:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.blocks: dict[bytes, Candidate] = {}           # current height's built/executed blocks
        self.proposals: dict[tuple[int, int], Proposal] = {}
        self.validating: dict[bytes, asyncio.Future[Candidate | None]] = {}
        self.future: dict[tuple[int, int], tuple[p2p.Peer | None, bytes]] = {}   # the next height's
        self.from_disk: dict[int, list[bytes]] = {}        # held proposals loaded at start, replayed at their height
        self.deferred: Propose | None = None               # waits for the parent to be durable
        self.running: set[asyncio.Task[None]] = set()      # proposals being validated

    # ---- own proposals -----------------------------------------------------------------------

    def propose(self, a: Propose) -> None:
        node = self.node
        signed = node.vote_log.get(a.height, a.round, PROPOSAL)
        if signed is not None:
            # proposed before a restart: the same signed proposal again if its block is back (replayed
            # from the held proposals), never a second one
            prop = self.proposals.get((a.height, a.round))
            if prop is None or prop.vote.block_hash != signed.block_hash or prop.vote.block_hash not in self.blocks:
                node.count("propose_already_signed")
                return
            node.net.broadcast(p2p.PROPOSAL, self._wire(prop))
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
        prop = Proposal(pv, block.encode(), encode_proposal(pv, cand))
        self.proposals[(a.height, a.round)] = prop
        node.held.keep(a.height, a.round, block.hash, pv.encode() + prop.block)  # type: ignore[operator]
        node.net.broadcast(p2p.PROPOSAL, prop.wire)  # type: ignore[arg-type]
        node.count("proposed")
        node._do(node.machine.on_proposal(ProposalIn(a.height, a.round, block.hash, a.pol_round, True),
                                          time.monotonic()))

    def _wire(self, prop: Proposal) -> bytes:
        if prop.wire is None:
            prop.wire = encode_proposal(prop.vote, self.blocks[prop.vote.block_hash])
        return prop.wire

    def resend_own(self, peer: p2p.Peer | None = None) -> None:
        """This node's proposals at the current height again: to a new connection, or (``peer`` None)
        to every peer when the height stalls. A peer lacking some of the txs asks for them."""
        node = self.node
        for (h, _r), prop in self.proposals.items():
            if h == node.machine.height and prop.vote.signer == node.address and prop.vote.block_hash in self.blocks:
                if peer is None:
                    node.net.broadcast(p2p.PROPOSAL, self._wire(prop))
                else:
                    peer.send(p2p.PROPOSAL, self._wire(prop))

    # ---- locks on disk (held.py) -------------------------------------------------------------

    def held_for(self, a: SignVote) -> bool:
        """A precommit is a lock: sign it only once the proposal it locks on is on disk (held.py), so a
        restart finds the block with the lock. If the write is still running, the precommit waits for it."""
        node = self.node
        prop = self.proposals.get((a.height, a.round))
        if prop is None or prop.vote.block_hash != a.block_hash or prop.block is None:
            node.count("precommit_without_proposal")   # cannot happen: the machine locks on valid proposals
            return False
        fut = node.held.keep(a.height, a.round, a.block_hash, prop.vote.encode() + prop.block)
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
            await self.on_held(payload)
            node.count("held_replayed")
        except ChainError as exc:
            node.count("held_replay_" + exc.reason)
            log.warning("held proposal not replayed: %s", exc)

    # ---- height changes ----------------------------------------------------------------------

    def decided(self, height: int) -> None:
        """Block ``height`` is decided (being written): this height's blocks go; the next height's
        early proposals and held proposals are taken up."""
        self.blocks.clear()
        self.proposals = {k: v for k, v in self.proposals.items() if k[0] > height}
        for key in [k for k in self.future if k[0] == height + 1]:
            peer, payload = self.future.pop(key)
            self._spawn(self.on_proposal(peer, payload))
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

    def close(self) -> None:
        for t in self.running:
            t.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guarded(coro))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except (ConsensusError, DecodeError) as exc:    # a frame kept for later, bad after all
            self.node.count("proposal_" + exc.reason)
        except Exception:   # pragma: no cover - a bug: logged and counted, the node goes on
            self.node.count("proposal_error")
            log.exception("proposal handling failed")

    # ---- others' proposals -------------------------------------------------------------------

    def _signed(self, payload: bytes) -> Vote | None:
        """The signed proposal at the front of ``payload``, checked; None if this node has it already or
        it is for an earlier height (or kept for the next one)."""
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
        known = self.proposals.get((pv.height, pv.round))
        if known is not None:
            if known.vote.block_hash != pv.block_hash:
                node.count("equivocations")
                node.count("proposal_equivocation")
                node.evidence.append((known.vote, pv))
            return None
        if pv.height < m.height:
            return None
        return pv

    def _matches(self, pv: Vote, hd: Header) -> None:
        if hd.hash != pv.block_hash or hd.height != pv.height or hd.round > pv.round \
                or hd.proposer != self.node.machine.proposer(hd.height, hd.round):
            raise ConsensusError("bad_proposal", "block does not match its signed proposal")

    async def on_proposal(self, peer: p2p.Peer | None, payload: bytes) -> None:
        """A PROPOSAL frame (compact): checked here, validated in a task of its own (it may have to ask
        ``peer`` for txs, whose reply comes in on this very connection)."""
        node = self.node
        m = node.machine
        pv = self._signed(payload)
        if pv is None:
            return
        if pv.height > m.height:
            if pv.height == m.height + 1 and len(self.future) < FUTURE_PROPOSALS:
                self.future[(pv.height, pv.round)] = (peer, payload)
            elif peer is not None:
                node.sync.want(peer)
            return
        cb = decode_compact(payload[VOTE_SIZE:])
        self._matches(pv, cb.header)
        prop = self.proposals[(pv.height, pv.round)] = Proposal(pv)
        self._spawn(self._take(prop, cb.header, cb.tx_hashes, None, peer))

    async def on_held(self, payload: bytes) -> None:
        """A held proposal (signed proposal | full block) from disk: validated with its own txs."""
        pv = self._signed(payload)
        if pv is None or pv.height != self.node.machine.height:
            return
        block = decode_block(payload[VOTE_SIZE:])
        self._matches(pv, block.header)
        prop = self.proposals[(pv.height, pv.round)] = Proposal(pv)
        await self._take(prop, block.header, keccak256_many(block.txs), block.txs, None)

    async def _take(self, prop: Proposal, header: Header, hashes: Sequence[bytes], raws: Sequence[bytes] | None,
                    peer: p2p.Peer | None) -> None:
        node = self.node
        pv = prop.vote
        try:
            cand = self.blocks.get(pv.block_hash) or await self.validate(header, hashes, raws, peer, pv.signer)
        except Unavailable as exc:
            log.warning("proposal %d/%d: %s", pv.height, pv.round, exc)
            cand = None
            if self.proposals.get((pv.height, pv.round)) is prop:
                del self.proposals[(pv.height, pv.round)]        # a re-sent proposal is tried again
        if pv.height != node.machine.height:
            return
        if cand is not None:
            self.blocks[pv.block_hash] = cand
            prop.block = cand.block.encode()
            node.held.keep(pv.height, pv.round, pv.block_hash, pv.encode() + prop.block)
        node._do(node.machine.on_proposal(ProposalIn(pv.height, pv.round, pv.block_hash, pv.pol_round,
                                                     cand is not None), time.monotonic()))

    async def validate(self, header: Header, hashes: Sequence[bytes], raws: Sequence[bytes] | None = None,
                       peer: p2p.Peer | None = None, proposer: bytes | None = None) -> Candidate | None:
        """The block with this header and these txs (by hash; ``raws`` if this node has them, else from
        the mempool, the intake checks, or ``peer``) executed over the tip, or None if it is not valid
        there; raises ``Unavailable`` if some txs could not be had. One validation per block at a time:
        a second caller awaits the first, unless it brings the txs (a synced block: the first may be
        waiting for a reply that comes in on the very connection the second is read from)."""
        bh = header.hash
        fut = self.validating.get(bh)
        if fut is not None:
            if raws is None:
                return await fut
            return await self._validate(header, hashes, raws, peer, proposer)
        fut = asyncio.get_running_loop().create_future()
        self.validating[bh] = fut
        try:
            cand = await self._validate(header, hashes, raws, peer, proposer)
            fut.set_result(cand)
            return cand
        except BaseException:
            fut.set_result(None)
            raise
        finally:
            self.validating.pop(bh, None)

    async def validate_block(self, block: Block) -> Candidate | None:
        """A full block (catch-up sync)."""
        return await self.validate(block.header, keccak256_many(block.txs), block.txs)

    async def _validate(self, header: Header, hashes: Sequence[bytes], raws: Sequence[bytes] | None,
                        peer: p2p.Peer | None, proposer: bytes | None) -> Candidate | None:
        node = self.node
        get = node.mempool.pending.get
        verified: list[VerifiedTx | None] = [get(h) for h in hashes]
        missing = [i for i, v in enumerate(verified) if v is None]
        if missing:
            # every tx is checked here once: the ones still in an intake check are awaited (their job
            # moves ahead of the queued intake work), only the others are checked now, urgently
            t0 = time.perf_counter()
            waits: dict[int, tuple[VerifyJob, list[tuple[int, int]]]] = {}
            fresh: list[int] = []
            inflight = node.intake.inflight
            for i in missing:
                got = inflight.get(hashes[i])
                if got is None:
                    fresh.append(i)
                else:
                    waits.setdefault(id(got[0]), (got[0], []))[1].append((i, got[1]))
            node.count("validate_awaited_intake", len(missing) - len(fresh))
            node.count("validate_checked_txs", len(fresh))
            for job, _ in waits.values():
                node.verifier.promote(job)
            if raws is not None:
                fresh_raws = [raws[i] for i in fresh]
            elif fresh:
                if merkle_root(list(hashes)) != header.tx_root:     # nothing to ask for a block that cannot be
                    node.count("block_invalid_tx_root_mismatch")
                    return None
                if peer is None or peer.closed:
                    peer = node.net.peers.get(proposer) if proposer is not None else None
                fetched = await node.txfetch.fetch(peer, [hashes[i] for i in fresh])
                if fetched is None:
                    raise Unavailable("txs_unavailable", f"{len(fresh)} txs not had from the peer")
                fresh_raws = [fetched[hashes[i]] for i in fresh]
            else:
                fresh_raws = []
            own = node.verifier.start(fresh_raws, urgent=True, hashes=[hashes[i] for i in fresh])  # hashed once
            for job, picks in waits.values():
                res = await job.result()
                for i, k in picks:
                    verified[i] = self._checked(res[k])
            for i, v in zip(fresh, await own.result()):
                verified[i] = self._checked(v)
            node._time("validate_wait_checks", t0)
            if any(v is None for v in verified):
                return None
        vs: list[VerifiedTx] = verified  # type: ignore[assignment]
        s = node.tip
        if header.parent_hash != s.head.hash:
            return None
        if header.timestamp > node.cfg.clock() + 2 * node.block_time + 5:
            node.count("block_from_future")
            return None
        block = Block(header, tuple(v.raw for v in vs))
        t0 = time.perf_counter()
        try:
            s.prefetch(touched_keys(vs))
            result = execute_block(s, s.accumulator, block, s.head, node.params, header_at=s.header_at, verified=vs)
        except BlockInvalid as exc:
            node.count("block_invalid_" + exc.reason)
            log.warning("invalid block %s: %s", block.hash.hex()[:12], exc)
            return None
        finally:
            node._time("execute_block", t0)
        return Candidate(block, result, tuple(vs), frozenset(hashes))

    def _checked(self, v: VerifiedTx | DecodeError) -> VerifiedTx | None:
        if isinstance(v, DecodeError):
            self.node.count("block_bad_tx_" + v.reason)
            return None
        return v
