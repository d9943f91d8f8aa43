"""The ``Reclaim`` intent: canonical JSON, and through the outbox client on the REAL bundled validator.

The node is the validator itself (in-process ``Node``, JSON-RPC over loopback TCP), as in
tests/gateway/test_chain_client_node.py. Its genesis has the default 7-day settle timeout; the kit's
orders deliver in an interval of 2023, long past it, and an order for the current interval is not.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.chain_client import REJECTED, Intent
from gateway.chain_client.intents import action_from_json, action_to_json, intent_from_json, intent_to_json
from gateway.validator.tx import Reclaim, SettleBatch, Settlement
from tests.gateway.validator import kit
from tests.gateway.validator.netkit import START

from .test_chain_client_node import FAR, make_client, real_node


def test_reclaim_intent_round_trips_as_canonical_json() -> None:
    i = Intent("reclaim:" + "ab" * 32, kit.addr(3), Reclaim(b"\xab" * 32))
    assert i.kind == "reclaim"
    assert action_to_json(i.action) == {"kind": "reclaim", "fill_id": "0x" + "ab" * 32}
    assert intent_from_json(intent_to_json(i)) == i
    for bad in ("0x" + "ab" * 31, "0x" + "ab" * 33):
        with pytest.raises(ValueError):
            action_from_json({"kind": "reclaim", "fill_id": bad})


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
                assert rc["type"] == "reclaim" and rc["status"] == "final"

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
