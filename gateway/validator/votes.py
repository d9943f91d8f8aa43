"""Consensus messages signed by authorities: proposals and votes, commit certificates, the vote log.

One fixed format for all three kinds of consensus signature (big-endian, 142 bytes)::

    kind u8 (0 proposal, 1 prevote, 2 precommit) | chainId u64 | height u64 |
    round u32 | polRound u32 (0xFFFFFFFF = none) | blockHash 32 (zeros = nil) |
    signer 20 | sig 65

The signer signs ``keccak256(0x19 'V' || body)``: 0x19 keeps it apart from
Ethereum transactions, 'V' apart from this chain's transactions ('M') and from
EIP-191/EIP-712 messages. A commit certificate is a block's precommits: more
than two thirds of the authorities, distinct, same height, round and hash.

The vote log (``VoteLog``) is the node's memory of everything it has signed:
each message is appended and fsync'd *before* it leaves the node, and
``Signer`` refuses to sign a second, different message for the same
(height, round, kind). On restart the log is reloaded, so a node never signs
two different blocks or votes for one height/round/step, whatever the crash.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from coincurve import PrivateKey

from gateway.fsutil import replace_durably
from .crypto import address_of, keccak256, recover_address, sign_digest
from .errors import BAD_LENGTH, TRUNCATED, ChainError, DecodeError

log = logging.getLogger(__name__)

PROPOSAL, PREVOTE, PRECOMMIT = 0, 1, 2
KIND_NAMES = {PROPOSAL: "proposal", PREVOTE: "prevote", PRECOMMIT: "precommit"}
NIL = b"\x00" * 32
NO_ROUND = 0xFFFFFFFF
SIG_PREFIX = b"\x19V"
BODY = struct.Struct(">BQQII32s20s")
BODY_SIZE = BODY.size          # 77
VOTE_SIZE = BODY_SIZE + 65     # 142
_U16 = struct.Struct(">H")
_CERT_HEAD = struct.Struct(">QI32sH")  # height, round, hash, count


class ConsensusError(ChainError):
    """A consensus message or certificate that must not be accepted, or a refused signature."""


# reasons
BAD_KIND = "bad_kind"
NOT_AUTHORITY = "not_authority"
WRONG_CHAIN = "wrong_chain_id"
DOUBLE_SIGN_REFUSED = "double_sign_refused"
BAD_CERTIFICATE = "bad_certificate"
NO_QUORUM = "no_quorum"


def quorum(n: int) -> int:
    """Votes needed: more than two thirds of n (3 of 4, 1 of 1, 5 of 7)."""
    return 2 * n // 3 + 1


@dataclass(frozen=True)
class Vote:
    """A proposal or vote signature. ``block_hash`` NIL = nil vote; ``pol_round`` -1 = none."""
    kind: int
    chain_id: int
    height: int
    round: int
    pol_round: int
    block_hash: bytes
    signer: bytes
    sig: bytes

    def body(self) -> bytes:
        return BODY.pack(self.kind, self.chain_id, self.height, self.round,
                         NO_ROUND if self.pol_round < 0 else self.pol_round, self.block_hash, self.signer)

    def encode(self) -> bytes:
        return self.body() + self.sig

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.height, self.round, self.kind)

    @property
    def value(self) -> bytes | None:
        return None if self.block_hash == NIL else self.block_hash

    def same_content(self, other: Vote) -> bool:
        return self.body() == other.body()


def signing_hash(body: bytes) -> bytes:
    return keccak256(SIG_PREFIX + body)


def sign_vote(key: PrivateKey, kind: int, chain_id: int, height: int, round: int, block_hash: bytes | None,
              pol_round: int = -1) -> Vote:
    v = Vote(kind, chain_id, height, round, pol_round, block_hash or NIL, address_of(key), b"")
    return Vote(v.kind, chain_id, height, round, pol_round, v.block_hash, v.signer,
                sign_digest(key, signing_hash(v.body())))


def decode_vote(data: bytes) -> Vote:
    """Decode and check the signature recovers to the declared signer (raises DecodeError/ConsensusError)."""
    if len(data) != VOTE_SIZE:
        raise DecodeError(TRUNCATED if len(data) < VOTE_SIZE else BAD_LENGTH, f"vote is {VOTE_SIZE} bytes")
    kind, chain_id, height, rnd, pol, bh, signer = BODY.unpack_from(data, 0)
    if kind not in KIND_NAMES:
        raise ConsensusError(BAD_KIND, f"kind {kind}")
    body = bytes(data[:BODY_SIZE])
    sig = bytes(data[BODY_SIZE:])
    if recover_address(signing_hash(body), sig) != signer:
        raise DecodeError("signer_mismatch", "vote signature does not recover to its signer")
    return Vote(kind, chain_id, height, rnd, -1 if pol == NO_ROUND else pol, bh, signer, sig)


def check_vote(v: Vote, chain_id: int, authorities: tuple[bytes, ...] | frozenset[bytes]) -> None:
    if v.chain_id != chain_id:
        raise ConsensusError(WRONG_CHAIN, f"vote for chain {v.chain_id}")
    if v.signer not in authorities:
        raise ConsensusError(NOT_AUTHORITY, f"0x{v.signer.hex()} is not an authority")


# ---- commit certificates -----------------------------------------------------------------------

@dataclass(frozen=True)
class Certificate:
    """More than 2/3 of the authorities' precommits for one block: the proof that it is final."""
    height: int
    round: int
    block_hash: bytes
    votes: tuple[Vote, ...]

    def encode(self) -> bytes:
        return _CERT_HEAD.pack(self.height, self.round, self.block_hash, len(self.votes)) + \
            b"".join(v.encode() for v in self.votes)


