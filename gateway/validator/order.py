"""The order format, defined once: EIP-712 typed data signed with secp256k1.

The same signed order is accepted by the bundled chain's ``fill`` and by the
Solidity exchange of the EVM backend, so the Solidity types are fixed here::

    EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
    Order(uint256 nonce,uint64 expiry,address maker,address taker,uint64 wh,
          uint64 intervalStart,uint256 noia,bytes32 grid)

``taker`` 0x00..00 means anyone may fill. ``wh`` is the energy the maker sells
for the delivery interval starting at ``intervalStart`` (unix s); ``noia`` is
the price in the token's smallest unit; ``grid`` is keccak-256 of the grid's
name (``grid_id``). Digest = keccak256(0x19 0x01 || domainSeparator ||
hashStruct(order)); the signature is the usual 65 bytes r || s || v.

Binary layout inside a fill transaction (160 bytes, big-endian, fixed):
nonce 32 | expiry 8 | maker 20 | taker 20 | wh 8 | intervalStart 8 | noia 32 | grid 32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

from coincurve import PrivateKey

from .crypto import ZERO_ADDRESS, keccak256, recover_address, sign_digest, to_checksum
from .errors import BAD_FIELD, TRUNCATED, DecodeError

DOMAIN_NAME = "Metanoia Exchange"
DOMAIN_VERSION = "1"
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
ORDER_TYPE = ("Order(uint256 nonce,uint64 expiry,address maker,address taker,uint64 wh,"
              "uint64 intervalStart,uint256 noia,bytes32 grid)")
DOMAIN_TYPEHASH = keccak256(DOMAIN_TYPE.encode())
ORDER_TYPEHASH = keccak256(ORDER_TYPE.encode())

ORDER_SIZE = 160
SIGNED_ORDER_SIZE = ORDER_SIZE + 65
U64_MAX = (1 << 64) - 1
U256_MAX = (1 << 256) - 1
_PAD12 = b"\x00" * 12
_PAD24 = b"\x00" * 24
_U64 = struct.Struct(">Q")


def grid_id(name: str) -> bytes:
    """A grid's bytes32 id: keccak-256 of its UTF-8 name."""
    return keccak256(name.encode("utf-8"))


@dataclass(frozen=True)
class Domain:
    """An EIP-712 domain {name, version, chainId, verifyingContract}; the exchange's by
    default. Other signed types (checkpoints) subclass it with their own NAME."""

    NAME: ClassVar[str] = DOMAIN_NAME
    VERSION: ClassVar[str] = DOMAIN_VERSION
    chain_id: int
    verifying_contract: bytes
    separator: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.chain_id <= U64_MAX or len(self.verifying_contract) != 20:
            raise ValueError("domain needs 0 < chain_id < 2**64 and a 20-byte contract address")
        sep = keccak256(DOMAIN_TYPEHASH + keccak256(self.NAME.encode()) + keccak256(self.VERSION.encode())
                        + self.chain_id.to_bytes(32, "big") + _PAD12 + self.verifying_contract)
        object.__setattr__(self, "separator", sep)

    def typed_data_domain(self) -> dict[str, Any]:
        return {"name": self.NAME, "version": self.VERSION, "chainId": self.chain_id,
                "verifyingContract": to_checksum(self.verifying_contract)}


@dataclass(frozen=True)
class Order:
    nonce: int
    expiry: int
    maker: bytes
    taker: bytes
    wh: int
    interval_start: int
    noia: int
    grid: bytes

    def __post_init__(self) -> None:
        if not (0 <= self.nonce <= U256_MAX and 0 <= self.noia <= U256_MAX and 0 <= self.expiry <= U64_MAX
                and 0 <= self.wh <= U64_MAX and 0 <= self.interval_start <= U64_MAX):
            raise ValueError("order integer out of its Solidity type's range")
        if len(self.maker) != 20 or len(self.taker) != 20 or len(self.grid) != 32:
            raise ValueError("maker/taker are 20 bytes, grid is 32")

    @property
    def open_taker(self) -> bool:
        return self.taker == ZERO_ADDRESS

    def struct_hash(self) -> bytes:
        return keccak256(b"".join((
            ORDER_TYPEHASH, self.nonce.to_bytes(32, "big"), _PAD24, _U64.pack(self.expiry),
            _PAD12, self.maker, _PAD12, self.taker, _PAD24, _U64.pack(self.wh),
            _PAD24, _U64.pack(self.interval_start), self.noia.to_bytes(32, "big"), self.grid)))

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest the maker signs; also the fill id on every backend."""
        return keccak256(b"\x19\x01" + domain.separator + self.struct_hash())

    def encode(self) -> bytes:
        return b"".join((self.nonce.to_bytes(32, "big"), _U64.pack(self.expiry), self.maker, self.taker,
                         _U64.pack(self.wh), _U64.pack(self.interval_start), self.noia.to_bytes(32, "big"),
                         self.grid))

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Order:
        if len(data) < ORDER_SIZE:
            raise DecodeError(TRUNCATED, "order shorter than 160 bytes")
        b = bytes(data[:ORDER_SIZE])
        maker = b[40:60]
        if maker == ZERO_ADDRESS:
            raise DecodeError(BAD_FIELD, "order maker is the zero address")
        return cls(nonce=int.from_bytes(b[0:32], "big"), expiry=_U64.unpack_from(b, 32)[0], maker=maker,
                   taker=b[60:80], wh=_U64.unpack_from(b, 80)[0], interval_start=_U64.unpack_from(b, 88)[0],
                   noia=int.from_bytes(b[96:128], "big"), grid=b[128:160])

    def typed_data_message(self) -> dict[str, Any]:
        """The message as eth-account / wallets take it (``encode_typed_data(full_message=...)``)."""
        return {"nonce": self.nonce, "expiry": self.expiry, "maker": to_checksum(self.maker),
                "taker": to_checksum(self.taker), "wh": self.wh, "intervalStart": self.interval_start,
                "noia": self.noia, "grid": self.grid}


def typed_data(order: Order, domain: Domain) -> dict[str, Any]:
    """The full EIP-712 JSON structure (for wallets, eth-account and the Peer protocol)."""
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            "Order": [{"name": "nonce", "type": "uint256"}, {"name": "expiry", "type": "uint64"},
                      {"name": "maker", "type": "address"}, {"name": "taker", "type": "address"},
                      {"name": "wh", "type": "uint64"}, {"name": "intervalStart", "type": "uint64"},
                      {"name": "noia", "type": "uint256"}, {"name": "grid", "type": "bytes32"}],
        },
        "primaryType": "Order",
        "domain": domain.typed_data_domain(),
        "message": order.typed_data_message(),
    }


@dataclass(frozen=True)
class SignedOrder:
    order: Order
    signature: bytes  # r || s || v

    def encode(self) -> bytes:
        return self.order.encode() + self.signature

    @classmethod
    def decode(cls, data: bytes | memoryview) -> SignedOrder:
        if len(data) < SIGNED_ORDER_SIZE:
            raise DecodeError(TRUNCATED, "signed order shorter than 225 bytes")
        return cls(Order.decode(data), bytes(data[ORDER_SIZE:SIGNED_ORDER_SIZE]))


def sign_order(order: Order, domain: Domain, key: PrivateKey) -> SignedOrder:
    return SignedOrder(order, sign_digest(key, order.digest(domain)))


def order_signer(signed: SignedOrder, domain: Domain) -> tuple[bytes, bytes]:
    """(recovered signer, digest); raises DecodeError on a malformed signature."""
    digest = signed.order.digest(domain)
    return recover_address(digest, signed.signature), digest
