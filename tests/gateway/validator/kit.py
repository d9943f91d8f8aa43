"""Test kit for the chain core: deterministic keys, a genesis, tx builders, a one-node chain."""

from __future__ import annotations

from dataclasses import dataclass, field

from coincurve import PrivateKey

from gateway.validator.block import Block, Header
from gateway.validator.crypto import ZERO_ADDRESS, address_of, private_key
from gateway.validator.execute import BlockResult, build_block, execute_block
from gateway.validator.genesis import Genesis, parse_genesis
from gateway.validator.order import Order, SignedOrder, grid_id, sign_order
from gateway.validator.storage import ChainStore, MemoryStore
from gateway.validator.tx import (Cancel, Checkpoint, Fill, Settlement, SettleBatch, Transfer, Tx, VerifiedTx,
                                  sign_tx, verify_tx)

CHAIN_ID = 31337
CONTRACT = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
GENESIS_TIME = 1_700_000_000
INTERVAL = 900
GRID = grid_id("test-complex")
START_BALANCE = 10**21


def key(i: int) -> PrivateKey:
    return private_key((1000 + i).to_bytes(32, "big"))


def addr(i: int) -> bytes:
    return address_of(key(i))


AUTHORITY = 0   # key index of the single block authority
COMPLEX = 1     # key index of the complex authority (settles)
USERS = range(2, 8)


def genesis_doc(chain_id: int = CHAIN_ID) -> dict:
    return {"chain_id": chain_id, "name": "test", "verifying_contract": "0x" + CONTRACT.hex(),
            "block_time_ms": 1000, "interval_seconds": INTERVAL, "timestamp": GENESIS_TIME,
            "authorities": ["0x" + addr(AUTHORITY).hex()], "complex_authority": "0x" + addr(COMPLEX).hex(),
            "balances": {"0x" + addr(i).hex(): str(START_BALANCE) for i in USERS}}


def genesis() -> Genesis:
    return parse_genesis(genesis_doc())


GENESIS = genesis()
PARAMS = GENESIS.params()
DOMAIN = PARAMS.domain


def order(maker: int, nonce: int = 1, *, noia: int = 1000, wh: int = 500, taker: int | None = None,
          expiry: int = GENESIS_TIME + 10**6, interval_start: int = GENESIS_TIME, grid: bytes = GRID) -> Order:
    return Order(nonce, expiry, addr(maker), ZERO_ADDRESS if taker is None else addr(taker), wh,
                 interval_start, noia, grid)


def signed(o: Order, signer: int | None = None) -> SignedOrder:
    return sign_order(o, DOMAIN, key(signer) if signer is not None else _key_of(o.maker))


def _key_of(a: bytes) -> PrivateKey:
    for i in range(0, 50):
        if addr(i) == a:
            return key(i)
    raise KeyError(a.hex())


def raw_tx(sender: int, nonce: int, payload, chain_id: int = CHAIN_ID) -> bytes:
    return sign_tx(Tx(chain_id, addr(sender), nonce, payload), key(sender))


def vtx(sender: int, nonce: int, payload) -> VerifiedTx:
    return verify_tx(raw_tx(sender, nonce, payload), DOMAIN)


def transfer(to: int, amount: int) -> Transfer:
    return Transfer(addr(to), amount)


def fill(o: Order) -> Fill:
    return Fill(signed(o))


def settle(entries: list[tuple[bytes, int, int, int]], *, interval_start: int = GENESIS_TIME,
           root: bytes = b"\x33" * 32, grid: bytes = GRID) -> SettleBatch:
    return SettleBatch(grid, interval_start, root,
                       tuple(Settlement(f, d, p, r) for f, d, p, r in sorted(entries)))


@dataclass
class Chain:
    """One node without consensus: each call seals and commits one block."""
    store: ChainStore = field(default_factory=lambda: MemoryStore(GENESIS))
    time: int = GENESIS_TIME + INTERVAL  # past the first interval
    nonces: dict[int, int] = field(default_factory=dict)

    def next_nonce(self, i: int) -> int:
        n = self.nonces.get(i, 0)
        self.nonces[i] = n + 1
        return n

    def block(self, vtxs: list[VerifiedTx], *, dt: int = 1) -> tuple[Block, BlockResult, list]:
        self.time += dt
        s = self.store
        blk, res, rejected = build_block(s, s.accumulator, s.head, vtxs, PARAMS, addr(AUTHORITY), self.time,
                                         header_at=s.header_at)
        # a follower re-executes the sealed block from scratch: must agree
        again = execute_block(s, s.accumulator, blk, s.head, PARAMS, header_at=s.header_at)
        assert again.state_root == res.state_root and again.writes == res.writes
        s.commit_block(blk, res)
        return blk, res, rejected

    def send(self, sender: int, payload) -> VerifiedTx:
        """Build, sign and include one tx; returns it (raises the rejection if any)."""
        v = vtx(sender, self.nonces.get(sender, 0), payload)
        _, _, rejected = self.block([v])
        if rejected:
            raise rejected[0][1]
        self.nonces[sender] = self.nonces.get(sender, 0) + 1
        return v
