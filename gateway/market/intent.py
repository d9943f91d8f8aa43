"""The intent format, defined once: what a maker posts to the Indexer.

EIP-712 typed data in the same domain as orders (``order.Domain``: name
"Metanoia Exchange", version, chain id, verifying contract), signed with the
maker's secp256k1 key::

    Intent(uint8 side,bytes32 grid,uint64 start,uint64 end,uint64 wh,uint256 price,
           string locator,uint64 expiry,address maker,uint256 nonce)
    UnsetIntent(address maker,uint256 nonce)

``side`` 0 = the maker sells energy, 1 = buys; ``grid`` = ``order.grid_id(name)``;
the delivery window is ``[start, end)`` in unix s; ``wh`` the energy on offer;
``price`` a hint in NOIA smallest units per Wh (the Peer's quote is what binds);
``locator`` the maker's Peer endpoint (http(s) URL); ``expiry`` unix s;
``nonce`` unique per maker. Digest = keccak256(0x19 0x01 || domainSeparator ||
hashStruct(intent)), exactly as for orders; the signature is r || s || v.

JSON form (the Indexer's JSON-RPC): ``{"side": "sell"|"buy", "grid": "0x" + 64 hex,
"start", "end", "wh", "expiry": integers, "price", "nonce": decimal strings (or
integers), "locator": string, "maker": "0x" address}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.validator.crypto import keccak256, parse_address, recover_address, to_checksum
from gateway.validator.errors import DecodeError
from gateway.validator.order import U64_MAX, U256_MAX, Domain

INTENT_TYPE = ("Intent(uint8 side,bytes32 grid,uint64 start,uint64 end,uint64 wh,uint256 price,"
               "string locator,uint64 expiry,address maker,uint256 nonce)")
UNSET_TYPE = "UnsetIntent(address maker,uint256 nonce)"
INTENT_TYPEHASH = keccak256(INTENT_TYPE.encode())
UNSET_TYPEHASH = keccak256(UNSET_TYPE.encode())
SIDES = {"sell": 0, "buy": 1}
MAX_LOCATOR_BYTES = 2048
FIELDS = ("side", "grid", "start", "end", "wh", "price", "locator", "expiry", "maker", "nonce")

BAD_INTENT = "bad_intent"


class IntentError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _u256(v: int) -> bytes:
    return v.to_bytes(32, "big")


def eip712_digest(domain: Domain, struct_hash: bytes) -> bytes:
    return keccak256(b"\x19\x01" + domain.separator + struct_hash)


@dataclass(frozen=True)
class Intent:
    side: str
    grid: bytes
    start: int
    end: int
    wh: int
    price: int
    locator: str
    expiry: int
    maker: bytes
    nonce: int

    def __post_init__(self) -> None:
        if not isinstance(self.side, str) or self.side not in SIDES:
            raise IntentError(BAD_INTENT, "side is 'sell' or 'buy'")
        if len(self.grid) != 32 or len(self.maker) != 20:
            raise IntentError(BAD_INTENT, "grid is 32 bytes, maker 20")
        for name in ("start", "end", "wh", "expiry"):
            v = getattr(self, name)
            if not 0 <= v <= U64_MAX:
                raise IntentError(BAD_INTENT, f"{name} out of uint64")
        if not 0 <= self.price <= U256_MAX or not 0 <= self.nonce <= U256_MAX:
            raise IntentError(BAD_INTENT, "price or nonce out of uint256")
        try:
            n = len(self.locator.encode("utf-8"))
        except (UnicodeEncodeError, AttributeError):
            raise IntentError(BAD_INTENT, "locator is not a UTF-8 string") from None
        if n > MAX_LOCATOR_BYTES:
            raise IntentError(BAD_INTENT, "locator too long")

    def struct_hash(self) -> bytes:
        return keccak256(b"".join((
            INTENT_TYPEHASH, _u256(SIDES[self.side]), self.grid, _u256(self.start), _u256(self.end),
            _u256(self.wh), _u256(self.price), keccak256(self.locator.encode("utf-8")), _u256(self.expiry),
            b"\x00" * 12 + self.maker, _u256(self.nonce))))

    def digest(self, domain: Domain) -> bytes:
        return eip712_digest(domain, self.struct_hash())

    def signer(self, domain: Domain, signature: bytes) -> bytes:
        """The address that signed this intent (raises DecodeError on a malformed signature)."""
        return recover_address(self.digest(domain), signature)

    def to_json(self) -> dict[str, Any]:
        return {"side": self.side, "grid": "0x" + self.grid.hex(), "start": self.start, "end": self.end,
                "wh": self.wh, "price": str(self.price), "locator": self.locator, "expiry": self.expiry,
                "maker": to_checksum(self.maker), "nonce": str(self.nonce)}

    @classmethod
    def from_json(cls, obj: Any) -> Intent:
        """Strict: exactly the fields, each of its type (``IntentError`` otherwise)."""
        if not isinstance(obj, dict) or set(obj) != set(FIELDS):
            raise IntentError(BAD_INTENT, f"an intent is an object with exactly {', '.join(FIELDS)}")
        side = obj["side"]
        if not isinstance(side, str) or side not in SIDES:
            raise IntentError(BAD_INTENT, "side is 'sell' or 'buy'")
        locator = obj["locator"]
        if not isinstance(locator, str):
            raise IntentError(BAD_INTENT, "locator is a string")
        try:
            maker = parse_address(obj["maker"])
        except (ValueError, TypeError):
            raise IntentError(BAD_INTENT, "maker is not an address") from None
        return cls(side=side, grid=hex_bytes(obj["grid"], 32, "grid"), start=json_int(obj["start"], "start"),
                   end=json_int(obj["end"], "end"), wh=json_int(obj["wh"], "wh"),
                   price=json_int(obj["price"], "price", True), locator=locator,
                   expiry=json_int(obj["expiry"], "expiry"), maker=maker,
                   nonce=json_int(obj["nonce"], "nonce", True))


def unset_digest(domain: Domain, maker: bytes, nonce: int) -> bytes:
    """What a maker signs to withdraw its intent ``nonce``."""
    return eip712_digest(domain, keccak256(UNSET_TYPEHASH + b"\x00" * 12 + maker + _u256(nonce)))


def json_int(v: Any, what: str, big: bool = False) -> int:
    """A non-negative JSON integer; for uint256 fields also a decimal string (<= 78 digits)."""
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif big and isinstance(v, str) and 0 < len(v) <= 78 and v.isascii() and v.isdigit():
        n = int(v)
    else:
        raise IntentError(BAD_INTENT, f"{what} is not a non-negative integer")
    if n < 0 or n > (U256_MAX if big else U64_MAX):
        raise IntentError(BAD_INTENT, f"{what} out of range")
    return n


def hex_bytes(v: Any, size: int, what: str) -> bytes:
    if not isinstance(v, str) or len(v) != 2 + 2 * size or not v.startswith("0x"):
        raise IntentError(BAD_INTENT, f"{what} is 0x + {2 * size} hex digits")
    try:
        return bytes.fromhex(v[2:])
    except ValueError:
        raise IntentError(BAD_INTENT, f"{what} is not hex") from None


def typed_data(intent: Intent, domain: Domain) -> dict[str, Any]:
    """The full EIP-712 JSON structure (wallets, eth-account)."""
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            "Intent": [{"name": "side", "type": "uint8"}, {"name": "grid", "type": "bytes32"},
                       {"name": "start", "type": "uint64"}, {"name": "end", "type": "uint64"},
                       {"name": "wh", "type": "uint64"}, {"name": "price", "type": "uint256"},
                       {"name": "locator", "type": "string"}, {"name": "expiry", "type": "uint64"},
                       {"name": "maker", "type": "address"}, {"name": "nonce", "type": "uint256"}],
        },
        "primaryType": "Intent",
        "domain": domain.typed_data_domain(),
        "message": {"side": SIDES[intent.side], "grid": intent.grid, "start": intent.start, "end": intent.end,
                    "wh": intent.wh, "price": intent.price, "locator": intent.locator, "expiry": intent.expiry,
                    "maker": to_checksum(intent.maker), "nonce": intent.nonce},
    }


__all__ = ["Intent", "IntentError", "DecodeError", "typed_data", "unset_digest", "INTENT_TYPE", "UNSET_TYPE"]
