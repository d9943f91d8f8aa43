"""The side-chain checkpoint, defined once: EIP-712 typed data signed by the side chain's authorities.

The Solidity ``CheckpointRegistry`` (contracts/CheckpointRegistry.sol) accepts a checkpoint signed by
strictly more than two thirds of the authorities (the genesis's ``authorities``)::

    EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
      name "Metanoia Checkpoints", version "1", chainId = the EVM (main) chain, verifyingContract = registry
    Checkpoint(bytes32 genesisHash,uint64 height,bytes32 blockHash,bytes32 stateRoot)

``genesisHash`` (``Genesis.hash()``) names the side chain; ``blockHash`` and ``stateRoot`` are those of
the side chain's block at ``height`` (the bundled chain's checkpoint transaction, docs/chain.md).
Digest = keccak256(0x19 0x01 || domainSeparator || hashStruct(checkpoint)); signatures are 65 bytes
r || s || v (low s, v 27/28), and ``submit`` takes them ordered by signer address, ascending.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

from coincurve import PrivateKey

from .crypto import address_of, keccak256, recover_address, sign_digest
from .order import Domain, U64_MAX

DOMAIN_NAME = "Metanoia Checkpoints"
DOMAIN_VERSION = "1"
CHECKPOINT_TYPE = "Checkpoint(bytes32 genesisHash,uint64 height,bytes32 blockHash,bytes32 stateRoot)"
CHECKPOINT_TYPEHASH = keccak256(CHECKPOINT_TYPE.encode())

_PAD24 = b"\x00" * 24
_U64 = struct.Struct(">Q")


def threshold(authorities: int) -> int:
    """Signatures needed out of ``authorities``: the least k with 3k > 2n."""
    return 2 * authorities // 3 + 1


class CheckpointDomain(Domain):
    """The registry's domain: chain_id = the EVM chain it lives on, verifying_contract = the registry."""

    NAME: ClassVar[str] = DOMAIN_NAME
    VERSION: ClassVar[str] = DOMAIN_VERSION


@dataclass(frozen=True)
class Checkpoint:
    genesis_hash: bytes
    height: int
    block_hash: bytes
    state_root: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.height <= U64_MAX:
            raise ValueError("height is a uint64")
        if len(self.genesis_hash) != 32 or len(self.block_hash) != 32 or len(self.state_root) != 32:
            raise ValueError("genesis hash, block hash and state root are 32 bytes")

    def struct_hash(self) -> bytes:
        return keccak256(CHECKPOINT_TYPEHASH + self.genesis_hash + _PAD24 + _U64.pack(self.height)
                         + self.block_hash + self.state_root)

    def digest(self, domain: CheckpointDomain) -> bytes:
        return keccak256(b"\x19\x01" + domain.separator + self.struct_hash())

    def as_tuple(self) -> tuple[bytes, int, bytes, bytes]:
        """The Solidity struct as web3 / eth-abi take it."""
        return (self.genesis_hash, self.height, self.block_hash, self.state_root)

    def typed_data_message(self) -> dict[str, Any]:
        return {"genesisHash": self.genesis_hash, "height": self.height, "blockHash": self.block_hash,
                "stateRoot": self.state_root}


def typed_data(cp: Checkpoint, domain: CheckpointDomain) -> dict[str, Any]:
    """The full EIP-712 JSON structure (for wallets and eth-account)."""
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            "Checkpoint": [{"name": "genesisHash", "type": "bytes32"}, {"name": "height", "type": "uint64"},
                           {"name": "blockHash", "type": "bytes32"}, {"name": "stateRoot", "type": "bytes32"}],
        },
        "primaryType": "Checkpoint",
        "domain": domain.typed_data_domain(),
        "message": cp.typed_data_message(),
    }


def sign_checkpoint(cp: Checkpoint, domain: CheckpointDomain, key: PrivateKey) -> bytes:
    return sign_digest(key, cp.digest(domain))


def checkpoint_signer(cp: Checkpoint, domain: CheckpointDomain, signature: bytes) -> bytes:
    """The address that signed; raises DecodeError on a malformed or high-s signature."""
    return recover_address(cp.digest(domain), signature)


def sign_by_all(cp: Checkpoint, domain: CheckpointDomain, keys: Iterable[PrivateKey]) -> list[bytes]:
    """Signatures of ``keys``, ordered by signer address ascending (what ``submit`` takes)."""
    return [sign_checkpoint(cp, domain, k) for k in sorted(keys, key=address_of)]
