"""The CheckpointRegistry (contracts/CheckpointRegistry.sol) as the relayer and the verifier use it.

The signatures below are the contract's ABI as data, so neither needs the compiler at run time;
tests/anchor/test_registry_abi.py checks each one against the compiled ABI so they cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode

from gateway.chain_client.errors import ChainClientError
from gateway.validator.checkpoint import Checkpoint, CheckpointDomain
from gateway.validator.crypto import keccak256

from .errors import BAD_RESPONSE, AnchorError
from .evm import EvmRpc

CHECKPOINT_TUPLE = "(bytes32,uint64,bytes32,bytes32)"
FUNCTIONS: dict[str, tuple[str, tuple[str, ...]]] = {   # name: (signature, return types)
    "genesisHash": ("genesisHash()", ("bytes32",)),
    "authorities": ("authorities()", ("address[]",)),
    "threshold": ("threshold()", ("uint256",)),
    "latest": ("latest()", ("uint64", "bytes32", "bytes32")),
    "checkpointAt": ("checkpointAt(uint64)", ("bytes32", "bytes32")),
    "submit": (f"submit({CHECKPOINT_TUPLE},bytes[])", ()),
}
SUBMITTED_EVENT = "CheckpointSubmitted(uint64,bytes32,bytes32,address,uint256)"
SUBMITTED_TOPIC = keccak256(SUBMITTED_EVENT.encode())


def selector(name: str) -> bytes:
    return keccak256(FUNCTIONS[name][0].encode())[:4]


def _args(sig: str) -> list[str]:
    inner = sig[sig.index("(") + 1:-1]
    out, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    return out + [cur] if cur else out


def calldata(name: str, *args: Any) -> bytes:
    return selector(name) + abi_encode(_args(FUNCTIONS[name][0]), list(args))


def submit_calldata(cp: Checkpoint, signatures: list[bytes]) -> bytes:
    return calldata("submit", cp.as_tuple(), signatures)


@dataclass(frozen=True)
class Anchored:
    """A checkpoint as the registry holds it."""
    height: int
    block_hash: bytes
    state_root: bytes


class Registry:
    """Read the registry and encode its ``submit``; sending is the relayer's (it journals the bytes)."""

    def __init__(self, evm: EvmRpc, address: bytes) -> None:
        self.evm = evm
        self.address = address

    async def _view(self, name: str, *args: Any) -> tuple[Any, ...]:
        out = await self.evm.call(self.address, calldata(name, *args))
        try:
            return tuple(abi_decode(list(FUNCTIONS[name][1]), out))
        except Exception as exc:
            raise AnchorError(BAD_RESPONSE, f"registry {name}(): {exc} (is 0x{self.address.hex()} a registry?)") \
                from None

    async def domain(self) -> CheckpointDomain:
        return CheckpointDomain(await self.evm.chain_id(), self.address)

    async def genesis_hash(self) -> bytes:
        return bytes((await self._view("genesisHash"))[0])

    async def authorities(self) -> list[bytes]:
        return [bytes.fromhex(a[2:]) for a in (await self._view("authorities"))[0]]

    async def latest(self) -> Anchored:
        h, bh, sr = await self._view("latest")
        return Anchored(int(h), bytes(bh), bytes(sr))

    async def at(self, height: int) -> Anchored | None:
        bh, sr = await self._view("checkpointAt", height)
        return None if bytes(bh) == b"\x00" * 32 else Anchored(height, bytes(bh), bytes(sr))

    async def anchored_heights(self, from_block: int = 0) -> list[int]:
        """Heights from the ``CheckpointSubmitted`` logs (an index only: callers confirm with ``at``)."""
        out = []
        for log in await self.evm.logs(self.address, SUBMITTED_TOPIC, from_block):
            topics = log.get("topics") or []
            if len(topics) >= 2:
                out.append(int(topics[1], 16))
        return sorted(out)

    async def covering(self, height: int, from_block: int = 0) -> Anchored | None:
        """The lowest anchored checkpoint at or above ``height`` (read back from the registry's state)."""
        latest = await self.latest()
        if latest.height < height or latest.height == 0:
            return None
        try:
            heights = [h for h in await self.anchored_heights(from_block) if h >= height]
        except (AnchorError, ChainClientError):   # a node refusing log queries: the latest covers it too
            heights = []
        for h in heights:
            cp = await self.at(h)
            if cp is not None:
                return cp
        return latest
