"""The chain client's exceptions: one small hierarchy, each error carries a reason code.

``ChainClientError(reason, detail)``
  - ``ChainUnavailable``: the node could not be reached or answered garbage at
    the transport level (connection refused, timeout, HTTP 5xx). Transient: the
    outbox keeps the transaction and retries with backoff.
  - ``RpcError(code, message, data)``: the node answered with a JSON-RPC 2.0
    error object. Its subclasses are chosen by the error's ``data.reason`` (the
    chain core's stable reason codes, gateway/validator/errors.py), falling back
    on the JSON-RPC code:
      - ``TxInvalid``: the bytes are not a well-formed, correctly signed tx of
        this chain (decode-level reasons: bad_signature, wrong_chain_id, ...).
      - ``TxRejected``: a well-formed tx the state does not allow
        (insufficient_balance, order_already_filled, ...; any other -32000
        "rejected" too).
      - ``NonceError`` (a ``TxRejected`` with reason ``bad_nonce``): the
        outbox decides between "stale" and "not yet" by reading the chain's nonce.
      - ``NodeBusy``: mempool_full, sender_limit, nonce_in_use (or any -32001
        "unavailable"): not now, later.
      - ``MethodNotFound``, ``InvalidParams``, ``InvalidRequest``, ``ParseError``,
        ``InternalError``: the JSON-RPC 2.0 reserved codes.
  - ``FinalityTimeout``: ``wait_final`` gave up (the submission goes on).
  - ``OutboxError``: misuse of the outbox: ``IntentConflict`` (an idempotency
    key reused for a different intent), ``UnknownSubmission``, ``NoKey``.
"""

from __future__ import annotations

from typing import Any

from gateway.jsonrpc import INTERNAL as INTERNAL_ERROR
from gateway.jsonrpc import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR
from gateway.validator import errors as E
from gateway.validator.mempool import MEMPOOL_FULL, NONCE_IN_USE, SENDER_LIMIT
from gateway.validator.rpc import REJECTED as REJECTED_CODE        # the chain refuses the tx; data.reason says why
from gateway.validator.rpc import UNAVAILABLE as UNAVAILABLE_CODE  # not now (mempool_full, sender_limit)

# client-side reason codes (chain reason codes come from gateway/validator/errors.py and mempool.py)
UNAVAILABLE = "unavailable"
TIMEOUT = "timeout"
BAD_RESPONSE = "bad_response"
SUPERSEDED = "superseded"          # another tx with the same (sender, nonce) applied instead
BUSY_REASONS = frozenset({MEMPOOL_FULL, SENDER_LIMIT, NONCE_IN_USE})   # the node's "not now"
INTENT_CONFLICT = "intent_conflict"
UNKNOWN_SUBMISSION = "unknown_submission"
NO_KEY = "no_key"

DECODE_REASONS = frozenset({E.TOO_LARGE, E.TRUNCATED, E.BAD_LENGTH, E.UNKNOWN_TYPE, E.BAD_FIELD, E.NON_CANONICAL,
                            E.BAD_SIGNATURE, E.HIGH_S, E.WRONG_CHAIN_ID, E.SIGNER_MISMATCH,
                            E.ORDER_BAD_SIGNATURE})


class ChainClientError(Exception):
    """Base class: ``reason`` is a stable machine-readable code, ``detail`` prose."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class ChainUnavailable(ChainClientError):
    """Transport failure: retry later (the outbox does, with backoff)."""


class FinalityTimeout(ChainClientError):
    """``wait_final`` timed out; the submission is still being followed."""


class OutboxError(ChainClientError):
    """The outbox was asked for something it must refuse."""


class IntentConflict(OutboxError):
    """The idempotency key is already recorded with a different intent."""


class UnknownSubmission(OutboxError):
    """No submission with this id."""


class NoKey(OutboxError):
    """The keyring holds no key for the intent's sender."""


