"""Intents: what the gateway wants done on a chain, independent of any backend.

An ``Intent`` is an idempotency key, the sending account and an action. The
actions are the chain core's typed payloads (gateway/validator/tx.py), which
mean the same thing on the bundled chain and on the EVM exchange: transfer,
fill a signed EIP-712 order, cancel an order nonce, settle an interval's
fills, checkpoint a block, reclaim an unsettled fill's escrow after the
settle timeout; plus ``NonceFill``, a no-op that only consumes an
account nonce (the outbox's gap filler; each backend encodes it its own way).
A backend turns (intent, nonce, key) into signed bytes for its chain.

Intents are stored in the outbox as canonical JSON (``intent_to_json``), so a
restarted gateway re-signs exactly the same transaction; two intents are the
same when their canonical JSON is equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

from gateway.validator.order import SignedOrder
from gateway.validator.tx import Cancel, Checkpoint, Fill, Reclaim, Settlement, SettleBatch, Transfer

MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class NonceFill:
    """Consume one account nonce and nothing else (fills a gap left by a rejected tx)."""


Action = Union[Transfer, Fill, Cancel, SettleBatch, Checkpoint, Reclaim, NonceFill]

KIND_OF: dict[type, str] = {Transfer: "transfer", Fill: "fill", Cancel: "cancel", SettleBatch: "settle",
                            Checkpoint: "checkpoint", Reclaim: "reclaim", NonceFill: "nonce_fill"}


@dataclass(frozen=True)
class Intent:
    """``key``: the idempotency key (e.g. ``settle:{grid}:{interval}``, a fill id); it is the submission id."""
    key: str
    sender: bytes
    action: Action

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not 0 < len(self.key) <= MAX_KEY_LENGTH:
            raise ValueError(f"idempotency key must be a non-empty string of at most {MAX_KEY_LENGTH} characters")
        if not isinstance(self.sender, bytes) or len(self.sender) != 20:
            raise ValueError("sender must be a 20-byte address")
        if type(self.action) not in KIND_OF:
            raise TypeError(f"not an action: {self.action!r}")

    @property
    def kind(self) -> str:
        return KIND_OF[type(self.action)]


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _unhex(s: str) -> bytes:
    return bytes.fromhex(s[2:] if s.startswith("0x") else s)


def action_to_json(a: Action) -> dict[str, Any]:
    if isinstance(a, Transfer):
        return {"kind": "transfer", "to": _hex(a.to), "amount": str(a.amount)}
    if isinstance(a, Fill):
        return {"kind": "fill", "signed_order": _hex(a.signed_order.encode())}
    if isinstance(a, Cancel):
        return {"kind": "cancel", "order_nonce": str(a.order_nonce)}
    if isinstance(a, SettleBatch):
        return {"kind": "settle", "grid": _hex(a.grid), "interval_start": a.interval_start,
                "evidence_root": _hex(a.evidence_root),
                "entries": [[_hex(e.fill_id), e.delivered_wh, str(e.payment), str(e.refund)] for e in a.entries]}
    if isinstance(a, Checkpoint):
        return {"kind": "checkpoint", "height": a.height, "block_hash": _hex(a.block_hash),
                "state_root": _hex(a.state_root)}
    if isinstance(a, Reclaim):
        return {"kind": "reclaim", "fill_id": _hex(a.fill_id)}
    if isinstance(a, NonceFill):
        return {"kind": "nonce_fill"}
    raise TypeError(f"not an action: {a!r}")


def action_from_json(d: dict[str, Any]) -> Action:
    kind = d["kind"]
    if kind == "transfer":
        return Transfer(_unhex(d["to"]), int(d["amount"]))
    if kind == "fill":
        return Fill(SignedOrder.decode(_unhex(d["signed_order"])))
    if kind == "cancel":
        return Cancel(int(d["order_nonce"]))
    if kind == "settle":
        return SettleBatch(_unhex(d["grid"]), int(d["interval_start"]), _unhex(d["evidence_root"]),
                           tuple(Settlement(_unhex(f), int(w), int(p), int(r)) for f, w, p, r in d["entries"]))
    if kind == "checkpoint":
        return Checkpoint(int(d["height"]), _unhex(d["block_hash"]), _unhex(d["state_root"]))
    if kind == "reclaim":
        fid = _unhex(d["fill_id"])
        if len(fid) != 32:
            raise ValueError("a fill id is 32 bytes")
        return Reclaim(fid)
    if kind == "nonce_fill":
        return NonceFill()
    raise ValueError(f"unknown action kind {kind!r}")


def intent_to_json(i: Intent) -> str:
    """Canonical JSON (sorted keys, no spaces): equal intents give equal strings."""
    doc = {"key": i.key, "sender": _hex(i.sender), "action": action_to_json(i.action)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def intent_from_json(text: str) -> Intent:
    d = json.loads(text)
    return Intent(d["key"], _unhex(d["sender"]), action_from_json(d["action"]))