def decode_certificate(data: bytes) -> Certificate:
    if len(data) < _CERT_HEAD.size:
        raise DecodeError(TRUNCATED, "certificate header")
    height, rnd, bh, count = _CERT_HEAD.unpack_from(data, 0)
    if len(data) != _CERT_HEAD.size + count * VOTE_SIZE:
        raise DecodeError(BAD_LENGTH, "certificate length")
    off = _CERT_HEAD.size
    votes = tuple(decode_vote(data[off + i * VOTE_SIZE: off + (i + 1) * VOTE_SIZE]) for i in range(count))
    return Certificate(height, rnd, bh, votes)


def verify_certificate(cert: Certificate, chain_id: int, authorities: tuple[bytes, ...],
                       height: int, block_hash: bytes) -> None:
    """Raise ConsensusError unless ``cert`` proves ``block_hash`` final at ``height``."""
    if cert.height != height or cert.block_hash != block_hash:
        raise ConsensusError(BAD_CERTIFICATE, "certificate is for another block")
    seen: set[bytes] = set()
    for v in cert.votes:
        if v.kind != PRECOMMIT or v.height != height or v.round != cert.round or v.block_hash != block_hash:
            raise ConsensusError(BAD_CERTIFICATE, "a vote in the certificate is not a precommit for this block")
        check_vote(v, chain_id, authorities)
        seen.add(v.signer)
    if len(seen) < quorum(len(authorities)):
        raise ConsensusError(NO_QUORUM, f"{len(seen)} distinct precommits, need {quorum(len(authorities))}")


# ---- the vote log and the guarded signer -------------------------------------------------------

class VoteLog:
    """Append-only file of every message this node signed; fsync'd before the message is sent.

    Records are fixed-size (VOTE_SIZE); a torn last record (crash mid-write) was never
    sent, so it is dropped on load. ``compact(min_height)`` rewrites the file (tmp +
    fsync + rename) keeping the heights that may still matter.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.votes: dict[tuple[int, int, int], Vote] = {}
        if self.path.exists():
            data = self.path.read_bytes()
            whole = len(data) - len(data) % VOTE_SIZE
            if whole != len(data):
                log.warning("vote log %s: dropping a torn last record (%d bytes)", self.path, len(data) - whole)
                with open(self.path, "r+b") as f:
                    f.truncate(whole)
                    os.fsync(f.fileno())
            for off in range(0, whole, VOTE_SIZE):
                v = decode_vote(data[off:off + VOTE_SIZE])
                self.votes[v.key] = v
        self._f = open(self.path, "ab", buffering=0)

    def get(self, height: int, round: int, kind: int) -> Vote | None:
        return self.votes.get((height, round, kind))

    def at_height(self, height: int) -> list[Vote]:
        return sorted((v for v in self.votes.values() if v.height == height), key=lambda v: (v.round, v.kind))

    def append(self, v: Vote) -> None:
        self._f.write(v.encode())
        os.fsync(self._f.fileno())
        self.votes[v.key] = v

    def compact(self, min_height: int) -> None:
        keep = [v for v in self.votes.values() if v.height >= min_height]
        if len(keep) == len(self.votes):
            return
        self._f.close()
        replace_durably(self.path, b"".join(v.encode() for v in sorted(keep, key=lambda v: v.key)))
        self.votes = {v.key: v for v in keep}
        self._f = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        self._f.close()


class Signer:
    """The validator's key behind the vote log: at most one message per (height, round, kind)."""

    def __init__(self, key: PrivateKey, chain_id: int, vote_log: VoteLog) -> None:
        self.key = key
        self.address = address_of(key)
        self.chain_id = chain_id
        self.log = vote_log

    def sign(self, kind: int, height: int, round: int, block_hash: bytes | None, pol_round: int = -1) -> Vote:
        """Sign (and persist before returning) or return the identical earlier message.

        Raises ConsensusError(double_sign_refused) when a different message was signed
        for the same (height, round, kind): the caller must not send anything then.
        """
        done = self.log.get(height, round, kind)
        bh = block_hash or NIL
        if done is not None:
            if done.block_hash == bh and done.pol_round == pol_round:
                return done
            raise ConsensusError(DOUBLE_SIGN_REFUSED,
                                 f"already signed {KIND_NAMES[kind]} h={height} r={round} for {done.block_hash.hex()[:12]}")
        v = sign_vote(self.key, kind, self.chain_id, height, round, bh, pol_round)
        self.log.append(v)
        return v
