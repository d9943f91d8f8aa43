"""Collecting > 2/3 of the authorities' checkpoint signatures from the side chain's validators.

Each validator is asked over JSON-RPC (``chain_signCheckpoint``, gateway/validator/anchor_rpc.py); an
answer counts only if its signature recovers, for the checkpoint the relayer rebuilt from the answer's
fields and the *registry's* genesis hash, to an authority the *registry* lists. A validator that is
down, slow, behind or lying costs its vote and nothing else, so with 3f+1 authorities anchoring goes on
with f of them out.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gateway.chain_client.errors import ChainClientError
from gateway.chain_client.rpc import JsonRpcClient
from gateway.validator.block import Header
from gateway.validator.checkpoint import Checkpoint, CheckpointDomain, checkpoint_signer, threshold
from gateway.validator.crypto import to_checksum
from gateway.validator.errors import DecodeError

from .errors import (BAD_RESPONSE, BAD_SIGNATURE, CONFLICTING_CHECKPOINTS, INSUFFICIENT_SIGNATURES,
                     SIDE_UNAVAILABLE, WRONG_CHAIN, AnchorError)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Collected:
    checkpoint: Checkpoint
    signatures: tuple[bytes, ...]       # ordered by signer address, ascending (what ``submit`` takes)
    signers: tuple[bytes, ...]
    refused: dict[str, str] = field(default_factory=dict)   # url -> reason, for the log and the counters


def _b32(d: dict[str, Any], key: str) -> bytes:
    v = d.get(key)
    if not isinstance(v, str) or not v.startswith("0x") or len(v) != 66:
        raise AnchorError(BAD_RESPONSE, f"{key}: expected 0x + 64 hex digits")
    return bytes.fromhex(v[2:])


class Validators:
    """The side chain's validators' JSON-RPC endpoints."""

    def __init__(self, urls: list[str], *, timeout: float = 5.0) -> None:
        if not urls:
            raise ValueError("at least one side-chain RPC URL")
        self.clients = {u: JsonRpcClient(u, timeout=timeout) for u in urls}
        self.last_refused: dict[str, str] = {}    # url -> reason of the last ``collect`` (also when it failed)

    async def aclose(self) -> None:
        for c in self.clients.values():
            await c.aclose()

    async def _each(self, method: str, *params: Any) -> dict[str, Any]:
        """``{url: result or the exception}`` from every validator, concurrently."""
        urls = list(self.clients)
        res = await asyncio.gather(*(self.clients[u].call(method, *params) for u in urls), return_exceptions=True)
        for u, r in zip(urls, res):
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r
        return dict(zip(urls, res))

    async def anchorable_height(self, n_authorities: int) -> int:
        """The highest height final on at least threshold(n) validators (so enough of them can sign it)."""
        heights = sorted((r for r in (await self._each("chain_finalizedNumber")).values()
                          if isinstance(r, int) and not isinstance(r, bool) and r >= 0), reverse=True)
        k = threshold(n_authorities)
        if len(heights) < k:
            raise AnchorError(SIDE_UNAVAILABLE, f"{len(heights)} of {len(self.clients)} validators answered, "
                                                f"{k} needed")
        return heights[k - 1]

    async def block_time(self, height: int) -> int | None:
        """The timestamp of final block ``height`` from the first validator that has it (for scheduling only:
        nothing signed depends on it)."""
        for c in self.clients.values():
            try:
                raw = await c.call("chain_getHeaders", height, 1)
                if isinstance(raw, list) and raw:
                    return Header.decode(bytes.fromhex(str(raw[0])[2:])).timestamp
            except (ChainClientError, ValueError, DecodeError):
                continue
        return None

    async def collect(self, height: int, domain: CheckpointDomain, genesis_hash: bytes,
                      authorities: list[bytes]) -> Collected:
        """> 2/3 of ``authorities``' signatures over one (block hash, state root) at ``height``."""
        answers = await self._each("chain_signCheckpoint", height, domain.chain_id,
                                   to_checksum(domain.verifying_contract))
        auth = set(authorities)
        groups: dict[tuple[bytes, bytes], dict[bytes, bytes]] = defaultdict(dict)
        refused: dict[str, str] = {}
        for url, ans in answers.items():
            try:
                if isinstance(ans, ChainClientError):
                    raise AnchorError(ans.reason, ans.detail)
                if isinstance(ans, Exception) or not isinstance(ans, dict):
                    raise AnchorError(BAD_RESPONSE, f"{ans!r}")
                if _b32(ans, "genesisHash") != genesis_hash:
                    raise AnchorError(WRONG_CHAIN, "the validator's genesis is not the registry's")
                if ans.get("height") != height:
                    raise AnchorError(BAD_RESPONSE, f"signed height {ans.get('height')!r}, asked {height}")
                cp = Checkpoint(genesis_hash, height, _b32(ans, "blockHash"), _b32(ans, "stateRoot"))
                sig = ans.get("signature")
                if not isinstance(sig, str) or not sig.startswith("0x"):
                    raise AnchorError(BAD_RESPONSE, "signature: expected hex")
                raw = bytes.fromhex(sig[2:])
                try:
                    signer = checkpoint_signer(cp, domain, raw)
                except DecodeError as exc:
                    raise AnchorError(BAD_SIGNATURE, str(exc)) from None
                if signer not in auth:
                    raise AnchorError(BAD_SIGNATURE, f"recovers to 0x{signer.hex()}, not an authority")
                groups[(cp.block_hash, cp.state_root)][signer] = raw
            except (AnchorError, ValueError) as exc:
                refused[url] = exc.reason if isinstance(exc, AnchorError) else BAD_RESPONSE
                log.info("checkpoint %d: %s refused or failed: %s", height, url, exc)
        self.last_refused = refused
        need = threshold(len(authorities))
        if len(groups) > 1:
            log.error("checkpoint %d: authorities signed %d different blocks: %s", height, len(groups),
                      [k[0].hex() for k in groups])
        best = max(groups.items(), key=lambda kv: len(kv[1]), default=None)
        if best is None or len(best[1]) < need:
            reason = CONFLICTING_CHECKPOINTS if len(groups) > 1 else INSUFFICIENT_SIGNATURES
            got = len(best[1]) if best else 0
            raise AnchorError(reason, f"height {height}: {got} of {need} signatures ({refused})")
        (bh, sr), sigs = best
        signers = tuple(sorted(sigs))
        return Collected(Checkpoint(genesis_hash, height, bh, sr), tuple(sigs[s] for s in signers), signers, refused)
