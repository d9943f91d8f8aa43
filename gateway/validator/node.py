"""A validator node: wires consensus, the vote log, the mempool, P2P, storage and JSON-RPC.

Everything runs on one asyncio loop; signature checks run in worker processes or
on the loop between other work (verifier.py), and txs come in through intake.py.
The consensus machine (consensus.py) is pure: this module turns frames and timers
into its events and carries out its actions:

- ``Propose``: build a block from the mempool (``build_block``) or re-propose the
  valid value, sign the proposal (vote log first), broadcast header + txs;
- ``SignVote``: sign through ``Signer`` (appended and fsync'd before it is sent),
  broadcast, and feed it back to the machine; a precommit only once the proposal
  it locks on is on disk (held.py), so a restart never finds a lock without its block;
- ``Schedule``: a loop timer; ``Decide``: store the commit certificate, then the
  block (one SQLite transaction), drop its txs from the mempool, wake waiters;
- ``Equivocation``: counted, evidence kept.

Followers validate a proposal with ``execute_block`` over transactions already
verified at intake (the mempool), awaiting the ones still in their intake check
and checking only the others, urgently. A node that
is behind (STATUS from a peer ahead, or messages for a later height) fetches
final blocks with their certificates (GET_BLOCKS / BLOCK), checks the
certificate and re-executes each block before committing it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from . import p2p
from .p2p import Limits
from .block import Block, Header, decode_block
from .consensus import Action, Decide, Equivocation, Machine, ProposalIn, Propose, Schedule, SignVote, Timeouts
from .crypto import address_of, keccak256
from .errors import BAD_NONCE, BlockInvalid, ChainError, DecodeError
from .execute import BlockResult, build_block, execute_block, touched_keys
from .genesis import Genesis
from .held import HeldProposals
from .mempool import Mempool
from .verifier import Verifier, VerifyJob
from .state import get_account
from .storage import SqliteStore
from .tx import VerifiedTx
from .intake import TX_GOSSIP_CHUNK, Intake, decode_txs, encode_txs
from .tip import Candidate, Tip
from .txlog import TxLog
from .votes import (PRECOMMIT, PROPOSAL, VOTE_SIZE, Certificate, ConsensusError, Signer, Vote, VoteLog, check_vote,
                    decode_certificate, decode_vote, verify_certificate)

log = logging.getLogger(__name__)

_U32 = struct.Struct(">I")
_STATUS = struct.Struct(">QI")
_GET = struct.Struct(">QI")
CERT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chain_certs (
        height INTEGER PRIMARY KEY,
        hash   BLOB NOT NULL,
        cert   BLOB NOT NULL       -- votes.Certificate: > 2/3 precommits for the block
    )""",
)
SYNC_BATCH = 16
INTAKE_LOG_COMPACT_BYTES = 32 * 1024 * 1024   # rewrite the intake log (pending txs only) beyond this
FAULT_ENV = "METANOIA_VALIDATOR_FAULT"   # tests only: "precommit@H" / "commit@H" exits with FAULT_EXIT there
FAULT_EXIT = 77
NONCE_CACHE_MAX = 200_000


