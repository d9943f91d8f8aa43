"""Deploy NoiaToken + Exchange on an EVM chain, and the deployment record the chain client attaches to.

``deploy(url, deployer_key, complex_authority, supply, ...)`` sends the two
contract creations signed by the deployer (who receives the whole NOIA
supply, like the genesis balances' holder), waits for their receipts, checks
the code is there and returns a ``Deployment`` (gateway/evm/record.py: the
record ``write_record`` stores and the chain client's EVM backend reads: chain
id, addresses, interval length and the two ABIs, so calls are encoded from
these, not from a second copy of the Solidity signatures).

``onboard`` readies household accounts, outside the outbox and before it
first uses them: NOIA from the deployer, ether for gas, and each account's
``approve(exchange, max)`` so that its fills can escrow. Every tx here is
signed with an explicit nonce (the account's pending count) and followed to
its receipt; a failed one raises ``DeployError``.
"""

from __future__ import annotations

import time
from typing import Any

from coincurve import PrivateKey
from eth_abi.abi import encode as abi_encode
from hexbytes import HexBytes
from web3 import Web3

from gateway.chain_client.evm_codec import Fees, sign_call
from gateway.validator.crypto import address_of, to_checksum

from .abi import constructor_types, functions
from .compile import compile_contracts
from .record import Deployment, DeployError, read_record, write_record

__all__ = ["Deployment", "DeployError", "deploy", "onboard", "read_record", "write_record"]

U256_MAX = (1 << 256) - 1
DEPLOY_GAS = 3_000_000
SETUP_GAS = 100_000


class _Sender:
    """Signs with explicit nonces and follows receipts, over web3.py's HTTP provider."""

    def __init__(self, url: str, max_fee: int, priority_fee: int) -> None:
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
        self.chain_id = int(self.w3.eth.chain_id)
        self.max_fee = max_fee
        self.priority_fee = priority_fee
        self._nonces: dict[bytes, int] = {}

    def send(self, key: PrivateKey, to: bytes | None, data: bytes, gas: int, value: int = 0) -> bytes:
        addr = address_of(key)
        if addr not in self._nonces:
            self._nonces[addr] = int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(addr), "pending"))
        raw, h = sign_call(key, chain_id=self.chain_id, nonce=self._nonces[addr], to=to, data=data, gas=gas,
                           fees=Fees(self.max_fee, self.priority_fee), value=value)
        self.w3.eth.send_raw_transaction(raw)
        self._nonces[addr] += 1
        return h

    def wait(self, hashes: list[bytes], timeout: float = 60.0) -> list[Any]:
        out = []
        deadline = time.monotonic() + timeout
        for h in hashes:
            while True:
                try:
                    r = self.w3.eth.get_transaction_receipt(HexBytes(h))
                    break
                except Exception:  # web3 raises TransactionNotFound until mined
                    if time.monotonic() > deadline:
                        raise DeployError(f"no receipt for 0x{h.hex()} within {timeout} s") from None
                    time.sleep(0.1)
            if r["status"] != 1:
                raise DeployError(f"tx 0x{h.hex()} failed (status 0)")
            out.append(r)
        return out

    def wait_finalized(self, height: int, timeout: float = 60.0) -> None:
        """Until the node's ``finalized`` block reaches ``height`` (no-op on a node without the tag)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fin = self.w3.eth.get_block("finalized")["number"]
            except Exception:  # no finalized tag here: the chain client counts confirmations instead
                return
            if fin >= height:
                return
            if time.monotonic() > deadline:
                raise DeployError(f"block {height} not finalized within {timeout} s (finalized: {fin})")
            time.sleep(0.1)


def deploy(url: str, deployer: PrivateKey, complex_authority: bytes, supply: int, *, interval_seconds: int = 900,
           settle_timeout: int = 7 * 86_400, max_fee: int = 100 * 10**9, priority_fee: int = 0) -> Deployment:
    """Create NoiaToken (whole supply to the deployer) and Exchange; returns the record (not yet written)."""
    art = compile_contracts()
    tok, ex = art["NoiaToken"], art["Exchange"]
    s = _Sender(url, max_fee, priority_fee)
    holder = address_of(deployer)
    h_tok = s.send(deployer, None, bytes.fromhex(tok["bytecode"][2:])
                   + abi_encode(constructor_types(tok["abi"]), [to_checksum(holder), supply]), DEPLOY_GAS)
    (r_tok,) = s.wait([h_tok])
    token = bytes.fromhex(r_tok["contractAddress"][2:])
    types = constructor_types(ex["abi"])
    args: list[Any] = [to_checksum(token), to_checksum(complex_authority), interval_seconds]
    has_reclaim = len(types) == 4
    if has_reclaim:
        args.append(settle_timeout)
    h_ex = s.send(deployer, None, bytes.fromhex(ex["bytecode"][2:]) + abi_encode(types, args), DEPLOY_GAS)
    (r_ex,) = s.wait([h_ex])
    exchange = bytes.fromhex(r_ex["contractAddress"][2:])
    for addr in (token, exchange):
        if len(s.w3.eth.get_code(Web3.to_checksum_address(addr))) == 0:
            raise DeployError(f"no code at {to_checksum(addr)} after deployment")
    return Deployment(s.chain_id, token, exchange, complex_authority, interval_seconds,
                      settle_timeout if has_reclaim else None, int(r_ex["blockNumber"]), tok["abi"], ex["abi"],
                      str(tok.get("solc", "")))


def onboard(url: str, dep: Deployment, deployer: PrivateKey, accounts: dict[PrivateKey, int], *,
            ether: int = 10**18, max_fee: int = 100 * 10**9, priority_fee: int = 0) -> None:
    """Give each account ``accounts[key]`` NOIA and ``ether`` wei for gas, then approve the exchange;
    returns once those txs are final (where the node has a ``finalized`` tag)."""
    s = _Sender(url, max_fee, priority_fee)
    fns = functions(dep.token_abi)
    hashes = []
    for key, noia in accounts.items():
        a = address_of(key)
        if ether:
            hashes.append(s.send(deployer, a, b"", 21_000, value=ether))
        if noia:
            hashes.append(s.send(deployer, dep.token, fns["transfer"].call_data(to_checksum(a), noia), SETUP_GAS))
    s.wait(hashes)
    rcpts = s.wait([s.send(key, dep.token, fns["approve"].call_data(to_checksum(dep.exchange), U256_MAX), SETUP_GAS)
                    for key in accounts])
    # the outbox starts an account at its nonce at the finality point: let these txs be final first
    s.wait_finalized(max((int(r["blockNumber"]) for r in rcpts), default=0))
