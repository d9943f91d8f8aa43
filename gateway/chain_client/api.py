"""The chain client's interface: what the gateway sees, and what a backend must provide.

Two protocols:

- ``ChainClient``: the gateway's view. ``submit(intent)`` records the intent
  durably under its idempotency key and returns that key as the
  ``SubmissionId``; ``wait_final`` returns a ``Receipt`` (final or rejected,
  with height, tx hash and reason); ``status`` reads the outbox; queries read
  the chain. ``OutboxChainClient`` (client.py) implements it for any backend.
- ``ChainBackend``: one chain. It encodes and signs an intent for a given
  nonce *deterministically* (same intent, nonce and key: the same bytes, hence
  the same tx hash), sends raw bytes idempotently, reports a tx's status by
  hash, and answers the queries. ``BundledBackend`` (bundled.py) speaks the
  bundled validator's JSON-RPC; an EVM backend (web3.py) fits the same shape
  (docs/chain-client.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NewType, Protocol

from coincurve import PrivateKey

from gateway.validator.crypto import address_of

from .errors import ChainClientError, NoKey
from .intents import Action, Intent

SubmissionId = NewType("SubmissionId", str)

# outbox states
PENDING, SIGNED, SUBMITTED, FINAL, REJECTED = "pending", "signed", "submitted", "final", "rejected"
OutboxState = Literal["pending", "signed", "submitted", "final", "rejected"]
LIVE_STATES = (PENDING, SIGNED, SUBMITTED)

ChainTxState = Literal["unknown", "pending", "included", "final", "rejected"]


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    tx_hash: bytes
    nonce: int


@dataclass(frozen=True)
class ChainTxStatus:
    """A transaction as the chain sees it (``chain_getTransactionStatus``)."""
    status: ChainTxState
    height: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Receipt:
    """The outcome of a submission: ``status`` is ``final`` or ``rejected``."""
    id: SubmissionId
    status: Literal["final", "rejected"]
    tx_hash: bytes | None
    sender: bytes
    nonce: int | None
    height: int | None = None
    reason: str | None = None
    fill_id: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status == FINAL


@dataclass(frozen=True)
class SubmissionStatus:
    """An outbox row: where a submission is."""
    id: SubmissionId
    kind: str
    state: OutboxState
    sender: bytes
    nonce: int | None
    tx_hash: bytes | None
    height: int | None
    reason: str | None
    detail: str | None
    attempts: int

    def receipt(self, fill_id: bytes | None = None) -> Receipt | None:
        if self.state == "final" or self.state == "rejected":
            return Receipt(self.id, self.state, self.tx_hash, self.sender, self.nonce, self.height, self.reason,
                           fill_id)
        return None


@dataclass(frozen=True)
class EscrowInfo:
    """A fill's escrow on the chain (None from ``escrow`` once settled or if unknown)."""
    fill_id: bytes
    maker: bytes
    taker: bytes
    noia: int
    wh: int
    interval_start: int
    grid: bytes


class Keyring(Protocol):
    """The private keys of the accounts the gateway signs for (complex authority, households)."""

    def key_for(self, address: bytes) -> PrivateKey: ...


class StaticKeyring:
    """Keys held in memory (tests, demo); the wallet service provides the real one."""

    def __init__(self, keys: Iterable[PrivateKey]) -> None:
        self._keys = {address_of(k): k for k in keys}

    def key_for(self, address: bytes) -> PrivateKey:
        try:
            return self._keys[address]
        except KeyError:
            raise NoKey("no_key", f"no key for 0x{address.hex()}") from None


class ChainBackend(Protocol):
    """One chain, as the outbox needs it. All I/O methods may raise ``ChainUnavailable``."""

    @property
    def name(self) -> str:
        """Namespace of this chain in the outbox (e.g. ``metanoia:31337``, ``evm:1337``)."""
        ...

    @property
    def rejection_consumes_nonce(self) -> bool:
        """Does a tx rejected *in a block* use its nonce? True on EVM (a reverted tx is mined); False on the
        bundled chain (a tx dropped at block building is not applied). A refusal at intake never uses it."""
        ...

    def build(self, intent: Intent, nonce: int, key: PrivateKey) -> SignedTx:
        """Encode and sign deterministically (RFC 6979): same inputs, same bytes."""
        ...

    def fill_id(self, action: Action) -> bytes | None:
        """A fill's id (the order's EIP-712 digest), else None."""
        ...

    async def send(self, raw: bytes) -> bytes:
        """Submit raw bytes; returns the tx hash. Idempotent: a known tx returns its hash."""
        ...

    async def send_many(self, raws: Sequence[bytes]) -> list[bytes | ChainClientError]:
        ...

    async def tx_status(self, tx_hash: bytes) -> ChainTxStatus: ...

    async def nonce(self, address: bytes) -> int:
        """The next nonce the chain expects from ``address``: at least its applied state (the bundled node
        also counts the sender's pending run). The outbox reads it once per account, and to tell a stale
        ``bad_nonce`` (below it) from a future one."""
        ...

    async def balance(self, address: bytes) -> int: ...
    async def escrow(self, fill_id: bytes) -> EscrowInfo | None: ...
    async def block_number(self) -> int: ...
    async def finalized_number(self) -> int: ...
    async def aclose(self) -> None: ...


class ChainClient(Protocol):
    """What the gateway uses: exactly-once submission, finality, queries."""

    async def submit(self, intent: Intent) -> SubmissionId: ...
    async def wait_final(self, id: SubmissionId, timeout: float) -> Receipt: ...
    def status(self, id: SubmissionId) -> SubmissionStatus: ...
    async def balance(self, address: bytes) -> int: ...
    async def nonce(self, address: bytes) -> int: ...
    async def escrow(self, fill_id: bytes) -> EscrowInfo | None: ...
    async def block_number(self) -> int: ...
    async def finalized_number(self) -> int: ...
