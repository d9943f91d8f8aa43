"""Deploy a CheckpointRegistry for one side chain: its genesis hash and authority set, fixed for good.

``metanoia chain deploy-registry`` runs this. The constructor arguments come from the genesis file, so a
registry cannot be pointed at the wrong chain by a typo; the deployer only pays gas and has no power
over the registry afterwards (there is no owner).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from eth_abi import encode as abi_encode

from gateway.chain_client.evm_codec import sign_call
from gateway.evm.compile import compile_contracts
from gateway.validator.crypto import address_of, private_key, to_checksum
from gateway.validator.genesis import Genesis

from .errors import AnchorError
from .evm import GAS_MARGIN, EvmRpc
from .registry import Registry

DEPLOY_FAILED = "deploy_failed"


@dataclass(frozen=True)
class RegistryDeployment:
    address: bytes
    chain_id: int
    block: int
    tx_hash: bytes
    genesis_hash: bytes
    authorities: tuple[bytes, ...]


async def deploy_registry(evm: EvmRpc, secret: bytes, genesis: Genesis, *, timeout: float = 60.0) -> RegistryDeployment:
    art = compile_contracts()["CheckpointRegistry"]
    auths = list(genesis.authorities)
    data = bytes.fromhex(art["bytecode"].removeprefix("0x")) + abi_encode(
        ["bytes32", "address[]"], [genesis.hash, [to_checksum(a) for a in auths]])
    sender = address_of(private_key(secret))
    chain_id = await evm.chain_id()
    gas = await evm.estimate_gas(sender, None, data)
    raw, tx_hash = sign_call(secret, chain_id=chain_id, nonce=await evm.nonce(sender, "pending"), to=None, data=data,
                             gas=int(gas * GAS_MARGIN), fees=await evm.fees())
    await evm.send_raw(raw)
    deadline = time.monotonic() + timeout
    while (r := await evm.receipt(tx_hash)) is None:
        if time.monotonic() > deadline:
            raise AnchorError(DEPLOY_FAILED, f"no receipt for 0x{tx_hash.hex()} within {timeout} s")
        await asyncio.sleep(0.2)
    if r.status != 1 or r.contract is None or not await evm.code(r.contract):
        raise AnchorError(DEPLOY_FAILED, f"creation 0x{tx_hash.hex()} failed (status {r.status})")
    reg = Registry(evm, r.contract)      # read back what the chain holds, not what was sent
    if await reg.genesis_hash() != genesis.hash or await reg.authorities() != auths:
        raise AnchorError(DEPLOY_FAILED, "the deployed registry does not hold this genesis and authorities")
    return RegistryDeployment(r.contract, chain_id, r.block_number, tx_hash, genesis.hash, tuple(auths))
