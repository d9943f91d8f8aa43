"""Signature collection (gateway/anchor/collect.py) from real validators, some behind lying proxies.

A signature counts only if it recovers, over the checkpoint the relayer rebuilt with the registry's
genesis hash, to an authority; a validator answering for another chain, replaying a signature of
another height, or (a byzantine authority) validly signing another block, costs only its own vote.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.anchor.collect import Validators
from gateway.anchor.errors import AnchorError
from gateway.validator.checkpoint import Checkpoint, CheckpointDomain, checkpoint_signer, sign_checkpoint
from gateway.validator.crypto import address_of, keccak256
from tests.gateway.validator.netkit import AUTH_KEYS

from .rig import MAIN_CHAIN_ID, AnchorRig, Rewrite, lying_proxy

REGISTRY = bytes.fromhex("bb" * 20)
DOMAIN = CheckpointDomain(MAIN_CHAIN_ID, REGISTRY)
AUTHS = [address_of(k) for k in AUTH_KEYS[:4]]


def _other_genesis(p: list[Any], r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "genesisHash": "0x" + keccak256(b"another chain").hex()}


def _forged_block(p: list[Any], r: dict[str, Any]) -> dict[str, Any]:
    """Authority 0 turned byzantine: a valid signature over a block that is not the chain's."""
    cp = Checkpoint(bytes.fromhex(r["genesisHash"][2:]), r["height"], keccak256(b"forged"),
                    bytes.fromhex(r["stateRoot"][2:]))
    return {**r, "blockHash": "0x" + cp.block_hash.hex(),
            "signature": "0x" + sign_checkpoint(cp, DOMAIN, AUTH_KEYS[0]).hex()}


def _replayed(p: list[Any], r: dict[str, Any]) -> dict[str, Any]:
    """Another height's fields under this signature: recovers to some stranger."""
    return {**r, "stateRoot": "0x" + keccak256(b"stale root").hex()}


async def _collect(rig: AnchorRig, lies: dict[int, dict[str, Rewrite]], height: int) -> Any:
    async with lying_proxy(rig.urls[0], lies.get(0)) as u0, lying_proxy(rig.urls[1], lies.get(1)) as u1:
        v = Validators([u0, u1, rig.urls[2], rig.urls[3]], timeout=5)
        try:
            return await v.collect(height, DOMAIN, rig.genesis.hash, AUTHS)
        finally:
            await v.aclose()


def test_liars_cost_only_their_own_vote(rig: AnchorRig) -> None:
    async def go() -> None:
        v = Validators(rig.urls)
        try:
            h = await v.anchorable_height(4)
        finally:
            await v.aclose()
        honest = await _collect(rig, {}, h)
        assert honest.signers == tuple(sorted(AUTHS)) and not honest.refused
        for s, sig in zip(honest.signers, honest.signatures):
            assert checkpoint_signer(honest.checkpoint, DOMAIN, sig) == s
        for lie, reason in ((_other_genesis, "wrong_chain"), (_replayed, "bad_signature")):
            got = await _collect(rig, {0: {"chain_signCheckpoint": lie}}, h)
            assert got.checkpoint == honest.checkpoint and len(got.signers) == 3
            assert list(got.refused.values()) == [reason] and AUTHS[0] not in got.signers
        byz = await _collect(rig, {0: {"chain_signCheckpoint": _forged_block}}, h)
        assert byz.checkpoint == honest.checkpoint and AUTHS[0] not in byz.signers and len(byz.signers) == 3
        # two liars of four: the two honest signatures are below the threshold (3)
        with pytest.raises(AnchorError) as e:
            await _collect(rig, {0: {"chain_signCheckpoint": _replayed}, 1: {"chain_signCheckpoint": _other_genesis}},
                           h)
        assert e.value.reason == "insufficient_signatures"
        with pytest.raises(AnchorError) as e:
            await _collect(rig, {0: {"chain_signCheckpoint": _forged_block},
                                 1: {"chain_signCheckpoint": _forged_block}}, h)
        assert e.value.reason == "conflicting_checkpoints"
    asyncio.run(go())