@dataclass(frozen=True)
class NodeConfig:
    genesis: Genesis
    key: PrivateKey
    data_dir: Path
    p2p: tuple[str, int] = ("127.0.0.1", 0)
    peers: tuple[tuple[str, int], ...] = ()
    rpc: tuple[str, int] | None = ("127.0.0.1", 0)
    workers: int = 0
    block_time: float | None = None        # default: the genesis's block_time_ms
    max_block_txs: int = 20_000
    debug_rpc: bool = False                # debug_* methods (fault injection for tests)
    clock: Callable[[], float] = time.time  # block time stamps and the future check (simulations: a sim clock)
    limits: Limits = field(default_factory=lambda: Limits())


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        g = cfg.genesis
        self.genesis = g
        self.params = g.params()
        self.authorities = g.authorities
        self.address = address_of(cfg.key)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(cfg.data_dir / "chain.db", g)
        from gateway import db
        db.ensure_schema(self.store.conn, "chain_certs", CERT_SCHEMA)
        self.vote_log = VoteLog(cfg.data_dir / "votes.log")
        self.txlog = TxLog(cfg.data_dir / "intake.log")
        self.held = HeldProposals(cfg.data_dir / "held")
        self.held_props: dict[int, list[bytes]] = {}         # proposals from disk, replayed at their height
        self.fault = _parse_fault(os.environ.get(FAULT_ENV))
        self.committing: deque[Candidate] = deque()        # decided, being written (store.stage), in order
        self.tip = Tip(self.store, self.committing)
        self.nonces: dict[bytes, int] = {}                 # account nonces at the tip (see _nonce_of)
        self.deferred_propose: Propose | None = None
        self.signer = Signer(cfg.key, g.chain_id, self.vote_log)
        bt = cfg.block_time if cfg.block_time is not None else g.block_time_ms / 1000
        self.block_time = bt
        self.machine = Machine(self.authorities, self.address, Timeouts.for_block_time(bt), g.chain_id)
        self.mempool = Mempool(self._nonce_of)
        self.verifier = Verifier(self.params, cfg.workers)
        self.net = p2p.Network(cfg.key, g.chain_id, g.hash, cfg.p2p, list(cfg.peers), self._on_frame,
                               limits=cfg.limits, on_connect=self._on_connect)
        self.counters: dict[str, int] = {}
        self.timing: dict[str, float] = {}   # cumulative seconds on the event loop, per stage (a cheap profile)
        self.blocks: dict[bytes, Candidate] = {}           # current height's built/executed blocks
        self.proposals: dict[tuple[int, int], tuple[Vote, bytes]] = {}  # (h, r) -> signed proposal, block bytes
        self.validating: dict[bytes, asyncio.Future[Candidate | None]] = {}
        self.future_props: dict[tuple[int, int], bytes] = {}
        self.seen_votes: set[tuple[bytes, tuple[int, int, int], bytes]] = set()
        self.intake = Intake(self)
        self.waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self.evidence: deque[tuple[Vote, Vote]] = deque(maxlen=100)
        self.sync_asked = 0.0
        self.progress = (0, 0, 0.0)                         # (height, round, when) for stall detection
        self.timers: list[asyncio.TimerHandle] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.rpc_runner: Any = None
        self.rpc_address: tuple[str, int] | None = None
        self.head_changed = asyncio.Event()
        self.block_times: deque[tuple[int, float]] = deque(maxlen=1000)
        self.started = False

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.net.start()
        queued = self.txlog.load()
        if queued:   # accepted before a restart and maybe not final yet: back into the mempool, relayed
            res = await self.submit(queued, log_intake=False)
            self.count("intake_log_reloaded", sum(1 for r in res if isinstance(r, bytes)))
        if self.cfg.rpc is not None:
            from .rpc import start_rpc
            self.rpc_runner, self.rpc_address = await start_rpc(self, *self.cfg.rpc)
        h = self.store.head.height + 1
        self.held_props = self.held.load(self.store.head.height)
        self._do(self.machine.start(h, time.monotonic(), own_votes=self.vote_log.at_height(h)))
        self._replay_held(h)
        self.tasks.append(asyncio.create_task(self._ticker()))
        self.started = True
        log.info("validator 0x%s at height %d, p2p %s, rpc %s", self.address.hex(), self.store.head.height,
                 self.net.listen, self.rpc_address)

    async def stop(self) -> None:
        for t in self.timers:
            t.cancel()
        for task in self.tasks:
            task.cancel()
        while self.committing:          # let decided blocks reach the disk (SIGTERM: a clean stop)
            await asyncio.sleep(0.01)
        await self.net.stop()
        if self.rpc_runner is not None:
            await self.rpc_runner.cleanup()
        self.verifier.close()
        self.vote_log.close()
        self.txlog.close()
        self.store.close()

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def _time(self, what: str, t0: float) -> None:
        self.timing[what] = self.timing.get(what, 0.0) + time.perf_counter() - t0

    def _nonce_of(self, addr: bytes) -> int:
        """The account nonce at the tip, cached until the tip moves (``_commit``): intake asks it twice
        per tx and block selection once per sender, always about the same few thousand accounts."""
        n = self.nonces.get(addr)
        if n is None:
            if len(self.nonces) >= NONCE_CACHE_MAX:   # unchecked txs can name any sender: stay bounded
                self.nonces.clear()
            n = self.nonces[addr] = get_account(self.tip, addr).nonce
        return n

    # ---- consensus actions -------------------------------------------------------------------

    def _do(self, actions: list[Action]) -> None:
        for a in actions:
            try:
                if isinstance(a, SignVote):
                    self._sign_vote(a)
                elif isinstance(a, Schedule):
                    loop = asyncio.get_running_loop()
                    self.timers = [t for t in self.timers if not t.cancelled()][-64:]
                    self.timers.append(loop.call_later(a.delay, self._timeout, a.height, a.round, a.step))
                elif isinstance(a, Propose):
                    self._propose(a)
                elif isinstance(a, Decide):
                    self._decide(a)
                elif isinstance(a, Equivocation):
                    self.count("equivocations")
                    self.evidence.append((a.first, a.second))
                    log.warning("equivocation by 0x%s at h=%d r=%d", a.first.signer.hex(), a.first.height,
                                a.first.round)
            except ConsensusError as exc:
                self.count("consensus_" + exc.reason)
                log.warning("consensus action %s refused: %s", type(a).__name__, exc)

    def _timeout(self, height: int, round: int, step: str) -> None:
        self._do(self.machine.on_timeout(height, round, step, time.monotonic()))

    def _sign_vote(self, a: SignVote) -> None:
        if a.kind == PRECOMMIT and a.block_hash is not None and not self._held_for(a):
            return
        v = self.signer.sign(a.kind, a.height, a.round, a.block_hash)   # persisted (fsync) before sending
        if self.fault == ("precommit", a.height) and a.kind == PRECOMMIT and a.block_hash is not None:
            log.error("fault injection: exiting after signing the precommit at height %d", a.height)
            os._exit(FAULT_EXIT)
        self.seen_votes.add((v.signer, v.key, v.block_hash))
        self.net.broadcast(p2p.VOTE, v.encode())
        self._do(self.machine.on_vote(v, time.monotonic()))

    def _held_for(self, a: SignVote) -> bool:
        """A precommit is a lock: sign it only once the proposal it locks on is on disk (held.py), so a
        restart finds the block with the lock. If the write is still running, the precommit waits for it."""
        prop = self.proposals.get((a.height, a.round))
        if prop is None or prop[0].block_hash != a.block_hash:   # cannot happen: the machine locks on proposals[r]
            self.count("precommit_without_proposal")
            return False
        fut = self.held.keep(a.height, a.round, prop[0].block_hash, prop[0].encode() + prop[1])
        if not fut.done():
            self.count("precommit_waits_for_disk")
            fut.add_done_callback(lambda _f: self._held_done(a))
            return False
        if fut.exception() is not None:
            self.count("held_write_failed")
            log.error("cannot hold proposal h=%d r=%d: %r; not precommitting", a.height, a.round, fut.exception())
            return False
        return True

    def _held_done(self, a: SignVote) -> None:
        if a.height == self.machine.height:   # else decided meanwhile: nothing left to sign
            self._do([a])

    def _replay_held(self, height: int) -> None:
        """Proposals this node held on disk for ``height`` (it may be locked on one): through the ordinary
        proposal path again, so a restored lock can decide the block it locks on."""
        for h in [h for h in self.held_props if h < height]:    # committed meanwhile
            del self.held_props[h]
        for payload in self.held_props.pop(height, []):
            self.tasks.append(asyncio.create_task(self._replay_one(payload)))

    async def _replay_one(self, payload: bytes) -> None:
        try:
            pv = decode_vote(payload[:VOTE_SIZE])
            self.held.mark_durable(pv.height, pv.round, pv.block_hash)
            await self._on_proposal(None, payload)
            self.count("held_replayed")
        except ChainError as exc:
            self.count("held_replay_" + exc.reason)
            log.warning("held proposal not replayed: %s", exc)

    def _propose(self, a: Propose) -> None:
        signed = self.vote_log.get(a.height, a.round, PROPOSAL)
        if signed is not None:
            # proposed before a restart: the same signed proposal again if its block is back (replayed
            # from the held proposals), never a second one
            prop = self.proposals.get((a.height, a.round))
            if prop is None or prop[0].block_hash != signed.block_hash:
                self.count("propose_already_signed")
                return
            self.net.broadcast(p2p.PROPOSAL, prop[0].encode() + prop[1])
            return
        held = self.blocks.get(a.block_hash) if a.block_hash is not None else None
        if a.block_hash is not None and held is None:
            self.count("repropose_missing_block")
            return
        if self.committing:
            # a proposal extends a durable head only: a lone authority that crashed while its parent was
            # still being written would hold votes above a block it no longer has and nobody could resend
            # (with peers, a follower's vote over the tip is fine: a restart fetches the parent from them)
            self.deferred_propose = a
            self.count("propose_waits_for_commit")
            return
        if held is not None:
            cand = held
        else:
            t0 = time.perf_counter()
            s = self.tip
            head = s.head
            cands = self.mempool.select(self.cfg.max_block_txs)
            s.prefetch(touched_keys(cands))
            ts = max(head.timestamp, int(self.cfg.clock()))
            block, result, rejected = build_block(s, s.accumulator, head, cands, self.params, self.address, ts,
                                                  a.round, header_at=s.header_at)
            for vtx, exc in rejected:
                # a later nonce behind a rejected one waits for the gap to be filled; the rest is dropped
                if not (exc.reason == BAD_NONCE and vtx.nonce > self._nonce_of(vtx.sender)):
                    self.mempool.drop(vtx.hash, exc.reason)
            by_hash = {v.hash: v for v in cands}
            kept = tuple(by_hash[r.tx_hash] for r in result.receipts)
            cand = Candidate(block, result, kept, frozenset(v.hash for v in kept))
            self._time("build_block", t0)
        block = cand.block
        pv = self.signer.sign(PROPOSAL, a.height, a.round, block.hash, a.pol_round)
        self.blocks[block.hash] = cand
        raw = block.encode()
        self.proposals[(a.height, a.round)] = (pv, raw)
        self.held.keep(a.height, a.round, block.hash, pv.encode() + raw)
        self.net.broadcast(p2p.PROPOSAL, pv.encode() + raw)
        self.count("proposed")
        self._do(self.machine.on_proposal(ProposalIn(a.height, a.round, block.hash, a.pol_round, True),
                                          time.monotonic()))

    def _decide(self, d: Decide) -> None:
        cand = self.blocks.get(d.block_hash)
        if cand is None:  # cannot happen: the machine decides only proposals we executed
            log.error("decided block %s not held", d.block_hash.hex())
            return
        self._commit(cand, d.certificate)

    def _commit(self, cand: Candidate, cert: Certificate) -> None:
        """Hand a decided block to the store's writer thread and move on to the next height.

        The block, its certificate, receipts and state go to SQLite in one transaction
        (synchronous=FULL) on the writer thread, while this loop keeps taking transactions and
        validating the next proposal over ``self.tip``. Only when that transaction has committed
        (``_committed``) does the block become the head that RPC reads, its txs "final" and their
        waiters woken: nothing is reported final before it is on disk."""
        t0 = time.perf_counter()
        h = cand.block.header
        cert_row = ("INSERT OR REPLACE INTO chain_certs (height, hash, cert) VALUES (?, ?, ?)",
                    (h.height, h.hash, cert.encode()))
        self.committing.append(cand)
        self.nonces.clear()
        if self.fault == ("commit", h.height):
            self.store.fault = _exit_in_commit
        try:
            fut = self.store.stage(cand.block, cand.result, [cert_row])
        except BaseException:
            self.committing.pop()
            self.nonces.clear()
            raise
        started = time.perf_counter()
        asyncio.wrap_future(fut).add_done_callback(lambda f: self._committed(cand, f, started))
        self.mempool.remove(cand.verified)
        self.blocks.clear()
        self.proposals = {k: v for k, v in self.proposals.items() if k[0] > h.height}
        self.seen_votes = {k for k in self.seen_votes if k[1][0] > h.height}
        self._time("commit_stage", t0)
        # proposals for the new height that arrived early
        for key in [k for k in self.future_props if k[0] == h.height + 1]:
            payload = self.future_props.pop(key)
            self.tasks.append(asyncio.create_task(self._on_proposal(None, payload)))
        self.future_props = {k: v for k, v in self.future_props.items() if k[0] > h.height}
        self._replay_held(h.height + 1)

    def _committed(self, cand: Candidate, fut: asyncio.Future[None], started: float) -> None:
        exc = fut.exception()
        if exc is not None:
            # the decided block could not be stored: this process cannot go on with a head it does
            # not have; a restart resumes from the last durable block and fetches the rest from peers
            log.critical("commit of block %d failed: %r; exiting", cand.block.header.height, exc)
            os._exit(70)
        h = cand.block.header
        self.store.finish(cand.block, cand.result)
        self.held.prune(h.height)
        done = self.committing.popleft()
        assert done is cand
        self.timing["commit"] = self.timing.get("commit", 0.0) + time.perf_counter() - started
        self.block_times.append((h.height, time.time()))
        self.count("blocks_committed")
        self.count("txs_committed", len(cand.block.txs))
        for r in cand.result.receipts:
            for w in self.waiters.pop(r.tx_hash, ()):
                if not w.done():
                    w.set_result(None)
        if h.height % 256 == 0:
            self.vote_log.compact(h.height)
        if self.txlog.size > INTAKE_LOG_COMPACT_BYTES and not self.intake.compacting:
            self.intake.compacting = True
            self.tasks.append(asyncio.create_task(self.intake.compact_log()))
        self.head_changed.set()
        self.head_changed = asyncio.Event()
        a = self.deferred_propose
        if a is not None and not self.committing:
            self.deferred_propose = None
            if (a.height, a.round) == (self.machine.height, self.machine.round):
                self._do([a])

    # ---- validation ------------------------------------------------------------------------

    async def _validate(self, block: Block) -> Candidate | None:
        bh = block.hash
        fut = self.validating.get(bh)
        if fut is not None:
            return await fut
        fut = asyncio.get_running_loop().create_future()
        self.validating[bh] = fut
        try:
            cand = await self._validate_inner(block)
            fut.set_result(cand)
            return cand
        except BaseException:
            fut.set_result(None)
            raise
        finally:
            self.validating.pop(bh, None)

    async def _validate_inner(self, block: Block) -> Candidate | None:
        hashes = [keccak256(r) for r in block.txs]
        verified: list[VerifiedTx | None] = [self.mempool.get(h) for h in hashes]
        missing = [i for i, v in enumerate(verified) if v is None]
        if missing:
            # every tx is checked here once: the ones still in an intake check are awaited (their job
            # moves ahead of the queued intake work), only the others are checked now, urgently
            t0 = time.perf_counter()
            waits: dict[int, tuple[VerifyJob, list[tuple[int, int]]]] = {}
            fresh: list[int] = []
            for i in missing:
                got = self.intake.inflight.get(hashes[i])
                if got is None:
                    fresh.append(i)
                else:
                    waits.setdefault(id(got[0]), (got[0], []))[1].append((i, got[1]))
            self.count("validate_awaited_intake", len(missing) - len(fresh))
            self.count("validate_checked_txs", len(fresh))
            for job, _ in waits.values():
                self.verifier.promote(job)
            own = self.verifier.start([block.txs[i] for i in fresh], urgent=True)
            for job, picks in waits.values():
                res = await job.result()
                for i, k in picks:
                    verified[i] = self._checked(res[k])
            for i, v in zip(fresh, await own.result()):
                verified[i] = self._checked(v)
            self._time("validate_wait_checks", t0)
            if any(v is None for v in verified):
                return None
        s = self.tip
        hd = block.header
        if hd.parent_hash != s.head.hash:
            return None
        if hd.timestamp > self.cfg.clock() + 2 * self.block_time + 5:
            self.count("block_from_future")
            return None
        t0 = time.perf_counter()
        try:
            vs = [v for v in verified if v is not None]
            s.prefetch(touched_keys(vs))
            result = execute_block(s, s.accumulator, block, s.head, self.params, header_at=s.header_at, verified=vs)
        except BlockInvalid as exc:
            self.count("block_invalid_" + exc.reason)
            log.warning("invalid block %s: %s", block.hash.hex()[:12], exc)
            return None
        finally:
            self._time("execute_block", t0)
        return Candidate(block, result, tuple(v for v in verified if v is not None), frozenset(hashes))

    def _checked(self, v: VerifiedTx | DecodeError) -> VerifiedTx | None:
        if isinstance(v, DecodeError):
            self.count("block_bad_tx_" + v.reason)
            return None
        return v

    # ---- frames ------------------------------------------------------------------------------

    async def _on_frame(self, peer: p2p.Peer, mtype: int, payload: bytes) -> None:
        try:
            if mtype == p2p.VOTE:
                self._on_vote(peer, payload)
            elif mtype == p2p.TXS:
                await self.intake.on_txs(decode_txs(payload))
            elif mtype == p2p.PROPOSAL:
                await self._on_proposal(peer, payload)
            elif mtype == p2p.STATUS:
                height, _round = _STATUS.unpack(payload)
                peer.height = height
                if height > self.tip.head.height:
                    self._want_sync(peer)
            elif mtype == p2p.GET_BLOCKS:
                start, n = _GET.unpack(payload)
                self._serve_blocks(peer, start, min(n, SYNC_BATCH))
            elif mtype == p2p.BLOCK:
                await self._on_block(peer, payload)
            else:
                self.count("unknown_frame")
        except struct.error:
            self.count("bad_frame")
            raise p2p.P2PError("bad_frame", f"frame type {mtype}") from None
        except ConsensusError as exc:
            self.count(f"{p2p.TYPE_NAMES.get(mtype, '?')}_{exc.reason}")
        except DecodeError as exc:
            self.count(f"{p2p.TYPE_NAMES.get(mtype, '?')}_{exc.reason}")

    def _on_vote(self, peer: p2p.Peer | None, payload: bytes) -> None:
        v = decode_vote(payload)
        if v.kind == PROPOSAL:
            raise ConsensusError("bad_kind", "a proposal in a vote frame")
        check_vote(v, self.genesis.chain_id, self.authorities)
        key = (v.signer, v.key, v.block_hash)
        if key in self.seen_votes or v.height < self.machine.height:
            return
        self.seen_votes.add(key)
        self.net.broadcast(p2p.VOTE, payload, exclude=peer)       # gossip: relay each new vote once
        if v.height > self.machine.height + 1 and peer is not None:
            self._want_sync(peer)
        self._do(self.machine.on_vote(v, time.monotonic()))

    async def _on_proposal(self, peer: p2p.Peer | None, payload: bytes) -> None:
        if len(payload) < VOTE_SIZE:
            raise DecodeError("truncated", "proposal")
        pv = decode_vote(payload[:VOTE_SIZE])
        if pv.kind != PROPOSAL:
            raise ConsensusError("bad_kind", "not a proposal")
        check_vote(pv, self.genesis.chain_id, self.authorities)
        if pv.signer != self.machine.proposer(pv.height, pv.round):
            raise ConsensusError("wrong_proposer", f"0x{pv.signer.hex()} is not the proposer of {pv.height}/{pv.round}")
        key = (pv.height, pv.round)
        known = self.proposals.get(key)
        if known is not None:
            if known[0].block_hash != pv.block_hash:
                self.count("equivocations")
                self.count("proposal_equivocation")
                self.evidence.append((known[0], pv))
            return
        if pv.height < self.machine.height:
            return
        if pv.height > self.machine.height:
            if pv.height == self.machine.height + 1 and len(self.future_props) < 16:
                self.future_props[key] = payload
            elif peer is not None:
                self._want_sync(peer)
            return
        block = decode_block(payload[VOTE_SIZE:])
        hd = block.header
        if block.hash != pv.block_hash or hd.height != pv.height or hd.round > pv.round \
                or hd.proposer != self.machine.proposer(hd.height, hd.round):
            raise ConsensusError("bad_proposal", "block does not match its signed proposal")
        self.proposals[key] = (pv, payload[VOTE_SIZE:])
        cand = self.blocks.get(block.hash) or await self._validate(block)
        if pv.height != self.machine.height:
            return
        if cand is not None:
            self.blocks[block.hash] = cand
            self.held.keep(pv.height, pv.round, pv.block_hash, payload)
        self._do(self.machine.on_proposal(ProposalIn(pv.height, pv.round, pv.block_hash, pv.pol_round,
                                                     cand is not None), time.monotonic()))

    # ---- sync ------------------------------------------------------------------------------

    def _want_sync(self, peer: p2p.Peer) -> None:
        now = time.monotonic()
        if now - self.sync_asked < 1.0:
            return
        self.sync_asked = now
        peer.send(p2p.GET_BLOCKS, _GET.pack(self.tip.head.height + 1, SYNC_BATCH))

    def _serve_blocks(self, peer: p2p.Peer, start: int, n: int) -> None:
        for h in range(start, min(start + n, self.store.head.height + 1)):
            row = self.store.conn.execute("SELECT cert FROM chain_certs WHERE height = ?", (h,)).fetchone()
            blk = self.store.conn.execute("SELECT block FROM chain_blocks WHERE height = ?", (h,)).fetchone()
            if row is None or blk is None:
                return
            peer.send(p2p.BLOCK, _U32.pack(len(row[0])) + bytes(row[0]) + bytes(blk[0]))

    async def _on_block(self, peer: p2p.Peer, payload: bytes) -> None:
        (cl,) = _U32.unpack_from(payload, 0)
        cert = decode_certificate(payload[4:4 + cl])
        block = decode_block(payload[4 + cl:])
        if block.header.height != self.tip.head.height + 1:
            return
        verify_certificate(cert, self.genesis.chain_id, self.authorities, block.header.height, block.hash)
        cand = await self._validate(block)
        if cand is None or block.header.height != self.tip.head.height + 1:
            if cand is None:
                self.count("sync_block_invalid")
            return
        self._commit(cand, cert)
        self.count("blocks_synced")
        self.sync_asked = 0.0
        h = self.tip.head.height + 1
        if self.machine.height < h:
            self._do(self.machine.start(h, time.monotonic(), own_votes=self.vote_log.at_height(h)))
        if peer.height > self.tip.head.height and block.header.height % SYNC_BATCH == 0:
            self._want_sync(peer)

    # ---- gossip ------------------------------------------------------------------------------

    def _on_connect(self, peer: p2p.Peer) -> None:
        peer.send(p2p.STATUS, _STATUS.pack(self.store.head.height, self.machine.round))
        for (h, _r), (pv, raw) in self.proposals.items():
            if h == self.machine.height and pv.signer == self.address:
                peer.send(p2p.PROPOSAL, pv.encode() + raw)
        for v in self._height_votes():
            peer.send(p2p.VOTE, v.encode())
        pend = [v.raw for v in self.mempool.pending.values()]
        for i in range(0, len(pend), TX_GOSSIP_CHUNK):
            peer.send(p2p.TXS, encode_txs(pend[i:i + TX_GOSSIP_CHUNK]))

    def _height_votes(self) -> list[Vote]:
        return [v for d in self.machine.h.votes.values() for per in d.values() for v in per.values()]

    async def _ticker(self) -> None:
        """Status to peers, and re-gossip of the current height when it stalls."""
        last_status = 0.0
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if now - last_status < max(0.1, self.block_time / 2):
                continue
            last_status = now
            m = self.machine
            self.net.broadcast(p2p.STATUS, _STATUS.pack(self.store.head.height, m.round))
            if (m.height, m.round) != self.progress[:2]:
                self.progress = (m.height, m.round, now)
            elif now - self.progress[2] > 2 * self.block_time:
                self.count("regossip")
                self.progress = (m.height, m.round, now)
                for v in self._height_votes():
                    self.net.broadcast(p2p.VOTE, v.encode())
                for (h, _r), (pv, raw) in self.proposals.items():
                    if h == m.height and pv.signer == self.address:
                        self.net.broadcast(p2p.PROPOSAL, pv.encode() + raw)

    # ---- intake (intake.py) -------------------------------------------------------------------

    async def submit(self, raws: list[bytes], gossip: bool = True, log_intake: bool | None = None) -> list[bytes | str]:
        """Raw txs in: each result is the tx hash (accepted now or known already) or a rejection reason
        (``Intake.submit``)."""
        return await self.intake.submit(raws, gossip, log_intake)

    # ---- queries (rpc.py) ----------------------------------------------------------------------

    def tx_status(self, h: bytes) -> dict[str, Any]:
        r = self.store.receipt(h)
        if r is not None:
            return {"status": "final", "height": r.height, "reason": None}
        for cand in (*self.committing, *self.blocks.values()):
            if h in cand.hashes:
                return {"status": "included", "height": cand.block.header.height, "reason": None}
        if h in self.mempool.pending or h in self.intake.inflight:
            return {"status": "pending", "height": None, "reason": None}
        reason = self.mempool.rejected.get(h)
        if reason is not None:
            return {"status": "rejected", "height": None, "reason": reason}
        return {"status": "unknown", "height": None, "reason": None}

    async def wait_final(self, h: bytes, timeout: float) -> dict[str, Any]:
        st = self.tx_status(h)
        if st["status"] in ("final",) or timeout <= 0:
            return st
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(h, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            lst = self.waiters.get(h)
            if lst is not None and fut in lst:
                lst.remove(fut)
                if not lst:
                    del self.waiters[h]
        return self.tx_status(h)

    def status(self) -> dict[str, Any]:
        m = self.machine
        up = 1 + sum(1 for a in self.net.peers if a in self.authorities)
        counters = dict(self.counters)
        counters.update({f"p2p_{k}": v for k, v in self.net.counters.items()})
        counters.update({f"mempool_{k}": v for k, v in self.mempool.counters.items()})
        counters.update({f"verify_{k}": v for k, v in self.verifier.counters.items()})
        return {"chainId": self.genesis.chain_id, "address": "0x" + self.address.hex(),
                "height": self.store.head.height, "finalHeight": self.store.head.height,
                "consensusHeight": m.height, "round": m.round, "step": m.step,
                "lockedRound": m.locked_round,
                "peers": ["0x" + a.hex() for a in self.net.peers], "validators": len(self.authorities),
                "validatorsUp": up, "mempool": len(self.mempool), "counters": counters,
                "timing": {**{k: round(v, 3) for k, v in self.timing.items()},
                           "verify_inline": round(self.verifier.seconds, 3)},
                "p2p": f"{self.net.listen[0]}:{self.net.listen[1]}"}


def _parse_fault(spec: str | None) -> tuple[str, int] | None:
    """``precommit@H``: exit right after signing a precommit at height H (the vote is on disk, the block
    is not); ``commit@H``: exit inside the commit transaction of block H (after its state rows)."""
    if not spec:
        return None
    where, _, height = spec.partition("@")
    if where not in ("precommit", "commit") or not height.isdigit():
        raise ValueError(f"{FAULT_ENV}: expected precommit@H or commit@H, got {spec!r}")
    return where, int(height)


def _exit_in_commit(where: str) -> None:
    if where == "receipts":
        log.error("fault injection: exiting inside a commit transaction")
        os._exit(FAULT_EXIT)


async def run_node(cfg: NodeConfig, stop: asyncio.Event | None = None) -> None:
    node = Node(cfg)
    await node.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await node.stop()


__all__ = ["Node", "NodeConfig", "run_node", "ChainError"]
