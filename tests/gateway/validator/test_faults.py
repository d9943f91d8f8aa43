"""Faults on a 4-validator network of real processes over loopback, under a small load.

Each validator is ``metanoia validator run`` (0.3 s blocks, signature checks in the
node process). A load generator submits transfers over JSON-RPC to whichever
nodes are up and, like the chain client's outbox, resubmits what is not final
(idempotent by tx hash). Faults: kill -9 and restart, SIGSTOP/SIGCONT,
partition (all connections dropped) and heal, the proposer killed mid-round,
2 of 4 down (no blocks) then one back (blocks resume). At the end every node's
chain is compared block by block and every accepted tx must be final exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import aiohttp

from gateway.validator.crypto import keccak256

from . import kit
from .netkit import Proc, free_ports, genesis_doc, rpc

BT = 0.3


class Net:
    def __init__(self, tmp: Path, n: int = 4) -> None:
        gpath = tmp / "genesis.json"
        gpath.write_text(json.dumps(genesis_doc(n, BT)))
        ports = free_ports(2 * n)
        p2p = [("127.0.0.1", ports[i]) for i in range(n)]
        self.procs = [Proc(tmp, i, gpath, p2p[i], [p for j, p in enumerate(p2p) if j != i], ports[n + i], BT)
                      for i in range(n)]
        self.up = set(range(n))
        self.accepted: dict[bytes, bytes] = {}      # tx hash -> raw
        self.nonces = {u: 0 for u in kit.USERS}
        self.stop_load = False
        self.session: aiohttp.ClientSession | None = None

    async def call(self, i: int, method: str, *params, timeout: float = 3.0):
        assert self.session is not None
        return await asyncio.wait_for(rpc(self.session, self.procs[i].url, method, *params), timeout)

    async def try_call(self, i: int, method: str, *params, timeout: float = 3.0):
        try:
            return await self.call(i, method, *params, timeout=timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None

    def start(self, i: int) -> None:
        self.procs[i].start()
        self.up.add(i)

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.up.discard(i)

    async def height(self, i: int) -> int:
        st = await self.try_call(i, "chain_status")
        return -1 if st is None else st["height"]

    async def heights(self) -> dict[int, int]:
        return {i: await self.height(i) for i in sorted(self.up)}

    async def wait_up(self, i: int, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if await self.height(i) >= 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"node {i} did not come up: {(self.procs[i].tmp / f'node{i}.log').read_text()[-2000:]}")

    async def progress(self, nodes: list[int], blocks: int = 2, timeout: float = 8.0) -> float:
        """Seconds until every node in ``nodes`` is ``blocks`` above the current max height."""
        t0 = time.monotonic()
        base = max((await self.heights()).values())
        while time.monotonic() - t0 < timeout:
            hs = [await self.height(i) for i in nodes]
            if min(hs) >= base + blocks:
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
        raise AssertionError(f"no progress on {nodes} in {timeout}s: base {base}, now {await self.heights()}")

    async def load(self) -> None:
        """Transfers from the test users, each to a random live node; errors: try another node."""
        rng = random.Random(1)
        while not self.stop_load:
            u = rng.choice(list(kit.USERS))
            raw = kit.raw_tx(u, self.nonces[u], kit.transfer(rng.choice([x for x in kit.USERS if x != u]), 1))
            for _ in range(4):
                live = sorted(self.up)
                if not live:
                    break
                res = await self.try_call(rng.choice(live), "chain_sendRawTransaction", "0x" + raw.hex(), timeout=2)
                if isinstance(res, str):
                    self.accepted[bytes.fromhex(res[2:])] = raw
                    self.nonces[u] += 1
                    break
            await asyncio.sleep(0.02)

    async def settle(self, timeout: float = 30.0) -> None:
        """The outbox's job: resubmit what is not final until it is (idempotent)."""
        end = time.monotonic() + timeout
        live = sorted(self.up)
        while time.monotonic() < end:
            missing = []
            for h, raw in self.accepted.items():
                st = await self.try_call(live[0], "chain_getTransactionStatus", "0x" + h.hex())
                if st is None or st["status"] != "final":
                    missing.append(raw)
            if not missing:
                return
            for raw in missing:
                for i in live:
                    await self.try_call(i, "chain_sendRawTransaction", "0x" + raw.hex())
            await asyncio.sleep(1.0)
        raise AssertionError(f"{len(missing)} accepted txs never became final")

    async def check_chains(self) -> int:
        """Same block at every height on every node; every accepted tx in exactly one block."""
        live = sorted(self.up)
        top = min((await self.heights()).values())
        seen: dict[bytes, int] = {}
        for n in range(1, top + 1):
            blocks = [await self.call(i, "chain_getBlockByNumber", n, True) for i in live]
            hashes = {b["hash"] for b in blocks}
            assert len(hashes) == 1, f"conflicting final blocks at height {n}: {hashes}"
            assert len(blocks[0]["certificate"]["signers"]) >= 3
            for t in blocks[0]["transactions"]:
                h = keccak256(bytes.fromhex(t[2:]))
                assert h not in seen, f"tx {h.hex()} in blocks {seen[h]} and {n}"
                seen[h] = n
        for h in self.accepted:
            assert h in seen, f"accepted tx {h.hex()} not final"
        return top

    def close(self) -> None:
        for p in self.procs:
            p.stop()


def run_net(tmp_path: Path, scenario) -> None:
    async def main() -> None:
        n = Net(tmp_path)
        for i in range(4):
            n.start(i)
        n.session = aiohttp.ClientSession()
        try:
            for i in range(4):
                await n.wait_up(i)
            await scenario(n)
        finally:
            n.stop_load = True
            await n.session.close()
            n.close()
    asyncio.run(main())


