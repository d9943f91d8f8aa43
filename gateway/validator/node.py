"""A validator node: wires consensus, the vote log, the mempool, P2P, storage and JSON-RPC.

Everything runs on one asyncio loop; signature checks run in worker processes or
on the loop between other work (verifier.py). The consensus machine
(consensus.py) is pure: this module turns frames and timers into its events and
carries out its actions, with the parts in modules of their own:

- ``Propose``: proposals.py builds a block from the mempool (``build_block``) or
  re-proposes the valid value, signs the proposal (vote log first) and sends it
  compact (header + tx hashes); it also validates the proposals of others
  (``execute_block`` over txs verified at intake; txs a follower lacks are asked
  of the proposer, txfetch.py);
- ``SignVote``: sign through ``Signer`` (appended and fsync'd before it is sent),
  broadcast, and feed it back to the machine; a precommit only once the proposal
  it locks on is on disk (held.py), so a restart never finds a lock without its block;
- ``Schedule``: a loop timer; ``Decide``: store the commit certificate, then the
  block (one SQLite transaction, on the store's writer thread), drop its txs from
  the mempool, wake waiters;
- ``Equivocation``: counted, evidence kept.

Txs come in through intake.py; a node that is behind catches up through sync.py
(final blocks with their certificates); gossip.py sends STATUS, re-gossips a
stalled height and greets new connections; queries.py answers JSON-RPC's
questions about txs and the node.
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

from . import p2p, queries
from .p2p import Limits
from .consensus import Action, Decide, Equivocation, Machine, Propose, Schedule, SignVote, Timeouts
from .crypto import address_of
from .errors import ChainError, DecodeError
from .genesis import Genesis
from .gossip import Gossip
from .held import HeldProposals
from .intake import Intake, decode_txs
from .mempool import Mempool
from .proposals import Proposals
from .state import get_account
from .storage import SqliteStore
from .sync import CERT_SCHEMA, Sync
from .tip import Candidate, Tip
from .txfetch import TxFetch
from .txlog import TxLog
from .verifier import Verifier
from .votes import PRECOMMIT, PROPOSAL, Certificate, ConsensusError, Signer, Vote, VoteLog, check_vote, decode_vote

log = logging.getLogger(__name__)

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
        self.fault = _parse_fault(os.environ.get(FAULT_ENV))
        self.committing: deque[Candidate] = deque()        # decided, being written (store.stage), in order
        self.tip = Tip(self.store, self.committing)
        self.nonces: dict[bytes, int] = {}                 # account nonces at the tip (see _nonce_of)
        self.signer = Signer(cfg.key, g.chain_id, self.vote_log)
        bt = cfg.block_time if cfg.block_time is not None else g.block_time_ms / 1000
        self.block_time = bt
        self.machine = Machine(self.authorities, self.address, Timeouts.for_block_time(bt), g.chain_id)
        self.mempool = Mempool(self._nonce_of)
        self.verifier = Verifier(self.params, cfg.workers)
        self.proposing = Proposals(self)
        self.sync = Sync(self)
        self.gossip = Gossip(self)
        self.txfetch = TxFetch(self)
        self.net = p2p.Network(cfg.key, g.chain_id, g.hash, cfg.p2p, list(cfg.peers), self._on_frame,
                               limits=cfg.limits, on_connect=self.gossip.on_connect, authorities=self.authorities)
        self.counters: dict[str, int] = {}
        self.timing: dict[str, float] = {}   # cumulative seconds on the event loop, per stage (a cheap profile)
        self.seen_votes: set[tuple[bytes, tuple[int, int, int], bytes]] = set()
        self.intake = Intake(self)
        self.waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self.evidence: deque[tuple[Vote, Vote]] = deque(maxlen=100)
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
        self.proposing.from_disk = self.held.load(self.store.head.height)
        self._do(self.machine.start(h, time.monotonic(), own_votes=self.vote_log.at_height(h)))
        self.proposing.replay_held(h)
        self.tasks.append(asyncio.create_task(self.gossip.ticker()))
        self.started = True
        log.info("validator 0x%s at height %d, p2p %s, rpc %s", self.address.hex(), self.store.head.height,
                 self.net.listen, self.rpc_address)

    async def stop(self) -> None:
        for t in self.timers:
            t.cancel()
        for task in self.tasks:
            task.cancel()
        self.proposing.close()
        self.txfetch.close()
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
                    self.proposing.propose(a)
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
        if a.kind == PRECOMMIT and a.block_hash is not None and not self.proposing.held_for(a):
            return
        v = self.signer.sign(a.kind, a.height, a.round, a.block_hash)   # persisted (fsync) before sending
        if self.fault == ("precommit", a.height) and a.kind == PRECOMMIT and a.block_hash is not None:
            log.error("fault injection: exiting after signing the precommit at height %d", a.height)
            os._exit(FAULT_EXIT)
        self.seen_votes.add((v.signer, v.key, v.block_hash))
        self.net.broadcast(p2p.VOTE, v.encode())
        self._do(self.machine.on_vote(v, time.monotonic()))

    def _decide(self, d: Decide) -> None:
        cand = self.proposing.blocks.get(d.block_hash)
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
        self.seen_votes = {k for k in self.seen_votes if k[1][0] > h.height}
        self._time("commit_stage", t0)
        self.proposing.decided(h.height)

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
        self.proposing.durable()

    # ---- frames ------------------------------------------------------------------------------

    async def _on_frame(self, peer: p2p.Peer, mtype: int, payload: bytes) -> None:
        try:
            if mtype == p2p.VOTE:
                self._on_vote(peer, payload)
            elif mtype == p2p.TXS:
                await self.intake.on_txs(decode_txs(payload))
            elif mtype == p2p.PROPOSAL:
                await self.proposing.on_proposal(peer, payload)
            elif mtype == p2p.STATUS:
                self.gossip.on_status(peer, payload)
            elif mtype == p2p.GET_BLOCKS:
                self.sync.serve(peer, payload)
            elif mtype == p2p.BLOCK:
                await self.sync.on_block(peer, payload)
            elif mtype == p2p.GET_TXS:
                self.txfetch.serve(peer, payload)
            elif mtype == p2p.TX_REPLY:
                self.txfetch.on_reply(peer, payload)
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
            self.sync.want(peer)
        self._do(self.machine.on_vote(v, time.monotonic()))

    # ---- intake (intake.py) -------------------------------------------------------------------

    async def submit(self, raws: list[bytes], gossip: bool = True, log_intake: bool | None = None) -> list[bytes | str]:
        """Raw txs in: each result is the tx hash (accepted now or known already) or a rejection reason
        (``Intake.submit``)."""
        return await self.intake.submit(raws, gossip, log_intake)

    # ---- queries (rpc.py; queries.py) ---------------------------------------------------------

    def tx_status(self, h: bytes) -> dict[str, Any]:
        return queries.tx_status(self, h)

    async def wait_final(self, h: bytes, timeout: float) -> dict[str, Any]:
        return await queries.wait_final(self, h, timeout)

    def status(self) -> dict[str, Any]:
        return queries.status(self)


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