class RpcError(ChainClientError):
    """A JSON-RPC 2.0 error object from the node."""

    def __init__(self, code: int, message: str, data: Any = None, reason: str | None = None) -> None:
        super().__init__(reason or _reason_of(code, message, data), message)
        self.args = (code, message, data, reason)
        self.code = code
        self.message = message
        self.data = data


class ParseError(RpcError):
    pass


class InvalidRequest(RpcError):
    pass


class MethodNotFound(RpcError):
    pass


class InvalidParams(RpcError):
    pass


class InternalError(RpcError):
    pass


class TxInvalid(RpcError):
    """Decode-level: the bytes can never be a valid tx of this chain."""


class TxRejected(RpcError):
    """State-level: the chain's rules refuse the tx now."""


class NonceError(TxRejected):
    """``bad_nonce``: the tx's nonce is not the account's next one."""


class NodeBusy(RpcError):
    """The node cannot take the tx now (mempool full, sender limit, another pending tx holds its nonce):
    nothing is wrong with the tx; send it again later."""


_BY_CODE: dict[int, type[RpcError]] = {PARSE_ERROR: ParseError, INVALID_REQUEST: InvalidRequest,
                                       METHOD_NOT_FOUND: MethodNotFound, INVALID_PARAMS: InvalidParams,
                                       INTERNAL_ERROR: InternalError}
_REASON_NAMES = {E.BAD_NONCE, E.INSUFFICIENT_BALANCE, E.ZERO_AMOUNT, E.ORDER_EXPIRED, E.ORDER_TAKER_MISMATCH,
                 E.ORDER_ALREADY_FILLED, E.ORDER_CANCELLED, E.SELF_FILL, E.NOT_AUTHORITY, E.UNKNOWN_FILL,
                 E.FILL_ALREADY_SETTLED, E.SETTLE_AMOUNT_MISMATCH, E.DELIVERED_EXCEEDS_ORDER, E.INTERVAL_MISMATCH,
                 E.GRID_MISMATCH, E.INTERVAL_NOT_OVER, E.EVIDENCE_ROOT_CONFLICT, E.CHECKPOINT_UNKNOWN_BLOCK,
                 E.CHECKPOINT_NOT_MONOTONIC, E.FILL_RECLAIMED, E.RECLAIM_TOO_EARLY} | DECODE_REASONS | BUSY_REASONS


def _reason_of(code: int, message: str, data: Any) -> str:
    """The chain reason code carried by an error object, else a name for the JSON-RPC code.

    Looked for in ``data.reason``, then ``data`` as a string, then the message's
    ``reason: detail`` prefix (ChainError's str form).
    """
    if isinstance(data, dict) and isinstance(data.get("reason"), str):
        return str(data["reason"])
    if isinstance(data, str) and data in _REASON_NAMES:
        return data
    head = message.split(":", 1)[0].strip() if isinstance(message, str) else ""
    if head in _REASON_NAMES:
        return head
    return {PARSE_ERROR: "parse_error", INVALID_REQUEST: "invalid_request", METHOD_NOT_FOUND: "method_not_found",
            INVALID_PARAMS: "invalid_params", INTERNAL_ERROR: "internal_error"}.get(code, f"rpc_error_{code}")


def rpc_error(code: int, message: str, data: Any = None) -> RpcError:
    """The most specific exception for a JSON-RPC error object."""
    reason = _reason_of(code, message, data)
    if reason == E.BAD_NONCE:
        return NonceError(code, message, data, reason)
    if reason in BUSY_REASONS:
        return NodeBusy(code, message, data, reason)
    if reason in DECODE_REASONS:
        return TxInvalid(code, message, data, reason)
    if reason in _REASON_NAMES or code == REJECTED_CODE:  # a reason this client does not know: still refused
        return TxRejected(code, message, data, reason)
    if code == UNAVAILABLE_CODE:
        return NodeBusy(code, message, data, reason)
    return _BY_CODE.get(code, RpcError)(code, message, data, reason)
