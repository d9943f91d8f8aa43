"""Validator-to-validator networking over asyncio TCP: framing, an authenticated hello, limits.

Frame: ``length u32 | type u8 | payload`` (length counts type + payload, at most
MAX_FRAME). Message types (payloads built and read where they are used: intake.py,
proposals.py, txfetch.py, gossip.py, sync.py)::

    1 HELLO       chainId u64 | genesisHash 32 | address 20 | challenge 32
    2 AUTH        sig 65 over keccak256("metanoia/p2p/v1" | peer's challenge | my address | genesisHash)
    3 TXS         count u32 | count x (len u32 | signed tx)
    4 PROPOSAL    signed proposal (votes.py, 142) | compact block (block.py: header | count u32 | count x tx hash)
    5 VOTE        signed vote (142)
    6 STATUS      height u64 | round u32
    7 GET_BLOCKS  from u64 | count u32
    8 BLOCK       certLen u32 | certificate | block    (one final block per frame)
    9 GET_TXS     request u32 | count u32 | count x tx hash 32   (a proposal's txs this node lacks)
   10 TX_REPLY    request u32 | count u32 | count x (len u32 | signed tx)   (those of them the peer holds)

Both sides send HELLO at once; a peer must be on the same chain and genesis
and prove its address by signing our fresh challenge before any other frame
is accepted. One connection per pair of addresses: when two exist, the one
dialled by the lower address stays. Each connection has a token bucket on
bytes and frames per second; a peer over it, or sending an oversize or
malformed frame, is disconnected and the reason counted (``counters``). What a
peer may make this node send back is bounded too: TX_REPLY bytes per second
(``serve_out``; txfetch.py refuses a GET_TXS beyond it, the peer stays).
Non-authority peers may connect (observers); their votes and blocks are
rejected by the node, which checks every signature itself. What connections cost
is bounded too: at most ``max_observers`` non-authority peers at once (one more is
closed right after its handshake, ``observers_full``; authorities are always
admitted) and at most ``max_pending_handshakes`` inbound sockets that have not
finished the handshake (one more is closed at once, ``handshakes_full``; the
node's own dials are not counted), whose frames may be no longer than a HELLO.
Sending is prioritised: queued votes, proposals and status frames go out before queued tx
gossip and sync blocks, so consensus latency does not grow with the tx load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from coincurve import PrivateKey

from .crypto import address_of, keccak256, recover_address, sign_digest
from .errors import ChainError, DecodeError

log = logging.getLogger(__name__)

HELLO, AUTH, TXS, PROPOSAL, VOTE, STATUS, GET_BLOCKS, BLOCK, GET_TXS, TX_REPLY = range(1, 11)
BULK = frozenset((TXS, BLOCK))   # sent after any queued consensus frame (a TX_REPLY is not: a vote waits for it)
TYPE_NAMES = {HELLO: "hello", AUTH: "auth", TXS: "txs", PROPOSAL: "proposal", VOTE: "vote", STATUS: "status",
              GET_BLOCKS: "get_blocks", BLOCK: "block", GET_TXS: "get_txs", TX_REPLY: "tx_reply"}
MAX_FRAME = 40 * 1024 * 1024
_LEN = struct.Struct(">I")
_HELLO = struct.Struct(">Q32s20s32s")
AUTH_DOMAIN = b"metanoia/p2p/v1"

# reasons (counted, and logged on disconnect)
FRAME_TOO_LARGE = "frame_too_large"
RATE_LIMITED = "rate_limited"
BAD_HELLO = "bad_hello"
WRONG_CHAIN = "wrong_chain"
WRONG_GENESIS = "wrong_genesis"
BAD_AUTH = "bad_auth"
UNEXPECTED = "unexpected_frame"
SEND_QUEUE_FULL = "send_queue_full"
HANDSHAKE_TIMEOUT = "handshake_timeout"
OBSERVERS_FULL = "observers_full"
HANDSHAKES_FULL = "handshakes_full"
HANDSHAKE_FRAME = 128       # longest frame before the peer has proven its address (HELLO 93, AUTH 66)


class P2PError(ChainError):
    """A peer broke the protocol; the connection is closed and ``reason`` counted."""


@dataclass(frozen=True)
class Limits:
    max_frame: int = MAX_FRAME
    bytes_per_s: float = 256 * 1024 * 1024
    frames_per_s: float = 50_000
    burst_s: float = 2.0                    # bucket size, in seconds of rate
    send_queue_bytes: int = 256 * 1024 * 1024
    handshake_s: float = 5.0
    # TX_REPLY bytes served to one peer (txfetch.py): a follower that missed the gossip of every
    # block still fits (docs/chain.md, Compact proposals); a GET_TXS flood gets no more than this
    serve_bytes_per_s: float = 4 * 1024 * 1024
    serve_burst_s: float = 2.0
    # connections (docs/chain.md, P2P): non-authority peers connected at once (only when the Network knows
    # the authority set), and inbound sockets still in the handshake
    max_observers: int = 8
    max_pending_handshakes: int = 32


class _Bucket:
    def __init__(self, rate: float, burst_s: float) -> None:
        self.rate = rate
        self.cap = rate * burst_s
        self.level = self.cap
        self.t = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.cap, self.level + (now - self.t) * self.rate)
        self.t = now

    def take(self, n: float) -> bool:
        self._refill()
        self.level -= n
        return self.level >= 0

    def ready(self) -> bool:
        """Not in debt: the next piece of work may go ahead, whatever its size (``spend`` charges it)."""
        self._refill()
        return self.level > 0

    def spend(self, n: float) -> None:
        """Charge ``n`` after the fact; the level may go below zero, a debt repaid at the rate."""
        self._refill()
        self.level -= n


class Peer:
    """One authenticated connection. ``send`` queues a frame; a writer task drains the queue."""

    def __init__(self, net: Network, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 outbound: bool, dialled: str | None) -> None:
        self.net = net
        self.reader = reader
        self.writer = writer
        self.outbound = outbound
        self.dialled = dialled
        self.address: bytes | None = None
        self._urgent: deque[bytes] = deque()    # consensus frames (votes, proposals, status)
        self._bulk: deque[bytes] = deque()      # tx gossip and sync blocks
        self._wake = asyncio.Event()
        self.queued = 0
        self.closed = False
        self.bytes_in = _Bucket(net.limits.bytes_per_s, net.limits.burst_s)
        self.frames_in = _Bucket(net.limits.frames_per_s, net.limits.burst_s)
        self.serve_out = _Bucket(net.limits.serve_bytes_per_s, net.limits.serve_burst_s)   # TX_REPLY bytes
        self.height = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return "0x" + self.address.hex()[:8] if self.address else (self.dialled or "?")

    def send(self, mtype: int, payload: bytes) -> None:
        if self.closed:
            return
        frame = _LEN.pack(len(payload) + 1) + bytes((mtype,)) + payload
        self.queued += len(frame)
        if self.queued > self.net.limits.send_queue_bytes:
            self.net.count(SEND_QUEUE_FULL)
            self.close()
            return
        (self._bulk if mtype in BULK else self._urgent).append(frame)
        self._wake.set()

    async def _writer(self) -> None:
        """Consensus frames first: a vote or proposal never waits behind queued tx gossip or sync blocks
        (those go one frame at a time, re-checking for urgent frames in between)."""
        urgent, bulk = self._urgent, self._bulk
        try:
            while True:
                if not urgent and not bulk:
                    if self.closed:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                frame = urgent.popleft() if urgent else bulk.popleft()
                self.queued -= len(frame)
                self.writer.write(frame)
                if self.writer.transport.get_write_buffer_size() > 1 << 20:
                    await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    async def read_frame(self, max_frame: int | None = None) -> tuple[int, bytes]:
        head = await self.reader.readexactly(4)
        (n,) = _LEN.unpack(head)
        if n == 0 or n > (max_frame or self.net.limits.max_frame):
            raise P2PError(FRAME_TOO_LARGE if n else UNEXPECTED, f"frame of {n} bytes")
        if not self.bytes_in.take(n + 4) or not self.frames_in.take(1):
            raise P2PError(RATE_LIMITED, "peer over its rate")
        body = await self.reader.readexactly(n)
        return body[0], body[1:]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._urgent.clear()
        self._bulk.clear()
        self._wake.set()
        try:
            self.writer.close()
        except Exception:  # pragma: no cover - already closed transports
            pass
        self.net._dropped(self)


Handler = Callable[[Peer, int, bytes], Awaitable[None]]


class Network:
    """Listener + dialler for a set of peers, with handshake, limits and broadcast."""

    def __init__(self, key: PrivateKey, chain_id: int, genesis_hash: bytes, listen: tuple[str, int],
                 peers: list[tuple[str, int]], handler: Handler, *, limits: Limits | None = None,
                 on_connect: Callable[[Peer], None] | None = None,
                 authorities: Iterable[bytes] | None = None) -> None:
        self.key = key
        self.address = address_of(key)
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.listen = listen
        self.peer_addrs = peers
        self.handler = handler
        self.on_connect = on_connect
        self.limits = limits or Limits()
        # None: the authority set is not known here (tools, tests), so no peer counts as an observer
        self.authorities = frozenset(authorities) if authorities is not None else None
        self.pending = 0                   # inbound sockets in the handshake
        self.peers: dict[bytes, Peer] = {}
        self.counters: dict[str, int] = {}
        self.partitioned = False           # fault injection: drop every connection, refuse new ones
        self._known: dict[str, bytes] = {}  # dialled host:port -> address seen there
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: set[Peer] = set()

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._inbound, self.listen[0], self.listen[1],
                                                  limit=self.limits.max_frame + 8)
        self.listen = self._server.sockets[0].getsockname()[:2]
        for hp in self.peer_addrs:
            self._tasks.append(asyncio.create_task(self._dial_loop(hp)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for p in list(self._conns):
            p.close()
        if self._server is not None:
            self._server.close()

    def set_partitioned(self, on: bool) -> None:
        self.partitioned = on
        if on:
            for p in list(self._conns):
                p.close()

    def broadcast(self, mtype: int, payload: bytes, exclude: Peer | None = None) -> None:
        for p in list(self.peers.values()):
            if p is not exclude:
                p.send(mtype, payload)

    # ---- connections -----------------------------------------------------------------------

    async def _dial_loop(self, hp: tuple[str, int]) -> None:
        key = f"{hp[0]}:{hp[1]}"
        delay = 0.1
        while True:
            known = self._known.get(key)
            if self.partitioned or (known is not None and known in self.peers) or known == self.address:
                await asyncio.sleep(0.2)
                continue
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(hp[0], hp[1],
                                                        limit=self.limits.max_frame + 8), 2.0)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.1
            await self._run(reader, writer, outbound=True, dialled=key)
            await asyncio.sleep(0.1)

    async def _inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.partitioned:
            writer.close()
            return
        if self.pending >= self.limits.max_pending_handshakes:
            self.count(HANDSHAKES_FULL)
            writer.close()
            return
        await self._run(reader, writer, outbound=False, dialled=None)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool,
                   dialled: str | None) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = Peer(self, reader, writer, outbound, dialled)
        self._conns.add(peer)
        wt = asyncio.create_task(peer._writer())
        pending = not outbound
        if pending:
            self.pending += 1
        try:
            try:
                await asyncio.wait_for(self._handshake(peer), self.limits.handshake_s)
            finally:
                if pending:
                    self.pending -= 1
            if not self._register(peer):
                return
            while not peer.closed:
                mtype, payload = await peer.read_frame()
                if mtype in (HELLO, AUTH):
                    raise P2PError(UNEXPECTED, "second handshake")
                await self.handler(peer, mtype, payload)
        except asyncio.TimeoutError:
            self.count(HANDSHAKE_TIMEOUT)
        except P2PError as exc:
            self.count(exc.reason)
            log.warning("peer %s dropped: %s", peer.name, exc)
        except DecodeError as exc:
            self.count("bad_frame_" + exc.reason)
            log.warning("peer %s sent a malformed frame: %s", peer.name, exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            peer.close()
            self._conns.discard(peer)
            wt.cancel()

    async def _handshake(self, peer: Peer) -> None:
        challenge = os.urandom(32)
        peer.send(HELLO, _HELLO.pack(self.chain_id, self.genesis_hash, self.address, challenge))
        mtype, payload = await peer.read_frame(HANDSHAKE_FRAME)
        if mtype != HELLO or len(payload) != _HELLO.size:
            raise P2PError(BAD_HELLO, "expected hello")
        chain_id, ghash, addr, their_challenge = _HELLO.unpack(payload)
        if chain_id != self.chain_id:
            raise P2PError(WRONG_CHAIN, f"peer on chain {chain_id}")
        if ghash != self.genesis_hash:
            raise P2PError(WRONG_GENESIS, "peer has another genesis")
        digest = keccak256(AUTH_DOMAIN + their_challenge + self.address + self.genesis_hash)
        peer.send(AUTH, sign_digest(self.key, digest))
        mtype, payload = await peer.read_frame(HANDSHAKE_FRAME)
        if mtype != AUTH:
            raise P2PError(BAD_AUTH, "expected auth")
        want = keccak256(AUTH_DOMAIN + challenge + addr + self.genesis_hash)
        try:
            ok = recover_address(want, payload) == addr
        except DecodeError:
            ok = False
        if not ok:
            raise P2PError(BAD_AUTH, "peer did not prove its address")
        peer.address = addr
        if peer.dialled:
            self._known[peer.dialled] = addr

    def _register(self, peer: Peer) -> bool:
        addr = peer.address
        assert addr is not None
        if addr == self.address:
            return False
        old = self.peers.get(addr)
        if old is not None and not old.closed:
            lower = min(addr, self.address)
            keep_new = (peer.outbound and lower == self.address) or (not peer.outbound and lower == addr)
            if not keep_new:
                self.count("duplicate_connection")
                return False
            old.close()
        elif self.authorities is not None and addr not in self.authorities:
            observers = sum(1 for a in self.peers if a not in self.authorities and a != addr)
            if observers >= self.limits.max_observers:
                self.count(OBSERVERS_FULL)
                log.debug("observer %s refused: %d observers connected", peer.name, observers)
                return False
        self.peers[addr] = peer
        self.count("connected")
        log.info("peer %s connected (%s)", peer.name, "out" if peer.outbound else "in")
        if self.on_connect is not None:
            self.on_connect(peer)
        return True

    def _dropped(self, peer: Peer) -> None:
        if peer.address is not None and self.peers.get(peer.address) is peer:
            del self.peers[peer.address]
