"""The validators' anchoring RPC (gateway/validator/anchor_rpc.py) on the real 4-process network.

A validator signs the checkpoint of a final block only; it refuses a height above its final head, the
genesis and bad parameters with a specific error, and counts both.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.chain_client.errors import InvalidParams, RpcError
from gateway.validator.block import Header, merkle_root, verify_merkle_proof
from gateway.validator.checkpoint import Checkpoint, CheckpointDomain, checkpoint_signer
from gateway.validator.crypto import address_of, keccak256, to_checksum
from tests.gateway.validator.netkit import AUTH_KEYS

from .rig import MAIN_CHAIN_ID, AnchorRig

REGISTRY = bytes.fromhex("aa" * 20)


def test_sign_checkpoint_of_a_final_block(rig: AnchorRig) -> None:
    async def go() -> None:
        h = await rig.call(1, "chain_finalizedNumber")
        blk = await rig.call(1, "chain_getBlockByNumber", h)
        ans = await rig.call(1, "chain_signCheckpoint", h, MAIN_CHAIN_ID, to_checksum(REGISTRY))
        assert (ans["height"], ans["blockHash"], ans["stateRoot"]) == (h, blk["hash"], blk["stateRoot"])
        assert ans["genesisHash"] == "0x" + rig.genesis.hash.hex()
        cp = Checkpoint(rig.genesis.hash, h, bytes.fromhex(blk["hash"][2:]), bytes.fromhex(blk["stateRoot"][2:]))
        signer = checkpoint_signer(cp, CheckpointDomain(MAIN_CHAIN_ID, REGISTRY), bytes.fromhex(ans["signature"][2:]))
        assert signer == address_of(AUTH_KEYS[1]) == bytes.fromhex(ans["signer"][2:])
        # another registry or main chain: another signature over the same facts
        other = await rig.call(1, "chain_signCheckpoint", h, MAIN_CHAIN_ID + 1, to_checksum(REGISTRY))
        assert other["signature"] != ans["signature"] and other["blockHash"] == ans["blockHash"]
    asyncio.run(go())


def test_sign_checkpoint_refusals_are_specific_and_counted(rig: AnchorRig) -> None:
    async def go() -> None:
        before = (await rig.call(2, "chain_status"))["counters"]
        h = await rig.call(2, "chain_finalizedNumber")
        reg = to_checksum(REGISTRY)
        with pytest.raises(RpcError) as e:
            await rig.call(2, "chain_signCheckpoint", h + 10_000, MAIN_CHAIN_ID, reg)
        assert e.value.code == -32000 and e.value.data["reason"] == "block_not_final"
        assert e.value.data["final"] >= h
        with pytest.raises(RpcError) as e:
            await rig.call(2, "chain_signCheckpoint", 0, MAIN_CHAIN_ID, reg)
        assert e.value.data["reason"] == "genesis_not_anchored"
        for bad in ([-1, MAIN_CHAIN_ID, reg], [1, 0, reg], [1, MAIN_CHAIN_ID, "0x1234"], [True, MAIN_CHAIN_ID, reg],
                    [1, MAIN_CHAIN_ID], ["1", MAIN_CHAIN_ID, reg]):
            with pytest.raises(InvalidParams):
                await rig.call(2, "chain_signCheckpoint", *bad)
        after = (await rig.call(2, "chain_status"))["counters"]
        for what, n in (("checkpoint_refused_block_not_final", 1), ("checkpoint_refused_genesis_not_anchored", 1),
                        ("rpc_error_-32602", 6)):
            assert after.get(what, 0) == before.get(what, 0) + n, what
    asyncio.run(go())


def test_headers_link_and_tx_proofs_check(rig: AnchorRig) -> None:
    async def go() -> None:
        txs = await rig.send_transfers(7, via=3)
        top = await rig.call(3, "chain_finalizedNumber")
        raws = await rig.call(3, "chain_getHeaders", 0, top + 50)
        headers = [Header.decode(bytes.fromhex(r[2:])) for r in raws]
        assert [hd.height for hd in headers] == list(range(len(headers))) and len(headers) >= top + 1
        assert headers[0].parent_hash == rig.genesis.hash        # block 0 commits to the genesis
        for a, b in zip(headers, headers[1:]):
            assert b.parent_hash == a.hash
        assert await rig.call(3, "chain_getHeaders", 10**9, 5) == []
        with pytest.raises(InvalidParams):
            await rig.call(3, "chain_getHeaders", 0, 1001)
        for h in txs:
            p = await rig.call(3, "chain_getTxProof", "0x" + h.hex())
            blk = await rig.call(3, "chain_getBlockByNumber", p["blockNumber"])
            assert keccak256(bytes.fromhex(p["tx"][2:])) == h and p["txRoot"] == blk["txRoot"]
            leaves = [bytes.fromhex(t[2:]) for t in blk["transactions"]]
            assert merkle_root(leaves) == bytes.fromhex(blk["txRoot"][2:]) and leaves[p["index"]] == h
            proof = [(right, bytes.fromhex(s[2:])) for right, s in p["proof"]]
            assert verify_merkle_proof(h, proof, bytes.fromhex(blk["txRoot"][2:]))
        assert await rig.call(3, "chain_getTxProof", "0x" + "11" * 32) is None
        with pytest.raises(InvalidParams):
            await rig.call(3, "chain_getTxProof", "0x1234")
    asyncio.run(go())
