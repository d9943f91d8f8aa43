"""The relayer's main-chain transactions on a real anvil: built by the chain client's codec (one way to sign
an EVM tx: EIP-1559, type 2, deterministic), resendable byte for byte, and refusals read by the codec's one
revert decoder (the registry's ``Rejected(reason)`` as its reason code; a ``require`` string as
``reverted`` with the string in the detail). No validators are needed: the registry is deployed from a
genesis file, the checkpoint refused is one of another side chain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode

from gateway.anchor.deploy import deploy_registry
from gateway.anchor.evm import EvmRpc, Reverted
from gateway.anchor.registry import submit_calldata
from gateway.chain_client.evm_codec import sign_call
from gateway.evm.anvil import Anvil
from gateway.evm.compile import compile_contracts
from gateway.validator.checkpoint import Checkpoint
from gateway.validator.crypto import address_of, keccak256, private_key, to_checksum
from gateway.validator.genesis import parse_genesis
from tests.gateway.validator.netkit import genesis_doc

KEY = private_key(b"\x6a" * 32)


def test_registry_deployed_and_called_with_type_2_txs_and_refusals_decoded_once(tmp_path: Path) -> None:
    genesis = parse_genesis(genesis_doc(4))

    async def go(node: Anvil) -> None:
        evm = EvmRpc(node.url)
        try:
            dep = await deploy_registry(evm, KEY.secret, genesis)
            tx = node.rpc("eth_getTransactionByHash", ["0x" + dep.tx_hash.hex()])
            assert tx["type"] == "0x2" and int(tx["nonce"], 16) == 0 and tx["to"] is None
            fees = await evm.fees()
            base = int(node.rpc("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
            assert fees.max_fee_per_gas >= 2 * base and fees.max_fee_per_gas >= fees.max_priority_fee_per_gas

            other = Checkpoint(b"\x77" * 32, 5, b"\x01" * 32, b"\x02" * 32)     # another side chain's
            data = submit_calldata(other, [])
            sender = address_of(KEY)
            with pytest.raises(Reverted) as e:
                await evm.estimate_gas(sender, dep.address, data)
            assert e.value.reason == "wrong_chain"
            with pytest.raises(Reverted) as e:
                await evm.call(dep.address, data, sender)
            assert e.value.reason == "wrong_chain"
            art = compile_contracts()["CheckpointRegistry"]                     # the constructor's require()
            create = bytes.fromhex(art["bytecode"].removeprefix("0x")) + abi_encode(
                ["bytes32", "address[]"], [b"\x00" * 32, [to_checksum(a) for a in genesis.authorities]])
            with pytest.raises(Reverted) as e:
                await evm.estimate_gas(sender, None, create)
            assert e.value.reason == "reverted" and "zero genesis" in e.value.detail

            # a tx the relayer would journal: the same arguments sign the same bytes, sent twice it is one tx
            nonce = await evm.nonce(sender)
            raw, h = sign_call(KEY.secret, chain_id=await evm.chain_id(), nonce=nonce, to=dep.address, data=data,
                               gas=200_000, fees=fees)
            assert (raw, h) == sign_call(KEY, chain_id=await evm.chain_id(), nonce=nonce, to=dep.address,
                                         data=data, gas=200_000, fees=fees)
            assert raw[0] == 2 and h == keccak256(raw)
            await evm.send_raw(raw)
            await evm.send_raw(raw)                                              # "already known": fine
            while (r := await evm.receipt(h)) is None:
                await asyncio.sleep(0.1)
            assert r.status == 0                                                 # mined, the registry refused it
            await evm.send_raw(raw)                                              # "nonce too low": fine too
            assert await evm.nonce(sender, "latest") == nonce + 1
        finally:
            await evm.aclose()

    with Anvil(chain_id=1337, block_time=0.2, auto_impersonate=False) as node:
        node.rpc("anvil_setBalance", [to_checksum(address_of(KEY)), hex(10**21)])
        asyncio.run(go(node))
