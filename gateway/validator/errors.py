"""The chain core's exceptions: one hierarchy, each error carries a reason code.

Reason codes are stable strings (counted by the node, returned over JSON-RPC,
compared by the differential test against the EVM exchange). Every code listed
here is reachable; tests/gateway/validator/ shows each one.
"""

from __future__ import annotations


class ChainError(Exception):
    """Base class: ``reason`` is a stable machine-readable code, ``detail`` prose."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)  # args round-trip through pickle (process pools)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class DecodeError(ChainError):
    """Bytes that are not a well-formed, correctly signed object of the format."""


class TxRejected(ChainError):
    """A well-formed transaction that the current state does not allow."""


class BlockInvalid(ChainError):
    """A block that must not be accepted (``index``: the offending tx, if any)."""

    def __init__(self, reason: str, detail: str = "", index: int | None = None) -> None:
        super().__init__(reason, detail)
        self.args = (reason, detail, index)
        self.index = index


class GenesisError(ChainError):
    """A genesis file that cannot define a chain."""


class StorageError(ChainError):
    """The store cannot do what was asked (unknown parent, inconsistent root...)."""


# DecodeError reasons (format level: no state needed)
TOO_LARGE = "too_large"            # over the size cap
TRUNCATED = "truncated"            # shorter than its layout needs
BAD_LENGTH = "bad_length"          # trailing bytes / length fields that disagree
UNKNOWN_TYPE = "unknown_type"      # type byte not defined
BAD_FIELD = "bad_field"            # a field out of its domain (zero address, count 0, ...)
NON_CANONICAL = "non_canonical"    # a second encoding of the same content (unsorted batch)
BAD_SIGNATURE = "bad_signature"    # v not 27/28, r or s out of range, recovery failed
HIGH_S = "high_s"                  # s > n/2 (Ethereum's malleability rule)
WRONG_CHAIN_ID = "wrong_chain_id"
SIGNER_MISMATCH = "signer_mismatch"        # recovered address != declared sender
ORDER_BAD_SIGNATURE = "order_bad_signature"  # the maker's EIP-712 signature does not recover to maker

# TxRejected reasons (state level)
BAD_NONCE = "bad_nonce"
INSUFFICIENT_BALANCE = "insufficient_balance"
ZERO_AMOUNT = "zero_amount"
ORDER_EXPIRED = "order_expired"
ORDER_TAKER_MISMATCH = "order_taker_mismatch"
ORDER_ALREADY_FILLED = "order_already_filled"
ORDER_CANCELLED = "order_cancelled"
SELF_FILL = "self_fill"
NOT_AUTHORITY = "not_authority"
UNKNOWN_FILL = "unknown_fill"
FILL_ALREADY_SETTLED = "fill_already_settled"
SETTLE_AMOUNT_MISMATCH = "settle_amount_mismatch"    # payment + refund != escrow
DELIVERED_EXCEEDS_ORDER = "delivered_exceeds_order"
INTERVAL_MISMATCH = "interval_mismatch"
GRID_MISMATCH = "grid_mismatch"
INTERVAL_NOT_OVER = "interval_not_over"
EVIDENCE_ROOT_CONFLICT = "evidence_root_conflict"
CHECKPOINT_UNKNOWN_BLOCK = "checkpoint_unknown_block"
CHECKPOINT_NOT_MONOTONIC = "checkpoint_not_monotonic"
FILL_RECLAIMED = "fill_reclaimed"        # the fill's escrow went back to its taker (reclaim): no settle, no 2nd reclaim
RECLAIM_TOO_EARLY = "reclaim_too_early"  # block time < interval end + settle_timeout

# BlockInvalid reasons
TX_REJECTED = "tx_rejected"
TX_ROOT_MISMATCH = "tx_root_mismatch"
STATE_ROOT_MISMATCH = "state_root_mismatch"
BAD_HEADER = "bad_header"
