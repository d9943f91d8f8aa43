"""The differential day: one scripted day through the chain client on the bundled validator and on
anvil, step by step; both end with the same balances, escrows, settlements, order states and settled
intervals, and every step has the same outcome and rejection reason on both.

Bundled: a real single-authority validator (gateway/validator/node.py, 0.2 s blocks) in process with
JSON-RPC over loopback, through ``BundledBackend``. EVM: NoiaToken + Exchange on a real anvil (0.2 s
blocks, ``finalized`` two blocks behind), through ``EvmBackend``. Same keys, same starting balances,
same orders (each signed for its chain's domain, so the fill ids differ and are compared by name).
The phases run on both chains at once; inside a phase, steps go in submission order per sender.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.chain_client import BundledBackend, Intent, Outbox, OutboxChainClient, StaticKeyring
from gateway.chain_client.evm import EvmBackend
from gateway.validator import tx as chain_tx
from gateway.validator.crypto import keccak256
from gateway.validator.genesis import DEFAULT_SETTLE_TIMEOUT, parse_genesis
from gateway.validator.node import Node
from gateway.validator.order import Domain, grid_id, sign_order
from gateway.validator.state import CANCELLED, FILLED, interval_key, order_key
from gateway.validator.tx import Cancel, Fill, SettleBatch, Settlement
from tests.evm.evm_kit import CONFIG, evm_chain
from tests.gateway.validator import kit
from tests.gateway.validator.netkit import START, genesis_doc, node_configs

I = kit.INTERVAL
HAS_RECLAIM = hasattr(chain_tx, "Reclaim")
C = kit.COMPLEX
R1, R2, R3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
OTHER_GRID = grid_id("another-complex")

# name: maker, order nonce, and what differs from kit.order's defaults (interval by name, "past" expiry,
# the key that signs when it is not the maker's)
ORDERS: dict[str, dict[str, Any]] = {
    "A": dict(maker=3, nonce=11, noia=5000, wh=800, interval="S1"),
    "B": dict(maker=5, nonce=12, noia=3000, wh=500, interval="S1", taker=6),
    "C": dict(maker=2, nonce=13, noia=4000, wh=600, interval="S1"),
    "D": dict(maker=4, nonce=14, noia=1000, wh=100, interval="NEXT"),
    "E": dict(maker=5, nonce=15, noia=2000, wh=300, interval="S2"),
    "R": dict(maker=6, nonce=16, noia=1500, wh=200, interval="OLD"),
    "BADSIG": dict(maker=3, nonce=40, signer=4),
    "EXPIRED": dict(maker=5, nonce=41, expiry="past"),
    "SELF": dict(maker=4, nonce=42),
    "TAKER": dict(maker=2, nonce=43, taker=6),
    "BIG": dict(maker=3, nonce=44, noia=10**30),
    "ZERO": dict(maker=2, nonce=45, wh=0),
    "CXL": dict(maker=7, nonce=31),
}

# (step, sender, action, expected reason or None for final); actions are tuples read by Side.action
PHASES: list[list[tuple[str, int, tuple[Any, ...], str | None]]] = [
    [("pay", 2, ("transfer", 3, 1000), None),
     ("fill A", 4, ("fill", "A"), None), ("fill B", 6, ("fill", "B"), None), ("fill C", 7, ("fill", "C"), None),
     ("fill D", 3, ("fill", "D"), None), ("fill E", 4, ("fill", "E"), None), ("fill R", 2, ("fill", "R"), None),
     ("cancel 31", 7, ("cancel", 31), None),
     ("bad signature", 5, ("fill", "BADSIG"), "order_bad_signature"),
     ("expired order", 7, ("fill", "EXPIRED"), "order_expired"),
     ("self fill", 4, ("fill", "SELF"), "self_fill"),
     ("taker mismatch", 7, ("fill", "TAKER"), "order_taker_mismatch"),
     ("overspend transfer", 7, ("transfer", 2, 10**30), "insufficient_balance"),
     ("overspend fill", 6, ("fill", "BIG"), "insufficient_balance"),
     ("zero amount", 3, ("fill", "ZERO"), "zero_amount")],
    [("double fill", 5, ("fill", "A"), "order_already_filled"),
     ("cancelled order", 3, ("fill", "CXL"), "order_cancelled"),
     ("cancel a filled order", 3, ("cancel", 11), "order_already_filled"),
     ("unauthorised settlement", 2, ("settle", "S1", R1, [("A", 600, 3750, 1250)]), "not_authority"),
     ("interval not over", C, ("settle", "NEXT", R1, [("D", 100, 1000, 0)]), "interval_not_over"),
     ("settle S1: partial delivery and refunds", C,
      ("settle", "S1", R1, [("A", 600, 3750, 1250), ("B", 500, 3000, 0), ("C", 0, 0, 4000)]), None)],
    [("double settlement", C, ("settle", "S1", R1, [("A", 600, 3750, 1250)]), "fill_already_settled"),
     ("evidence root conflict", C, ("settle", "S1", R2, [("B", 500, 3000, 0)]), "evidence_root_conflict"),
     ("unknown fill", C, ("settle", "S2", R3, [("nothing", 1, 1, 0)]), "unknown_fill"),
     ("amount mismatch", C, ("settle", "S2", R3, [("E", 300, 1500, 400)]), "settle_amount_mismatch"),
     ("delivered exceeds order", C, ("settle", "S2", R3, [("E", 301, 2000, 0)]), "delivered_exceeds_order"),
     ("interval mismatch", C, ("settle", "S2", R3, [("D", 1, 1000, 0)]), "interval_mismatch"),
     ("grid mismatch", C, ("settle", "S2", R3, [("E", 1, 2000, 0)], OTHER_GRID), "grid_mismatch"),
     ("settle S2", C, ("settle", "S2", R3, [("E", 200, 1333, 667)]), None),
     ("overspend after the day", 4, ("transfer", 6, 10**24), "insufficient_balance"),
     ("pay after the day", 4, ("transfer", 6, 7), None)],
]
if HAS_RECLAIM:
    PHASES[1] += [("reclaim too early", 5, ("reclaim", "D"), "reclaim_too_early"),
                  ("reclaim after the settle timeout", 3, ("reclaim", "R"), None)]
    PHASES[2] += [("settle a reclaimed fill", C, ("settle", "OLD", R1, [("R", 200, 1500, 0)]), "fill_reclaimed"),
                  ("reclaim twice", 5, ("reclaim", "R"), "fill_reclaimed"),
                  ("reclaim a settled fill", 5, ("reclaim", "A"), "fill_already_settled")]


@dataclass
class Side:
    """One chain: its client, its exchange domain, and the fill ids of the named orders on it."""
    name: str
    client: OutboxChainClient
    domain: Domain
    clock: dict[str, int]
    fids: dict[str, bytes] = field(default_factory=dict)

    def order_fill(self, name: str) -> Fill:
        spec = dict(ORDERS[name])
        maker, nonce, signer = spec.pop("maker"), spec.pop("nonce"), spec.pop("signer", None)
        spec["interval_start"] = self.clock[spec.pop("interval", "S1")]
        spec["expiry"] = self.clock["now"] - 100 if spec.get("expiry") == "past" else self.clock["now"] + 3600
        o = kit.order(maker, nonce, **spec)
        self.fids[name] = o.digest(self.domain)
        return Fill(sign_order(o, self.domain, kit.key(signer if signer is not None else maker)))

    def fid(self, name: str) -> bytes:
        return self.fids.get(name) or keccak256(name.encode())

    def action(self, a: tuple[Any, ...]) -> Any:
        if a[0] == "transfer":
            return kit.transfer(a[1], a[2])
        if a[0] == "fill":
            return self.order_fill(a[1])
        if a[0] == "cancel":
            return Cancel(a[1])
        if a[0] == "reclaim":
            return chain_tx.Reclaim(self.fid(a[1]))  # type: ignore[attr-defined]
        _, interval, root, entries, *grid = a
        es = sorted((Settlement(self.fid(n), d, p, r) for n, d, p, r in entries), key=lambda e: e.fill_id)
        return SettleBatch(grid[0] if grid else kit.GRID, self.clock[interval], root, tuple(es))

    async def run_phase(self, phase: list[tuple[str, int, tuple[Any, ...], str | None]]) -> dict[str, Any]:
        ids = [await self.client.submit(Intent(step, kit.addr(sender), self.action(a)))
               for step, sender, a, _ in phase]
        rs = await asyncio.gather(*(self.client.wait_final(i, 60) for i in ids))
        return {r.id: (r.status, r.reason) for r in rs}


def clock(now: int) -> dict[str, int]:
    base = now // I * I
    return {"now": now, "S1": base - 2 * I, "S2": base - 3 * I, "NEXT": base + I,
            "OLD": base - DEFAULT_SETTLE_TIMEOUT - 4 * I}


def test_the_same_day_on_the_bundled_chain_and_on_anvil_ends_identically(tmp_path: Path) -> None:
    keys = StaticKeyring([kit.key(i) for i in range(10)])

    async def go() -> None:
        g = parse_genesis(genesis_doc(1, 0.2))
        node = Node(node_configs(tmp_path, g, 1)[0])
        await node.start()
        assert node.rpc_address is not None
        url = f"http://{node.rpc_address[0]}:{node.rpc_address[1]}/"
        bb = BundledBackend.from_genesis(url, g, timeout=5)
        with evm_chain(tmp_path, balances={kit.key(i): START for i in kit.USERS},
                       settle_timeout=DEFAULT_SETTLE_TIMEOUT) as ev:
            eb = EvmBackend(ev.url, ev.deployment)
            await eb.attach()
            t = clock(int(time.time()))
            sides = [Side("bundled", OutboxChainClient(bb, Outbox(tmp_path / "b.db", bb.name), keys, config=CONFIG),
                          bb.domain, t),
                     Side("evm", OutboxChainClient(eb, Outbox(tmp_path / "e.db", eb.name), keys, config=CONFIG),
                          eb.domain, t)]
            for s in sides:
                s.client.start()
            try:
                outcomes: list[dict[str, Any]] = [{}, {}]
                for phase in PHASES:
                    res = await asyncio.gather(*(s.run_phase(phase) for s in sides))
                    for k in (0, 1):
                        outcomes[k].update(res[k])
                expected = {step: ("final", None) if want is None else ("rejected", want)
                            for phase in PHASES for step, _, _, want in phase}
                assert outcomes[0] == expected                      # the bundled chain did what the rules say
                assert outcomes[1] == outcomes[0]                   # and the EVM exchange did the same
                state = [await snapshot(s, node) for s in sides]
                assert state[1] == state[0]
                bal = state[0]["balances"]
                assert bal[kit.addr(3)] == START + 1000 - 1000 + 3750          # paid; escrowed D; maker of A
                assert sum(bal.values()) == len(kit.USERS) * START - 1000     # conserved; D's escrow still open
                assert state[0]["escrows"]["D"] is not None and state[0]["intervals"]["S1"] == R1
            finally:
                for s in sides:
                    await s.client.aclose()
                    s.client.outbox.close()
        await node.stop()

    asyncio.run(go())


async def snapshot(side: Side, node: Node) -> dict[str, Any]:
    """What the chain holds at the end, in backend-neutral terms (fills by name)."""
    b = side.client.backend
    people = [kit.addr(i) for i in (*kit.USERS, kit.COMPLEX)]
    out: dict[str, Any] = {"balances": {a: await b.balance(a) for a in people}, "escrows": {}, "fills": {},
                           "orders": {}, "intervals": {}}
    for name in ("A", "B", "C", "D", "E", "R"):
        e = await b.escrow(side.fids[name])
        out["escrows"][name] = None if e is None else (e.maker, e.taker, e.noia, e.wh, e.interval_start, e.grid)
        out["fills"][name] = await fill_state(side, side.fids[name])
    for name, spec in ORDERS.items():
        out["orders"][name] = await order_state(side, node, kit.addr(spec["maker"]), spec["nonce"])
    out["orders"]["cancel 31"] = await order_state(side, node, kit.addr(7), 31)
    for iv in ("S1", "S2", "NEXT", "OLD"):
        out["intervals"][iv] = await interval_state(side, node, side.clock[iv])
    return out


async def fill_state(side: Side, fid: bytes) -> Any:
    b = side.client.backend
    if isinstance(b, EvmBackend):
        f = await b.fill_record(fid)
        if f is None:
            return None
        return (f.status, f.delivered_wh, f.payment, f.refund) if f.status == "settled" else (
            (f.status, f.refund) if f.status == "reclaimed" else (f.status,))
    assert isinstance(b, BundledBackend)
    r = await b.rpc.call("chain_getEscrow", "0x" + fid.hex())
    if r is None:
        return None
    if r["status"] == "settled":
        return ("settled", int(r["deliveredWh"]), int(r["payment"]), int(r["refund"]))
    if r["status"] == "reclaimed":
        return ("reclaimed", int(r["refund"]))
    return (r["status"],)


async def order_state(side: Side, node: Node, maker: bytes, nonce: int) -> str:
    b = side.client.backend
    if isinstance(b, EvmBackend):
        return await b.order_status(maker, nonce)
    v = node.store.get(order_key(maker, nonce))
    return {None: "open", FILLED: "filled", CANCELLED: "cancelled"}[v]


async def interval_state(side: Side, node: Node, start: int) -> bytes | None:
    b = side.client.backend
    if isinstance(b, EvmBackend):
        return await b.interval_root(kit.GRID, start)
    return node.store.get(interval_key(kit.GRID, start))
