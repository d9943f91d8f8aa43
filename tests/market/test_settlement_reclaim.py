"""Settlement leaves out fills their taker reclaimed, on the REAL validator (in-process, JSON-RPC on loopback).

The interval delivers eight days ago, past the chain's default 7-day settle timeout, with real signed
readings and evidence roots (tests/market/test_settlement_e2e.py's world). Two cases:

- the taker reclaims before the gateway's settlement runs: the batch holds only the other fill, the
  reclaimed one is recorded as such (part -2, refund = escrow) and the interval is settled;
- the race: the gateway planned a batch with both fills (and died before sending it), then the taker
  reclaimed one. The stored plan is sent byte for byte, the chain refuses it whole (``fill_reclaimed``),
  and the next pass settles the other fill alone.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.chain_client import Intent
from gateway.chain_client.rpc import JsonRpcClient
from gateway.db import open_gateway_db
from gateway.market.settlement import PART_RECLAIMED, SettlementConfig, Settler
from gateway.market.settlement_fills import ChainFillIndex
from gateway.market.trades import TradeLog
from gateway.validator.genesis import DEFAULT_SETTLE_TIMEOUT
from gateway.validator.tx import Reclaim
from tests.gateway.validator import kit

from .test_settlement_e2e import (DIRECTORY, GRID, L, applied, balances, client, escrow, make_fills, real_node,
                                  setup_db)

OLD = (int(time.time()) // L) * L - 8 * 86_400
assert OLD + L + DEFAULT_SETTLE_TIMEOUT < time.time()  # reclaimable now
ENERGY = {OLD: {"h2": (1000, 0), "h3": (0, 1000), "h5": (500, 0), "h4": (0, 500)}}
FILLS = [(OLD, 2, 3, 1, 800, 8000), (OLD, 5, 4, 2, 400, 4000)]   # A: h2 -> h3 (reclaimed), B: h5 -> h4


class Crash(Exception):
    pass


def crash_at(point: str):  # type: ignore[no-untyped-def]
    def fault(p: str) -> None:
        if p == point:
            raise Crash(p)
    return fault


async def reclaim(url: str, g, tmp, fid: bytes, taker: int) -> None:  # type: ignore[no-untyped-def]
    async with client(tmp / "takers.db", url, g) as c:
        r = await c.wait_final(await c.submit(Intent("reclaim:" + fid.hex(), kit.addr(taker), Reclaim(fid))), 20)
        assert r.ok, r


def settler(conn, c, g, fault=None) -> Settler:  # type: ignore[no-untyped-def]
    index = ChainFillIndex(conn, c.backend.name, g.params().domain, directory=DIRECTORY)
    return Settler(conn, c, kit.addr(kit.COMPLEX), [index], SettlementConfig(GRID, grace_s=60, wait_final_s=20),
                   directory=DIRECTORY, fault=fault)


@pytest.mark.parametrize("race", [False, True], ids=["reclaimed-before-planning", "reclaimed-after-planning"])
def test_settlement_leaves_out_a_reclaimed_fill(tmp_path, race: bool) -> None:
    async def go() -> None:
        db = tmp_path / "gw.db"
        setup_db(db, ENERGY)
        async with real_node(tmp_path) as (g, url):
            rpc = JsonRpcClient(url, timeout=5)
            conn = open_gateway_db(db)
            trades = TradeLog(conn)
            async with client(tmp_path / "takers.db", url, g) as takers:
                fa, fb = await make_fills(takers, g, FILLS, trades)
            before = await balances(rpc)
            async with client(db, url, g) as c:
                if race:
                    with pytest.raises(Crash):
                        await settler(conn, c, g, crash_at("planned")).run_once()
                    assert conn.execute("SELECT entries FROM settlement_batches WHERE state = 'planned'"
                                        ).fetchall() == [(2,)]
                await reclaim(url, g, tmp_path, fa, 3)
                st = settler(conn, c, g)
                for _ in range(3):
                    await st.run_once()
                    if not st.pending():
                        break
                assert st.pending() == []
                r = st.result(OLD)
                assert r.state == "settled" and r.fills == 1
                assert (r.delivered_wh, r.escrow, r.payment, r.refund) == (400, 4000, 4000, 0)
                final = [b for b in r.batches if b.state == "final"]
                assert len(final) == 1 and final[0].entries == 1
                rejected = [b for b in r.batches if b.state == "rejected"]
                assert [b.reason for b in rejected] == (["fill_reclaimed"] if race else [])
                # the reclaimed fill: recorded as reclaimed with its refund, in no live batch
                rows = {(f, p, s): (d, pay, ref) for f, p, _, d, pay, ref, s in st.fills(OLD)}
                assert rows[(fa, PART_RECLAIMED, "final")] == (0, 0, 8000)
                assert [k for k in rows if k[0] == fa and k[1] >= 0 and k[2] != "rejected"] == []
                assert {t.fill_id: t.state for t in trades.all()} == {fa: "reclaimed", fb: "settled"}
                # the chain: A refunded to its taker, B settled, each tx once, money where it should be
                assert (await escrow(rpc, fa))["status"] == "reclaimed"
                eb = await escrow(rpc, fb)
                assert (eb["status"], eb["deliveredWh"], int(eb["payment"])) == ("settled", 400, 4000)
                after = await balances(rpc)
                assert after[3] == before[3] + 8000 and after[2] == before[2]
                assert after[5] == before[5] + 4000 and after[4] == before[4]
                seen = await applied(rpc)
                assert [seen[b.tx_hash] for b in final] == [1]
                assert all(seen[b.tx_hash] == 0 for b in rejected)
                # a further pass changes nothing
                n = len(c.outbox.all())
                await st.run_once()
                assert len(c.outbox.all()) == n and st.result(OLD).batches == r.batches
            await rpc.aclose()
            conn.close()
    asyncio.run(go())
