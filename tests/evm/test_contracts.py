"""The Solidity NoiaToken + Exchange on a local anvil (issue 7, contracts).

Orders are signed in Python with gateway/validator/order.py's ``sign_order``: the same bytes the
bundled chain accepts. Every rejection is checked twice: ``eth_call`` gives the reason code (the
bundled chain's), and the same call sent as a transaction is mined with status 0 and leaves the
balances, escrows and order states untouched.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
from coincurve import PrivateKey
from eth_abi import decode as abi_decode
from web3 import Web3
from web3.logs import DISCARD

from gateway.evm.anvil import Anvil
from gateway.evm.compile import compile_contracts
from gateway.validator.crypto import HALF_N, SECP256K1_N, address_of, keccak256, private_key, to_checksum
from gateway.validator.order import ZERO_ADDRESS, Domain, Order, SignedOrder, grid_id, sign_order

CHAIN_ID = 31337
INTERVAL = 900
SETTLE_TIMEOUT = 7 * 86_400
SUPPLY = 10**9 * 10**18
U64_MAX = (1 << 64) - 1
U256_MAX = (1 << 256) - 1
GRID = grid_id("complex-a")
REJECTED = keccak256(b"Rejected(string)")[:4]
GAS = 1_000_000
_secrets = itertools.count(1)


def new_key() -> PrivateKey:
    return private_key(keccak256(b"evm-test-%d" % next(_secrets)))


def cs(key_or_addr: PrivateKey | bytes) -> str:
    return to_checksum(address_of(key_or_addr) if isinstance(key_or_addr, PrivateKey) else key_or_addr)


@pytest.fixture(scope="module")
def artefacts() -> dict[str, Any]:
    return compile_contracts()


@pytest.fixture(scope="module")
def node() -> Iterator[Anvil]:
    with Anvil(chain_id=CHAIN_ID) as a:
        yield a


@dataclass
class Env:
    w3: Web3
    node: Anvil
    token: Any
    exchange: Any
    domain: Domain
    deployer: PrivateKey
    authority: PrivateKey
    maker: PrivateKey
    taker: PrivateKey

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def bal(self, who: PrivateKey | bytes | str) -> int:
        addr = who if isinstance(who, str) else cs(who)
        return int(self.token.functions.balanceOf(addr).call())

    def send(self, fn: Any, sender: PrivateKey) -> Any:
        tx = fn.transact({"from": cs(sender), "gas": GAS})
        return self.w3.eth.wait_for_transaction_receipt(tx)

    def ok(self, fn: Any, sender: PrivateKey) -> Any:
        rcpt = self.send(fn, sender)
        assert rcpt["status"] == 1
        return rcpt

    def snapshot(self) -> tuple[Any, ...]:
        who = [cs(k) for k in (self.maker, self.taker, self.authority)] + [self.exchange.address]
        return tuple(self.bal(a) for a in who)

    def reject(self, fn: Any, sender: PrivateKey, reason: str | None) -> None:
        """The call reverts with Rejected(reason) (reason None: reverts with no data), and the mined
        transaction fails without changing any balance."""
        assert revert_reason(self.w3, fn, sender) == reason
        before = self.snapshot()
        rcpt = self.send(fn, sender)
        assert rcpt["status"] == 0
        assert self.snapshot() == before

    def order(self, **kw: Any) -> Order:
        fields: dict[str, Any] = dict(nonce=1, expiry=self.now() + 3600, maker=address_of(self.maker),
                                      taker=ZERO_ADDRESS, wh=1500, interval_start=self.interval_start(),
                                      noia=3 * 10**18, grid=GRID)
        fields.update(kw)
        return Order(**fields)

    def interval_start(self) -> int:
        """An interval already over (settle needs block time >= start + INTERVAL)."""
        return (self.now() // INTERVAL) * INTERVAL - 2 * INTERVAL

    def fill_fn(self, signed: SignedOrder, exchange: Any = None) -> Any:
        return (exchange or self.exchange).functions.fill(order_tuple(signed.order), signed.signature)

    def filled(self, **kw: Any) -> tuple[Order, bytes]:
        order = self.order(**kw)
        signed = sign_order(order, self.domain, self.maker)
        self.ok(self.fill_fn(signed), self.taker)
        return order, order.digest(self.domain)

    def settle_fn(self, entries: list[tuple[bytes, int, int, int]], start: int, grid: bytes = GRID,
                  root: bytes = b"\x11" * 32) -> Any:
        return self.exchange.functions.settleBatch(grid, start, root, [list(e) for e in entries])


def order_tuple(o: Order) -> tuple[Any, ...]:
    return (o.nonce, o.expiry, to_checksum(o.maker), to_checksum(o.taker), o.wh, o.interval_start, o.noia, o.grid)


def revert_reason(w3: Web3, fn: Any, sender: PrivateKey) -> str | None:
    try:
        fn.call({"from": cs(sender), "gas": GAS})
    except Exception as exc:  # web3 wraps reverts in a few exception types: read the raw data
        data = _revert_data(exc)
        if not data:
            return None
        assert data[:4] == REJECTED, data.hex()
        return str(abi_decode(["string"], data[4:])[0])
    raise AssertionError("call did not revert")


def _revert_data(exc: Exception) -> bytes:
    for cand in (getattr(exc, "data", None), *exc.args):
        if isinstance(cand, dict):
            cand = cand.get("data")
        if isinstance(cand, (bytes, bytearray)):
            return bytes(cand)
        if isinstance(cand, str) and cand.startswith("0x"):
            return bytes.fromhex(cand[2:])
    return b""


def fund(node: Anvil, *keys: PrivateKey) -> None:
    for k in keys:
        node.rpc("anvil_setBalance", [cs(k), hex(10**20)])


def deploy(w3: Web3, artefacts: dict[str, Any], name: str, sender: PrivateKey, *args: Any) -> Any:
    c = w3.eth.contract(abi=artefacts[name]["abi"], bytecode=artefacts[name]["bytecode"])
    rcpt = w3.eth.wait_for_transaction_receipt(c.constructor(*args).transact({"from": cs(sender)}))
    assert rcpt["status"] == 1
    return w3.eth.contract(address=rcpt["contractAddress"], abi=artefacts[name]["abi"])


def make_env(node: Anvil, artefacts: dict[str, Any], deployer: PrivateKey | None = None,
             token_name: str = "NoiaToken") -> Env:
    w3 = Web3(Web3.HTTPProvider(node.url))
    deployer = deployer or new_key()
    authority, maker, taker = new_key(), new_key(), new_key()
    fund(node, deployer, authority, maker, taker)
    token = deploy(w3, artefacts, token_name, deployer, cs(deployer), SUPPLY)
    exchange = deploy(w3, artefacts, "Exchange", deployer, token.address, cs(authority), INTERVAL, SETTLE_TIMEOUT)
    env = Env(w3, node, token, exchange, Domain(CHAIN_ID, bytes.fromhex(exchange.address[2:])), deployer,
              authority, maker, taker)
    env.ok(token.functions.transfer(cs(taker), 1000 * 10**18), deployer)
    env.ok(token.functions.approve(exchange.address, U256_MAX), taker)
    return env


@pytest.fixture
def env(node: Anvil, artefacts: dict[str, Any]) -> Env:
    return make_env(node, artefacts)


# ---------------------------------------------------------------- fill


def test_typehashes_and_digest_match_python(env: Env) -> None:
    from gateway.validator.order import DOMAIN_TYPEHASH, ORDER_TYPEHASH
    ex = env.exchange.functions
    assert bytes(ex.ORDER_TYPEHASH().call()) == ORDER_TYPEHASH
    assert bytes(ex.DOMAIN_TYPEHASH().call()) == DOMAIN_TYPEHASH
    assert bytes(ex.domainSeparator().call()) == env.domain.separator
    for order in (env.order(), env.order(nonce=U256_MAX, expiry=U64_MAX, wh=U64_MAX, interval_start=U64_MAX,
                                         noia=U256_MAX, taker=address_of(env.taker), grid=b"\xff" * 32)):
        assert bytes(ex.orderDigest(order_tuple(order)).call()) == order.digest(env.domain)


def test_fill_escrows_under_the_order_digest(env: Env) -> None:
    order = env.order()
    signed = sign_order(order, env.domain, env.maker)
    t0 = env.bal(env.taker)
    rcpt = env.ok(env.fill_fn(signed), env.taker)
    fid = order.digest(env.domain)
    ev = env.exchange.events.Filled().process_receipt(rcpt, errors=DISCARD)[0]["args"]
    assert bytes(ev["fillId"]) == fid and ev["maker"] == cs(env.maker) and ev["taker"] == cs(env.taker)
    assert env.bal(env.taker) == t0 - order.noia and env.bal(env.exchange.address) == order.noia
    f = env.exchange.functions.fills(fid).call()
    assert (f[0], f[1], f[2], f[3], f[4], f[5], bytes(f[6])) == (
        cs(env.maker), order.wh, cs(env.taker), order.interval_start, 1, order.noia, GRID)
    assert env.exchange.functions.orderStatus(cs(env.maker), order.nonce).call() == 1


def test_signed_by_eth_account_is_accepted_too(env: Env) -> None:
    from eth_account import Account
    from eth_account.messages import encode_typed_data
    from gateway.validator.order import typed_data
    order = env.order(nonce=7)
    sig = Account.sign_message(encode_typed_data(full_message=typed_data(order, env.domain)),
                               env.maker.secret).signature
    env.ok(env.fill_fn(SignedOrder(order, bytes(sig))), env.taker)


def test_double_fill_rejected(env: Env) -> None:
    order = env.order()
    signed = sign_order(order, env.domain, env.maker)
    env.ok(env.fill_fn(signed), env.taker)
    env.reject(env.fill_fn(signed), env.taker, "order_already_filled")
    # another order with the same maker nonce (e.g. a new price) is the same nonce: also filled
    again = sign_order(env.order(noia=1), env.domain, env.maker)
    env.reject(env.fill_fn(again), env.taker, "order_already_filled")


def test_cancelled_order_rejected(env: Env) -> None:
    signed = sign_order(env.order(nonce=5), env.domain, env.maker)
    rcpt = env.ok(env.exchange.functions.cancel(5), env.maker)
    assert env.exchange.events.Cancelled().process_receipt(rcpt, errors=DISCARD)[0]["args"]["nonce"] == 5
    env.reject(env.fill_fn(signed), env.taker, "order_cancelled")
    env.reject(env.exchange.functions.cancel(5), env.maker, "order_cancelled")
    env.filled(nonce=6)
    env.reject(env.exchange.functions.cancel(6), env.maker, "order_already_filled")


def test_expired_order_rejected(env: Env) -> None:
    expiry = env.now() + 100
    signed = sign_order(env.order(expiry=expiry), env.domain, env.maker)
    env.node.rpc("evm_mine", [expiry])  # block time == expiry: expired (a fill needs time < expiry)
    env.reject(env.fill_fn(signed), env.taker, "order_expired")


def test_taker_and_amount_checks(env: Env) -> None:
    other = new_key()
    fund(env.node, other)
    restricted = sign_order(env.order(taker=address_of(other)), env.domain, env.maker)
    env.reject(env.fill_fn(restricted), env.taker, "order_taker_mismatch")
    env.reject(env.fill_fn(sign_order(env.order(wh=0), env.domain, env.maker)), env.taker, "zero_amount")
    env.reject(env.fill_fn(sign_order(env.order(noia=0), env.domain, env.maker)), env.taker, "zero_amount")
    env.reject(env.fill_fn(sign_order(env.order(), env.domain, env.maker)), env.maker, "self_fill")
    # a taker without the NOIA, and one that has it but did not approve the exchange
    env.reject(env.fill_fn(sign_order(env.order(taker=address_of(other)), env.domain, env.maker)), other,
               "insufficient_balance")
    env.ok(env.token.functions.transfer(cs(other), 10**19), env.deployer)
    env.reject(env.fill_fn(sign_order(env.order(taker=address_of(other)), env.domain, env.maker)), other,
               "insufficient_allowance")


def test_bad_signatures_rejected(env: Env) -> None:
    order = env.order()
    good = sign_order(order, env.domain, env.maker).signature
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    high_s = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - v,))  # the malleable twin
    assert s <= HALF_N < SECP256K1_N - s
    from coincurve import PublicKey
    # the twin is a valid ECDSA signature of the maker (a plain ecrecover would accept it) ...
    pub = PublicKey.from_signature_and_message(high_s[:64] + bytes((high_s[64] - 27,)), order.digest(env.domain),
                                               hasher=None)
    assert pub.format(False) == env.maker.public_key.format(False)
    # ... and the exchange rejects it, like the bundled chain
    cases = {
        "high_s": high_s,
        "v_0": good[:64] + bytes((v - 27,)),
        "v_29": good[:64] + bytes((29,)),
        "r_0": b"\x00" * 32 + good[32:],
        "s_0": r + b"\x00" * 32 + bytes((v,)),
        "short": good[:64],
        "long": good + b"\x00",
        "other_signer": sign_order(order, env.domain, env.taker).signature,
        "other_order": sign_order(env.order(noia=1), env.domain, env.maker).signature,
    }
    for name, sig in cases.items():
        assert revert_reason(env.w3, env.fill_fn(SignedOrder(order, sig)), env.taker) == "order_bad_signature", name
        env.reject(env.fill_fn(SignedOrder(order, sig)), env.taker, "order_bad_signature")
    # a zero maker with a signature that recovers to nothing
    zero = Order(**{**order.__dict__, "maker": ZERO_ADDRESS})
    env.reject(env.fill_fn(SignedOrder(zero, b"\x01" * 64 + b"\x1b")), env.taker, "order_bad_signature")
    env.ok(env.fill_fn(SignedOrder(order, good)), env.taker)


def test_replay_across_contracts_rejected(env: Env, artefacts: dict[str, Any]) -> None:
    second = deploy(env.w3, artefacts, "Exchange", env.deployer, env.token.address, cs(env.authority), INTERVAL,
                    SETTLE_TIMEOUT)
    env.ok(env.token.functions.approve(second.address, U256_MAX), env.taker)
    signed = sign_order(env.order(), env.domain, env.maker)  # for the first exchange
    env.reject(env.fill_fn(signed, second), env.taker, "order_bad_signature")
    env.ok(env.fill_fn(signed), env.taker)
    # signed for the second, it fills there only
    d2 = Domain(CHAIN_ID, bytes.fromhex(second.address[2:]))
    signed2 = sign_order(env.order(nonce=2), d2, env.maker)
    env.reject(env.fill_fn(signed2), env.taker, "order_bad_signature")
    env.ok(env.fill_fn(signed2, second), env.taker)


def test_replay_across_chain_ids_rejected(artefacts: dict[str, Any]) -> None:
    deployer = new_key()
    with Anvil(chain_id=CHAIN_ID) as a, Anvil(chain_id=CHAIN_ID + 1) as b:
        ea = make_env(a, artefacts, deployer)
        eb = make_env_on_chain(b, artefacts, deployer, CHAIN_ID + 1)
        # same deployer, same nonce: the exchange has the same address on both chains
        assert ea.exchange.address == eb.exchange.address
        eb.maker, eb.taker = ea.maker, new_key()
        fund(b, eb.maker, eb.taker)
        eb.ok(eb.token.functions.transfer(cs(eb.taker), 10**21), deployer)
        eb.ok(eb.token.functions.approve(eb.exchange.address, U256_MAX), eb.taker)
        signed = sign_order(ea.order(), ea.domain, ea.maker)  # chain A's domain
        assert revert_reason(eb.w3, eb.fill_fn(signed), eb.taker) == "order_bad_signature"
        assert eb.send(eb.fill_fn(signed), eb.taker)["status"] == 0
        ea.ok(ea.fill_fn(signed), ea.taker)
        # and the contract's own domain separator follows the chain id
        assert bytes(eb.exchange.functions.domainSeparator().call()) == eb.domain.separator != ea.domain.separator


def make_env_on_chain(node: Anvil, artefacts: dict[str, Any], deployer: PrivateKey, chain_id: int) -> Env:
    e = make_env(node, artefacts, deployer)
    e.domain = Domain(chain_id, bytes.fromhex(e.exchange.address[2:]))
    return e


# ---------------------------------------------------------------- settle


def test_settle_pays_maker_and_refunds_taker(env: Env) -> None:
    o1, f1 = env.filled(nonce=1, noia=3 * 10**18)
    o2, f2 = env.filled(nonce=2, noia=5 * 10**18)
    m0, t0 = env.bal(env.maker), env.bal(env.taker)
    entries = sorted([(f1, 1000, 2 * 10**18, 10**18), (f2, o2.wh, o2.noia, 0)])
    rcpt = env.ok(env.settle_fn(entries, o1.interval_start), env.authority)
    assert env.bal(env.maker) == m0 + 2 * 10**18 + o2.noia
    assert env.bal(env.taker) == t0 + 10**18
    assert env.bal(env.exchange.address) == 0  # payment + refund == escrow, nothing left behind
    settled = env.exchange.events.Settled().process_receipt(rcpt, errors=DISCARD)
    assert sorted((bytes(e["args"]["fillId"]), e["args"]["deliveredWh"]) for e in settled) == sorted(
        [(f1, 1000), (f2, o2.wh)])
    f = env.exchange.functions.fills(f1).call()
    assert (f[4], f[5], f[7], f[8], f[9]) == (2, 0, 1000, 2 * 10**18, 10**18)
    assert bytes(env.exchange.functions.evidenceRoot(GRID, o1.interval_start).call()) == b"\x11" * 32
    # each fill settles once, also inside a later batch with the same evidence root
    env.reject(env.settle_fn([(f1, 0, 0, o1.noia)], o1.interval_start), env.authority, "fill_already_settled")


def test_unauthorised_settlement_rejected(env: Env) -> None:
    o, f = env.filled()
    for who in (env.maker, env.taker, env.deployer):
        env.reject(env.settle_fn([(f, 0, 0, o.noia)], o.interval_start), who, "not_authority")
    env.ok(env.settle_fn([(f, 0, 0, o.noia)], o.interval_start), env.authority)


def test_settle_entry_checks(env: Env) -> None:
    o, f = env.filled(nonce=1)
    start = o.interval_start
    bad = [
        ([(f, o.wh + 1, o.noia, 0)], start, GRID, "delivered_exceeds_order"),
        ([(f, o.wh, o.noia - 1, 0)], start, GRID, "settle_amount_mismatch"),
        ([(f, o.wh, o.noia, 1)], start, GRID, "settle_amount_mismatch"),
        ([(f, o.wh, o.noia, 0)], start - INTERVAL, GRID, "interval_mismatch"),
        ([(f, o.wh, o.noia, 0)], start, grid_id("other"), "grid_mismatch"),
        ([(b"\x42" * 32, 0, 0, 0)], start, GRID, "unknown_fill"),
        ([], start, GRID, "bad_field"),
        ([(f, 0, 0, o.noia), (f, 0, 0, o.noia)], start, GRID, "non_canonical"),
    ]
    for entries, s, grid, reason in bad:
        env.reject(env.settle_fn(entries, s, grid), env.authority, reason)
    # an interval still open, with a fill in it
    now = env.now()
    o2, f2 = env.filled(nonce=2, interval_start=now - now % INTERVAL)
    env.reject(env.settle_fn([(f2, 0, 0, o2.noia)], o2.interval_start), env.authority, "interval_not_over")
    # one bad entry rejects the whole batch: the good one stays escrowed
    o3, f3 = env.filled(nonce=3)
    batch = sorted([(f, o.wh, o.noia, 0), (f3, o3.wh + 1, o3.noia, 0)])
    env.reject(env.settle_fn(batch, start), env.authority, "delivered_exceeds_order")
    assert env.exchange.functions.fills(f).call()[4] == 1
    # the interval's evidence root is fixed by its first batch
    env.ok(env.settle_fn([(f, o.wh, o.noia, 0)], start, root=b"\x01" * 32), env.authority)
    env.reject(env.settle_fn([(f3, 0, 0, o3.noia)], start, root=b"\x02" * 32), env.authority,
               "evidence_root_conflict")
    env.ok(env.settle_fn([(f3, 0, 0, o3.noia)], start, root=b"\x01" * 32), env.authority)


def test_arithmetic_limits(env: Env) -> None:
    o, f = env.filled(nonce=1)
    start = o.interval_start
    # payment + refund wraps to the escrow modulo 2**256: rejected, not a panic, not a payout
    wrap = (U256_MAX, o.noia + 1)
    assert (wrap[0] + wrap[1]) % (1 << 256) == o.noia
    env.reject(env.settle_fn([(f, 0, *wrap)], start), env.authority, "settle_amount_mismatch")
    env.reject(env.settle_fn([(f, 0, wrap[1], wrap[0])], start), env.authority, "settle_amount_mismatch")
    env.reject(env.settle_fn([(f, 0, U256_MAX, U256_MAX)], start), env.authority, "settle_amount_mismatch")
    env.reject(env.settle_fn([(f, U64_MAX, o.noia, 0)], start), env.authority, "delivered_exceeds_order")
    # start + interval computed without overflow: the last uint64 interval is just not over
    env.reject(env.settle_fn([(f, 0, 0, o.noia)], U64_MAX), env.authority, "interval_not_over")
    # the largest order: its escrow would exceed any balance
    huge = sign_order(env.order(nonce=2, noia=U256_MAX, wh=U64_MAX), env.domain, env.maker)
    env.reject(env.fill_fn(huge), env.taker, "insufficient_balance")
    # a uint64 field above 2**64 - 1 in raw calldata: the ABI decoder reverts before any rule
    calldata = bytearray(bytes.fromhex(env.fill_fn(sign_order(env.order(nonce=3), env.domain, env.maker))
                                       ._encode_transaction_data()[2:]))
    word = 4 + 32 * 4  # selector, then nonce, expiry, maker, taker, wh: wh is word 4
    assert int.from_bytes(calldata[word:word + 32], "big") == 1500
    calldata[word:word + 32] = (1 << 64).to_bytes(32, "big")
    tx = {"from": cs(env.taker), "to": env.exchange.address, "data": "0x" + calldata.hex(), "gas": GAS}
    with pytest.raises(Exception):
        env.w3.eth.call(tx)
    before = env.snapshot()
    rcpt = env.w3.eth.wait_for_transaction_receipt(env.w3.eth.send_transaction(tx))
    assert rcpt["status"] == 0 and env.snapshot() == before
    env.ok(env.settle_fn([(f, o.wh, o.noia, 0)], start), env.authority)


def test_money_is_conserved(env: Env) -> None:
    holders = [cs(env.deployer), cs(env.maker), cs(env.taker), cs(env.authority), env.exchange.address]
    total = lambda: sum(env.bal(h) for h in holders)  # noqa: E731
    assert total() == SUPPLY
    o, f = env.filled(nonce=1)
    o2, f2 = env.filled(nonce=2)
    assert total() == SUPPLY
    env.ok(env.settle_fn(sorted([(f, 10, 1, o.noia - 1), (f2, 0, 0, o2.noia)]), o.interval_start), env.authority)
    assert total() == SUPPLY and env.bal(env.exchange.address) == 0


# ---------------------------------------------------------------- reentrancy


def test_reentrancy_from_a_hostile_token_is_refused(node: Anvil, artefacts: dict[str, Any]) -> None:
    env = make_env(node, artefacts, token_name="ReentrantToken")
    tok = env.token.functions
    # during fill's transferFrom, the token tries to fill a second order
    second = sign_order(env.order(nonce=2), env.domain, env.maker)
    env.ok(tok.arm(env.exchange.address, env.fill_fn(second)._encode_transaction_data()), env.deployer)
    o1, f1 = env.filled(nonce=1)
    assert tok.reentered().call() and not tok.innerSuccess().call()
    inner = bytes(tok.innerResult().call())
    assert inner[:4] == REJECTED and abi_decode(["string"], inner[4:])[0] == "reentrancy"
    assert env.exchange.functions.orderStatus(cs(env.maker), 2).call() == 0
    assert env.bal(env.exchange.address) == o1.noia
    # during settle's transfers, the token tries to settle the same fill again
    env2 = make_env(node, artefacts, token_name="ReentrantToken")
    o, f = env2.filled(nonce=1)
    again = env2.settle_fn([(f, 0, 0, o.noia)], o.interval_start)._encode_transaction_data()
    env2.ok(env2.token.functions.arm(env2.exchange.address, again), env2.deployer)
    t0 = env2.bal(env2.taker)
    env2.ok(env2.settle_fn([(f, 0, 0, o.noia)], o.interval_start), env2.authority)
    t2 = env2.token.functions
    assert t2.reentered().call() and not t2.innerSuccess().call()
    inner = bytes(t2.innerResult().call())
    assert abi_decode(["string"], inner[4:])[0] == "reentrancy"
    assert env2.bal(env2.taker) == t0 + o.noia and env2.bal(env2.exchange.address) == 0
