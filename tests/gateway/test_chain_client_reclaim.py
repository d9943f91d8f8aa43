"""The ``Reclaim`` intent: canonical JSON, and through the outbox client on the REAL bundled validator.

The node is the validator itself (in-process ``Node``, JSON-RPC over loopback TCP), as in
tests/gateway/test_chain_client_node.py. Its genesis has the default 7-day settle timeout; the kit's
orders deliver in an interval of 2023, long past it, and an order for the current interval is not.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.chain_client import REJECTED, Intent
from gateway.chain_client.intents import action_from_json, action_to_json, intent_from_json, intent_to_json
from gateway.validator.genesis import load_genesis
from gateway.validator.tx import Reclaim, SettleBatch, Settlement
from tests.gateway.validator import kit
from tests.gateway.validator.netkit import START, free_ports

from .test_chain_client_node import FAR, ROOT, Chain, make_client, real_node


def test_reclaim_intent_round_trips_as_canonical_json() -> None:
    i = Intent("reclaim:" + "ab" * 32, kit.addr(3), Reclaim(b"\xab" * 32))
    assert i.kind == "reclaim"
    assert action_to_json(i.action) == {"kind": "reclaim", "fill_id": "0x" + "ab" * 32}
    assert intent_from_json(intent_to_json(i)) == i
    for bad in ("0x" + "ab" * 31, "0x" + "ab" * 33):
        with pytest.raises(ValueError):
            action_from_json({"kind": "reclaim", "fill_id": bad})


@pytest.mark.parametrize("reason", ["fill_reclaimed", "reclaim_too_early"])
def test_reclaim_reasons_are_known_to_the_client(reason: str) -> None:
    """Read from data, from a bare data string, or from the ``reason: detail`` message of any code."""
    from gateway.chain_client import errors as CE
    for exc in (CE.rpc_error(-32000, "rejected", {"reason": reason}), CE.rpc_error(-32000, "rejected", reason),
                CE.rpc_error(-32099, f"{reason}: block time 5 < 9")):
        assert type(exc) is CE.TxRejected and exc.reason == reason


def test_reclaim_on_the_real_node_refunds_once_and_closes_the_fill(tmp_path):
    async def go() -> None:
        async with real_node(tmp_path) as (node, g, chain):
            async with make_client(tmp_path / "gw.db", chain.url, g) as c:
                dom = g.params().domain
                old = kit.order(2, nonce=1, noia=4000, wh=700, expiry=FAR)   # interval of 2023: past the timeout
                now_start = int(time.time()) // kit.INTERVAL * kit.INTERVAL
                fresh = kit.order(2, nonce=2, noia=900, expiry=FAR, interval_start=now_start)
                fid, fid2 = old.digest(dom), fresh.digest(dom)
                for o, f in ((old, fid), (fresh, fid2)):
                    r = await c.wait_final(await c.submit(Intent("fill:" + f.hex(), kit.addr(3), kit.fill(o))), 10)
                    assert r.ok
                assert await chain.balance(3) == START - 4900

                # the taker reclaims the old fill: the whole escrow comes back, once
                rr = await c.wait_final(await c.submit(Intent("reclaim:" + fid.hex(), kit.addr(3), Reclaim(fid))),
                                        10)
                assert rr.ok and rr.height is not None
                assert await chain.balance(3) == START - 900 and await chain.balance(2) == START
                assert await c.escrow(fid) is None
                assert await chain.rpc.call("chain_getEscrow", "0x" + fid.hex()) == {
                    "fillId": "0x" + fid.hex(), "status": "reclaimed", "taker": "0x" + kit.addr(3).hex(),
                    "refund": "4000"}
                rc = await chain.rpc.call("chain_getTransactionReceipt", "0x" + rr.tx_hash.hex())
                assert (rc["type"], rc["status"], rc["fillId"]) == ("reclaim", "final", "0x" + fid.hex())

                # a second reclaim (by anyone), a settle naming it, a reclaim before the timeout: refused
                again = await c.wait_final(await c.submit(Intent("reclaim-again", kit.addr(4), Reclaim(fid))), 10)
                assert (again.status, again.reason) == (REJECTED, "fill_reclaimed")
                batch = SettleBatch(kit.GRID, kit.GENESIS_TIME, b"\x42" * 32, (Settlement(fid, 700, 4000, 0),))
                rs = await c.wait_final(await c.submit(Intent("settle:old", kit.addr(kit.COMPLEX), batch)), 10)
                assert (rs.status, rs.reason) == (REJECTED, "fill_reclaimed")
                early = await c.wait_final(await c.submit(Intent("reclaim:" + fid2.hex(), kit.addr(3),
                                                                 Reclaim(fid2))), 10)
                assert (early.status, early.reason) == (REJECTED, "reclaim_too_early")
                assert (await c.escrow(fid2)) is not None
                assert await chain.balance(3) == START - 900 and await chain.balance(2) == START
                applied = await chain.applied()
                assert applied[rr.tx_hash] == 1 and applied[again.tx_hash] == applied[rs.tx_hash] == 0
                counters = (await chain.rpc.call("chain_status")).get("counters", {})
                assert any("fill_reclaimed" in k for k in counters), counters

    asyncio.run(go())


# ---- a `metanoia validator init --settle-timeout` network, run as a process, killed and restarted -------

def test_reclaim_on_a_validator_process_from_init_with_a_short_timeout_survives_kill_9(tmp_path):
    """``validator init --settle-timeout 3`` writes the parameter into the genesis; a ``validator run``
    process refuses the reclaim until its block time reaches interval end + 3 s, then refunds; after
    SIGKILL and a restart on the same data the reclaim is still there (state and root from disk)."""
    net = tmp_path / "net"
    funded = [f"0x{kit.addr(i).hex()}={START}" for i in (2, 3)]
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "validator", "init", "--authorities", "1", "--out",
                          str(net), "--settle-timeout", "3", "--block-time", "0.25",
                          *[a for f in funded for a in ("--fund", f)]],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    g = load_genesis(info["genesis"])
    assert json.loads(Path(info["genesis"]).read_text())["settle_timeout"] == 3 == g.params().settle_timeout
    p2p, rpc_port = free_ports(2)
    args = [sys.executable, "-m", "gateway.cli", "validator", "run", "--genesis", info["genesis"], "--key",
            info["keys"][0], "--data", str(net / "node0"), "--p2p", f"127.0.0.1:{p2p}", "--rpc",
            f"127.0.0.1:{rpc_port}", "--workers", "0"]
    url = f"http://127.0.0.1:{rpc_port}/"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        log = open(tmp_path / "node.log", "ab")
        procs.append(subprocess.Popen(args, stdout=log, stderr=log, cwd=ROOT))

    async def go() -> None:
        chain = Chain(url)
        try:
            start()
            await chain.up(60)
            async with make_client(tmp_path / "gw.db", url, g) as c:
                dom = g.params().domain
                start_s = int(time.time()) - kit.INTERVAL - 3 + 4     # deadline: about 4 s from now
                o = kit.order(2, nonce=1, noia=777, wh=70, expiry=FAR, interval_start=start_s)
                fid = o.digest(dom)
                deadline = g.params().reclaim_deadline(start_s)
                assert (await c.wait_final(await c.submit(Intent("fill", kit.addr(3), kit.fill(o))), 20)).ok
                head = await chain.rpc.call("chain_getBlockByNumber", "latest")
                if head["timestamp"] < deadline:  # (a slow machine may already be past it)
                    early = await c.wait_final(await c.submit(Intent("early", kit.addr(3), Reclaim(fid))), 20)
                    assert (early.status, early.reason) == (REJECTED, "reclaim_too_early")
                while (await chain.rpc.call("chain_getBlockByNumber", "latest"))["timestamp"] < deadline:
                    await asyncio.sleep(0.2)
                r = await c.wait_final(await c.submit(Intent("reclaim", kit.addr(3), Reclaim(fid))), 20)
                assert r.ok
                blk = await chain.rpc.call("chain_getBlockByNumber", r.height)
                assert blk["timestamp"] >= deadline
                assert await chain.balance(3) == START
            procs[-1].kill()
            procs[-1].wait()
            start()
            await chain.up(60)
            e = await chain.rpc.call("chain_getEscrow", "0x" + fid.hex())
            assert (e["status"], e["refund"]) == ("reclaimed", "777")
            assert await chain.balance(3) == START and await chain.balance(2) == START
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            await chain.aclose()

    asyncio.run(go())