def test_kill9_pause_partition_heal_under_load(tmp_path):
    run_net(tmp_path, _kill_pause_partition)


async def _kill_pause_partition(net: Net) -> None:
    await net.progress([0, 1, 2, 3])
    loader = asyncio.create_task(net.load())
    # kill -9 one and restart it: the others go on, it catches up
    net.kill(1)
    assert await net.progress([0, 2, 3]) < 5
    net.start(1)
    await net.wait_up(1)
    await net.progress([0, 1, 2, 3], timeout=10)
    # pause one (SIGSTOP) and resume it
    net.procs[2].signal(signal.SIGSTOP)
    net.up.discard(2)
    assert await net.progress([0, 1, 3]) < 5
    net.procs[2].signal(signal.SIGCONT)
    net.up.add(2)
    await net.progress([0, 1, 2, 3], timeout=10)
    # partition one (every connection dropped, none accepted) and heal
    assert await net.call(3, "debug_setPartitioned", True) is True
    h3 = await net.height(3)
    assert await net.progress([0, 1, 2]) < 5
    assert await net.height(3) <= h3 + 1          # alone, it cannot finalise anything
    await net.call(3, "debug_setPartitioned", False)
    await net.progress([0, 1, 2, 3], timeout=10)
    net.stop_load = True
    await loader
    assert len(net.accepted) > 20
    await net.settle()
    top = await net.check_chains()
    assert top > 10
    st = await net.call(0, "chain_status")
    assert st["validatorsUp"] == 4


def test_proposer_killed_mid_round_and_two_down_stops_then_resumes(tmp_path):
    run_net(tmp_path, _proposer_and_two_down)


async def _proposer_and_two_down(net: Net) -> None:
    await net.progress([0, 1, 2, 3])
    loader = asyncio.create_task(net.load())
    await asyncio.sleep(1.0)
    # kill the proposer of the next height while the current one is in progress
    st = await net.call(0, "chain_status")
    nxt = st["consensusHeight"] + 1
    victim = nxt % 4                          # round 0 proposer of that height: authorities[(h + r) % n]
    net.kill(victim)
    others = [i for i in range(4) if i != victim]
    assert await net.progress(others, timeout=10) < 8   # round change past the silent proposer
    # now a second one down: 2 of 4 -> no blocks
    second = others[0]
    net.kill(second)
    await asyncio.sleep(1.0)
    live = [i for i in range(4) if i not in (victim, second)]
    h_before = {i: await net.height(i) for i in live}
    await asyncio.sleep(2.5)
    h_after = {i: await net.height(i) for i in live}
    assert all(h_after[i] <= h_before[i] + 0 for i in live), (h_before, h_after)
    # one comes back: 3 of 4, blocks resume with nothing lost
    net.start(second)
    await net.wait_up(second)
    assert await net.progress(live + [second], timeout=15) < 15
    net.start(victim)
    await net.wait_up(victim)
    await net.progress([0, 1, 2, 3], timeout=15)
    net.stop_load = True
    await loader
    await net.settle()
    await net.check_chains()


def test_accepted_tx_survives_the_accepting_node_being_killed(tmp_path):
    run_net(tmp_path, _accepted_then_killed)


async def _final_on(net: Net, nodes: list[int], h: bytes, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sts = [await net.try_call(i, "chain_getTransactionStatus", "0x" + h.hex()) for i in nodes]
        if all(st is not None and st["status"] == "final" for st in sts):
            return True
        await asyncio.sleep(0.1)
    return False


async def _accepted_then_killed(net: Net) -> None:
    """No load generator and no resubmission: each tx is sent once, to one node, which is then killed."""
    await net.progress([0, 1, 2, 3])
    u = kit.USERS[0]
    # 1. relay: a connected node accepts a tx and is killed at once (not restarted); the others finalise it
    st = await net.call(0, "chain_status")
    x = next(i for i in (1, 2, 3) if i != (st["consensusHeight"] + 1) % 4)    # not the next proposer
    raw_a = kit.raw_tx(u, 0, kit.transfer(kit.USERS[1], 7))
    ha = await net.call(x, "chain_sendRawTransaction", "0x" + raw_a.hex())
    net.kill(x)
    others = [i for i in range(4) if i != x]
    assert await _final_on(net, others, bytes.fromhex(ha[2:]), 10), "relayed tx not final"
    net.start(x)
    await net.wait_up(x)
    # 2. durability: a node cut off from every peer (nothing can be relayed) accepts a tx, is killed -9
    # and restarted: the tx comes back from its intake log, is relayed and becomes final exactly once
    y = others[0]
    assert await net.call(y, "debug_setPartitioned", True) is True
    raw_b = kit.raw_tx(u, 1, kit.transfer(kit.USERS[2], 9))
    hb = await net.call(y, "chain_sendRawTransaction", "0x" + raw_b.hex())
    net.kill(y)
    await asyncio.sleep(1.0)
    for i in (i for i in range(4) if i != y):
        st = await net.call(i, "chain_getTransactionStatus", hb)
        assert st["status"] == "unknown", st        # it really was only at the killed node
    net.start(y)
    await net.wait_up(y)
    assert await _final_on(net, [0, 1, 2, 3], bytes.fromhex(hb[2:]), 15), "logged tx not final after restart"
    net.accepted = {bytes.fromhex(ha[2:]): raw_a, bytes.fromhex(hb[2:]): raw_b}
    await net.progress([0, 1, 2, 3])
    await net.check_chains()
    st = await net.call(y, "chain_status")
    assert st["counters"].get("intake_log_reloaded", 0) >= 1
