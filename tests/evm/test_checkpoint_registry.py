"""The Solidity CheckpointRegistry on a local anvil (issue 7, contracts).

Checkpoints are signed in Python with gateway/validator/checkpoint.py; the registry accepts one only
with valid EIP-712 signatures of strictly more than two thirds of the side chain's authorities, each
counted once. Every rejection is checked as an ``eth_call`` (the reason) and as a mined transaction
(status 0, the registry unchanged).
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from web3 import Web3
from web3.logs import DISCARD

import gateway.evm.compile as evm_compile
from gateway.evm.anvil import Anvil
from gateway.validator.checkpoint import (CHECKPOINT_TYPEHASH, Checkpoint, CheckpointDomain, sign_by_all,
                                          sign_checkpoint, threshold, typed_data)
from gateway.validator.crypto import HALF_N, SECP256K1_N, address_of, keccak256, private_key
from gateway.validator.order import DOMAIN_TYPEHASH

from .test_contracts import GAS, cs, deploy, fund, revert_reason

CHAIN_ID = 31337
OTHER_CHAIN_ID = 4242
GENESIS = keccak256(b"metanoia-dev genesis")
U64_MAX = (1 << 64) - 1
AUTHORITIES = sorted((private_key(keccak256(b"checkpoint-authority-%d" % i)) for i in range(4)), key=address_of)
OUTSIDER = private_key(keccak256(b"checkpoint-outsider"))
SUBMITTER = private_key(keccak256(b"checkpoint-submitter"))


@pytest.fixture(scope="module")
def artefacts() -> dict[str, Any]:
    return evm_compile.compile_contracts()


@pytest.fixture(scope="module")
def node() -> Iterator[Anvil]:
    with Anvil(chain_id=CHAIN_ID) as a:
        fund(a, SUBMITTER)
        yield a


class Reg:
    def __init__(self, node: Anvil, artefacts: dict[str, Any], genesis: bytes = GENESIS) -> None:
        self.w3 = Web3(Web3.HTTPProvider(node.url))
        self.nonce = self.w3.eth.get_transaction_count(Web3.to_checksum_address(cs(SUBMITTER)))
        self.c = deploy(self.w3, artefacts, "CheckpointRegistry", SUBMITTER, genesis,
                        [cs(k) for k in AUTHORITIES])
        self.domain = CheckpointDomain(node.chain_id, bytes.fromhex(self.c.address[2:]))

    def cp(self, height: int, genesis: bytes = GENESIS) -> Checkpoint:
        return Checkpoint(genesis, height, keccak256(b"block %d" % height), keccak256(b"state %d" % height))

    def fn(self, cp: Checkpoint, sigs: list[bytes]) -> Any:
        return self.c.functions.submit(cp.as_tuple(), sigs)

    def state(self) -> tuple[Any, ...]:
        return tuple(self.c.functions.latest().call())

    def ok(self, cp: Checkpoint, sigs: list[bytes]) -> Any:
        rcpt = self.w3.eth.wait_for_transaction_receipt(self.fn(cp, sigs).transact({"from": cs(SUBMITTER)}))
        assert rcpt["status"] == 1
        return rcpt

    def reject(self, cp: Checkpoint, sigs: list[bytes], reason: str) -> None:
        assert revert_reason(self.w3, self.fn(cp, sigs), SUBMITTER) == reason
        before = self.state()
        tx = self.fn(cp, sigs).transact({"from": cs(SUBMITTER), "gas": GAS})
        assert self.w3.eth.wait_for_transaction_receipt(tx)["status"] == 0
        assert self.state() == before


@pytest.fixture
def reg(node: Anvil, artefacts: dict[str, Any]) -> Reg:
    return Reg(node, artefacts)


def test_digest_matches_python_and_eth_account(reg: Reg) -> None:
    from eth_account import Account
    from eth_account.messages import encode_typed_data
    f = reg.c.functions
    assert bytes(f.CHECKPOINT_TYPEHASH().call()) == CHECKPOINT_TYPEHASH
    assert bytes(f.DOMAIN_TYPEHASH().call()) == DOMAIN_TYPEHASH
    assert bytes(f.domainSeparator().call()) == reg.domain.separator
    for cp in (reg.cp(1), Checkpoint(b"\xff" * 32, U64_MAX, b"\xff" * 32, b"\xff" * 32)):
        assert bytes(f.checkpointDigest(cp.as_tuple()).call()) == cp.digest(reg.domain)
    cp = reg.cp(1)
    signed = Account.sign_message(encode_typed_data(full_message=typed_data(cp, reg.domain)),
                                  AUTHORITIES[0].secret).signature
    assert bytes(signed) == sign_checkpoint(cp, reg.domain, AUTHORITIES[0])
    assert f.authorities().call() == [cs(k) for k in AUTHORITIES]
    assert f.threshold().call() == threshold(4) == 3
    assert [threshold(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 3, 3, 4, 5, 5]


def test_three_of_four_accepted_then_heights_increase(reg: Reg) -> None:
    assert reg.state() == (0, b"\x00" * 32, b"\x00" * 32)
    cp = reg.cp(10)
    rcpt = reg.ok(cp, sign_by_all(cp, reg.domain, AUTHORITIES[1:]))
    ev = reg.c.events.CheckpointSubmitted().process_receipt(rcpt, errors=DISCARD)[0]["args"]
    assert (ev["height"], bytes(ev["blockHash"]), bytes(ev["stateRoot"]), ev["submitter"], ev["signatures"]) == (
        10, cp.block_hash, cp.state_root, cs(SUBMITTER), 3)
    assert reg.state() == (10, cp.block_hash, cp.state_root)
    assert tuple(reg.c.functions.checkpointAt(10).call()) == (cp.block_hash, cp.state_root)
    assert tuple(reg.c.functions.checkpointAt(9).call()) == (b"\x00" * 32, b"\x00" * 32)
    # all four, another subset of three: both fine at higher heights
    reg.ok(reg.cp(11), sign_by_all(reg.cp(11), reg.domain, AUTHORITIES))
    reg.ok(reg.cp(20), sign_by_all(reg.cp(20), reg.domain, AUTHORITIES[:3]))
    assert reg.state()[0] == 20
    # equal and lower heights, even fully signed
    for h in (20, 19, 11):
        reg.reject(reg.cp(h), sign_by_all(reg.cp(h), reg.domain, AUTHORITIES), "checkpoint_not_monotonic")


def test_height_zero_and_bad_fields(reg: Reg) -> None:
    reg.reject(reg.cp(0), sign_by_all(reg.cp(0), reg.domain, AUTHORITIES), "checkpoint_not_monotonic")
    other = reg.cp(1, genesis=keccak256(b"another side chain"))
    reg.reject(other, sign_by_all(other, reg.domain, AUTHORITIES), "wrong_chain")
    empty = Checkpoint(GENESIS, 1, b"\x00" * 32, keccak256(b"s"))
    reg.reject(empty, sign_by_all(empty, reg.domain, AUTHORITIES), "bad_field")
    cp = reg.cp(1)
    sigs = sign_by_all(cp, reg.domain, AUTHORITIES)
    reg.reject(cp, sigs + [sigs[-1]], "bad_field")  # more signatures than authorities


def test_insufficient_duplicate_and_order(reg: Reg) -> None:
    cp = reg.cp(5)
    sigs = sign_by_all(cp, reg.domain, AUTHORITIES)
    reg.reject(cp, sigs[:2], "insufficient_signatures")
    reg.reject(cp, [], "insufficient_signatures")
    reg.reject(cp, [sigs[0], sigs[1], sigs[1]], "duplicate_signer")
    reg.reject(cp, [sigs[0], sigs[0], sigs[1], sigs[2]], "duplicate_signer")
    reg.reject(cp, [sigs[1], sigs[0], sigs[2]], "non_canonical")
    reg.ok(cp, sigs[:3])


def test_bad_signatures_rejected(reg: Reg) -> None:
    cp = reg.cp(7)
    sigs = sign_by_all(cp, reg.domain, AUTHORITIES[:3])
    # a non-authority's valid signature in place of one authority (order kept by address)
    outsider = sign_by_all(cp, reg.domain, [*AUTHORITIES[:2], OUTSIDER])
    reg.reject(cp, outsider, "not_authority")
    # the high-s twin: a valid ECDSA signature of the same authority, refused
    r, s, v = sigs[0][:32], int.from_bytes(sigs[0][32:64], "big"), sigs[0][64]
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - v,))
    assert int.from_bytes(twin[32:64], "big") > HALF_N
    from coincurve import PublicKey
    pub = PublicKey.from_signature_and_message(twin[:64] + bytes((twin[64] - 27,)), cp.digest(reg.domain),
                                               hasher=None)
    assert pub.format() == AUTHORITIES[0].public_key.format()
    reg.reject(cp, [twin, *sigs[1:]], "bad_signature")
    for bad in (sigs[0][:64] + b"\x00", sigs[0][:64] + b"\x1d", sigs[0][:64], sigs[0] + b"\x00",
                b"\x00" * 32 + sigs[0][32:], sigs[0][:32] + b"\x00" * 32 + sigs[0][64:]):
        reg.reject(cp, [bad, *sigs[1:]], "bad_signature")
    # a signature over another checkpoint recovers to a stranger
    reg.reject(cp, [sign_checkpoint(reg.cp(8), reg.domain, AUTHORITIES[0]), *sigs[1:]], "not_authority")
    reg.ok(cp, sigs)


def test_replay_on_another_registry_and_chain(node: Anvil, artefacts: dict[str, Any], reg: Reg) -> None:
    cp = reg.cp(3)
    sigs = sign_by_all(cp, reg.domain, AUTHORITIES)
    second = Reg(node, artefacts)
    second.reject(cp, sigs, "not_authority")
    with Anvil(chain_id=OTHER_CHAIN_ID) as other_node:
        fund(other_node, SUBMITTER)
        # same deployer, same nonce: the registry at the same address, only the chain id differs
        other_node.rpc("anvil_setNonce", [cs(SUBMITTER), hex(reg.nonce)])
        forked = Reg(other_node, artefacts)
        assert forked.c.address == reg.c.address and forked.domain != reg.domain
        forked.reject(cp, sigs, "not_authority")
        forked.ok(cp, sign_by_all(cp, forked.domain, AUTHORITIES))
    reg.ok(cp, sigs)
    assert second.state()[0] == 0


def test_constructor_checks(node: Anvil, artefacts: dict[str, Any]) -> None:
    w3 = Web3(Web3.HTTPProvider(node.url))
    c = w3.eth.contract(abi=artefacts["CheckpointRegistry"]["abi"],
                        bytecode=artefacts["CheckpointRegistry"]["bytecode"])
    a = [cs(k) for k in AUTHORITIES]
    for genesis, auths in ((GENESIS, []), (GENESIS, [a[0], a[0]]), (GENESIS, [a[0], cs(b"\x00" * 20)]),
                           (b"\x00" * 32, a)):
        tx = c.constructor(genesis, auths).transact({"from": cs(SUBMITTER), "gas": 3 * GAS})
        rcpt = w3.eth.wait_for_transaction_receipt(tx)
        assert rcpt["status"] == 0 and rcpt["contractAddress"] is not None
        assert w3.eth.get_code(rcpt["contractAddress"]) == b""
    tx = c.constructor(GENESIS, a).transact({"from": cs(SUBMITTER), "gas": 3 * GAS})
    assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
