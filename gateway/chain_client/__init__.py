"""The gateway's chain client: one interface, exactly-once submission, several backends.

- ``api``: ``ChainClient`` (what the gateway uses) and ``ChainBackend`` (one
  chain) protocols, ``Receipt``, ``SubmissionStatus``, ``Keyring``
- ``intents``: ``Intent(key, sender, action)``; actions are the chain core's
  typed payloads plus ``NonceFill``; canonical JSON for the outbox
- ``outbox``: the SQLite outbox (intents, reserved nonces, signed bytes, states)
- ``client``: ``OutboxChainClient``: submit / follow / resubmit / wait_final
- ``bundled``: ``BundledBackend``, the bundled validator over JSON-RPC
- ``rpc``: the JSON-RPC 2.0 HTTP client; ``errors``: the exception hierarchy

See docs/chain-client.md.
"""

from __future__ import annotations

from .api import (FINAL, PENDING, REJECTED, SIGNED, SUBMITTED, ChainBackend, ChainClient, ChainTxStatus, EscrowInfo,
                  Keyring, Receipt, SignedTx, StaticKeyring, SubmissionId, SubmissionStatus)
from .bundled import BundledBackend, filler_order_nonce
from .client import ClientConfig, OutboxChainClient, filler_intent
from .errors import (ChainClientError, ChainUnavailable, FinalityTimeout, IntentConflict, NodeBusy, NoKey,
                     NonceError, OutboxError, RpcError, TxInvalid, TxRejected, UnknownSubmission)
from .intents import Action, Intent, NonceFill
from .outbox import Outbox, OutboxRow

__all__ = [
    "FINAL", "PENDING", "REJECTED", "SIGNED", "SUBMITTED", "Action", "BundledBackend", "ChainBackend",
    "ChainClient", "ChainClientError", "ChainTxStatus", "ChainUnavailable", "ClientConfig", "EscrowInfo",
    "FinalityTimeout", "Intent", "IntentConflict", "Keyring", "NoKey", "NodeBusy", "NonceError", "NonceFill", "Outbox",
    "OutboxChainClient", "OutboxError", "OutboxRow", "Receipt", "RpcError", "SignedTx", "StaticKeyring",
    "SubmissionId", "SubmissionStatus", "TxInvalid", "TxRejected", "UnknownSubmission", "filler_intent",
    "filler_order_nonce",
]
