"""Intents as EVM transactions, and revert data as the bundled chain's reason codes: pure functions.

Every action becomes one call, ABI-encoded from the deployment record's ABIs
(eth-abi, so the Solidity signatures are not restated here):

| action | call | gas limit (``GAS``, data) |
|---|---|---|
| ``Transfer(to, amount)`` | ``NoiaToken.transfer(to, amount)`` | ``transfer`` |
| ``Fill(signed order)`` | ``Exchange.fill(order, signature)`` (the sender is the taker) | ``fill`` |
| ``Cancel(order nonce)`` | ``Exchange.cancel(nonce)`` (the sender is the maker) | ``cancel`` |
| ``SettleBatch`` | ``Exchange.settleBatch(grid, start, root, entries)`` | ``settle`` + ``settle_entry`` x n |
| ``Reclaim(fill id)`` | ``Exchange.reclaim(fillId)`` | ``reclaim`` |
| ``NonceFill`` | a 0-value transfer of ether to the sender itself | 21,000 |

The transaction is EIP-1559 (type 2) with the nonce the outbox reserved, the
gas limit from ``GAS`` and the fee fields from configuration, signed by
eth-account (RFC 6979): the same intent, nonce, key and configuration give
the same bytes and the same hash, which is what the outbox's exactly-once
argument needs. Nothing here reads the chain (no gas estimation, no fee
oracle): an estimate taken at signing would make a re-sign differ.

Revert data: ``Rejected(string)`` (the exchange: the string *is* the reason
code), ``Error(string)`` (the token's ``require``: mapped by ``TOKEN_REASONS``),
``Panic(uint256)`` (``panic_0x..``); empty data is ``reverted`` (or
``out_of_gas`` when the tx used its whole gas limit). Data that fits none is
``reverted`` with a detail, never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from coincurve import PrivateKey
from eth_abi.abi import decode as abi_decode
from eth_account import Account

from gateway.evm.abi import AbiFunction
from gateway.validator import tx as chain_tx
from gateway.validator.crypto import keccak256, to_checksum
from gateway.validator.tx import Cancel, Checkpoint, Fill, SettleBatch, Transfer

from .errors import OutboxError
from .intents import Action, Intent, NonceFill

Reclaim: type | None = getattr(chain_tx, "Reclaim", None)  # the settle-timeout refund, where the chain core has it

# Gas limit per action, fixed at signing (measured on anvil with a margin; tests/evm/test_evm_backend.py
# checks every action's gas used stays below its limit).
GAS: dict[str, int] = {"transfer": 80_000, "fill": 260_000, "cancel": 60_000, "reclaim": 90_000,
                       "settle": 90_000, "settle_entry": 140_000, "nonce_fill": 21_000}

# The token's require() messages as the bundled chain's reason codes (contracts/NoiaToken.sol).
TOKEN_REASONS: dict[str, str] = {"insufficient balance": "insufficient_balance",
                                 "insufficient allowance": "insufficient_allowance",
                                 "zero recipient": "bad_field"}

ERROR_SELECTOR = keccak256(b"Error(string)")[:4]
PANIC_SELECTOR = keccak256(b"Panic(uint256)")[:4]
REJECTED_SELECTOR = keccak256(b"Rejected(string)")[:4]
REVERTED, OUT_OF_GAS, UNSUPPORTED_ACTION = "reverted", "out_of_gas", "unsupported_action"
_REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
MAX_REVERT_DATA = 4096


class UnsupportedAction(OutboxError):
    """An action this backend cannot express (a bundled-chain checkpoint: the EVM side anchors through
    the CheckpointRegistry with the authorities' signatures instead)."""


@dataclass(frozen=True)
class Fees:
    """EIP-1559 fee fields, fixed by configuration (wei)."""
    max_fee_per_gas: int = 100 * 10**9
    max_priority_fee_per_gas: int = 0


@dataclass(frozen=True)
class Contracts:
    """The two contracts of a deployment: addresses and their functions (from the ABIs)."""
    chain_id: int
    token: bytes
    exchange: bytes
    token_fns: dict[str, AbiFunction] = field(repr=False, compare=False)
    exchange_fns: dict[str, AbiFunction] = field(repr=False, compare=False)


def gas_limit(action: Action, gas: dict[str, int] = GAS) -> int:
    if isinstance(action, SettleBatch):
        return gas["settle"] + gas["settle_entry"] * len(action.entries)
    return gas[_kind(action)]


def _kind(action: Action) -> str:
    if isinstance(action, Transfer):
        return "transfer"
    if isinstance(action, Fill):
        return "fill"
    if isinstance(action, Cancel):
        return "cancel"
    if isinstance(action, SettleBatch):
        return "settle"
    if isinstance(action, NonceFill):
        return "nonce_fill"
    if Reclaim is not None and isinstance(action, Reclaim):
        return "reclaim"
    raise UnsupportedAction(UNSUPPORTED_ACTION, f"{type(action).__name__} has no EVM encoding")


def call_of(c: Contracts, intent: Intent) -> tuple[bytes, bytes]:
    """(to, calldata) for an intent's action."""
    a = intent.action
    if isinstance(a, Transfer):
        return c.token, c.token_fns["transfer"].call_data(to_checksum(a.to), a.amount)
    if isinstance(a, Fill):
        o = a.signed_order.order
        order = (o.nonce, o.expiry, to_checksum(o.maker), to_checksum(o.taker), o.wh, o.interval_start, o.noia,
                 o.grid)
        return c.exchange, c.exchange_fns["fill"].call_data(order, a.signed_order.signature)
    if isinstance(a, Cancel):
        return c.exchange, c.exchange_fns["cancel"].call_data(a.order_nonce)
    if isinstance(a, SettleBatch):
        entries = [(e.fill_id, e.delivered_wh, e.payment, e.refund) for e in a.entries]
        return c.exchange, c.exchange_fns["settleBatch"].call_data(a.grid, a.interval_start, a.evidence_root,
                                                                   entries)
    if isinstance(a, NonceFill):
        return intent.sender, b""
    if Reclaim is not None and isinstance(a, Reclaim):
        return c.exchange, c.exchange_fns["reclaim"].call_data(getattr(a, "fill_id"))
    if isinstance(a, Checkpoint):
        raise UnsupportedAction(UNSUPPORTED_ACTION, "checkpoints go to the CheckpointRegistry, not the exchange")
    raise UnsupportedAction(UNSUPPORTED_ACTION, f"{type(a).__name__} has no EVM encoding")


def sign(c: Contracts, intent: Intent, nonce: int, key: PrivateKey, fees: Fees,
         gas: dict[str, int] = GAS) -> tuple[bytes, bytes]:
    """(raw signed bytes, tx hash): deterministic in (intent, nonce, key, fees, gas table)."""
    to, data = call_of(c, intent)
    return sign_call(key, chain_id=c.chain_id, nonce=nonce, to=to, data=data, gas=gas_limit(intent.action, gas),
                     fees=fees)


def sign_call(key: PrivateKey | bytes, *, chain_id: int, nonce: int, to: bytes | None, data: bytes, gas: int,
              fees: Fees, value: int = 0) -> tuple[bytes, bytes]:
    """(raw signed bytes, tx hash) of an EIP-1559 (type 2) tx calling ``to`` (None: a contract creation).

    The one way this project signs an EVM tx (the chain client, the anchoring relayer, the deployers).
    RFC 6979: the same arguments give the same bytes, so a caller that stores the bytes before sending
    can resend exactly them after a crash (same hash, same nonce: at most one is ever mined)."""
    tx: dict[str, object] = {"type": 2, "chainId": chain_id, "nonce": nonce, "value": value, "data": data,
                             "gas": gas, "maxFeePerGas": fees.max_fee_per_gas,
                             "maxPriorityFeePerGas": fees.max_priority_fee_per_gas, "accessList": []}
    if to is not None:
        tx["to"] = to_checksum(to)
    signed = Account.sign_transaction(tx, key.secret if isinstance(key, PrivateKey) else key)
    raw = bytes(signed.raw_transaction)
    return raw, keccak256(raw)


def revert_data_of(error_data: object) -> bytes:
    """The revert data in a JSON-RPC error's ``data`` (anvil, geth and Besu put the hex there, or under
    ``data`` / ``result`` in an object); empty when there is none or it is not hex."""
    if isinstance(error_data, dict):
        error_data = error_data.get("data", error_data.get("result"))
    if not isinstance(error_data, str) or not error_data.startswith(("0x", "0X")):
        return b""
    try:
        return bytes.fromhex(error_data[2:])
    except ValueError:
        return b""


def revert_reason(data: bytes, *, used_all_gas: bool = False) -> tuple[str, str]:
    """(reason code, detail) from a reverted call's return data; never raises."""
    if not data:
        return (OUT_OF_GAS, "used its whole gas limit") if used_all_gas else (REVERTED, "no revert data")
    if len(data) > MAX_REVERT_DATA:
        return REVERTED, f"revert data of {len(data)} bytes (over {MAX_REVERT_DATA})"
    sel, body = data[:4], data[4:]
    if sel in (REJECTED_SELECTOR, ERROR_SELECTOR):
        try:
            (text,) = abi_decode(["string"], body, strict=True)
        except Exception as exc:  # eth-abi raises several types for malformed data
            return REVERTED, f"malformed {'Rejected' if sel == REJECTED_SELECTOR else 'Error'}(string): {exc}"[:300]
        if sel == REJECTED_SELECTOR:
            if _REASON_CODE.match(text):
                return text, "Rejected"
            return REVERTED, f"Rejected with a reason that is not a reason code: {text[:80]!r}"
        mapped = TOKEN_REASONS.get(text)
        return (mapped, f"Error({text!r})") if mapped else (REVERTED, f"Error({text[:120]!r})")
    if sel == PANIC_SELECTOR:
        try:
            (code,) = abi_decode(["uint256"], body, strict=True)
        except Exception as exc:
            return REVERTED, f"malformed Panic(uint256): {exc}"[:300]
        return f"panic_0x{code:02x}" if code < 256 else REVERTED, f"Panic({code})"
    return REVERTED, f"unknown revert data 0x{data[:36].hex()}"
