"""The reclaim watchtower on the REAL validator (in-process, JSON-RPC on loopback; default 7-day timeout).

Fills of an interval of 2023 (long past the deadline): one nobody settled, one settled by the complex
authority, one its taker already reclaimed; and one for the current interval (not due). The watchtower
sends from an account that holds no NOIA at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from gateway.chain_client import Intent, StaticKeyring
from gateway.cli.validator import write_key
from gateway.db import open_gateway_db
from gateway.market.reclaim_watch import Watchtower
from gateway.market.settlement_fills import ChainFillIndex
from gateway.market.trades import FINAL, Trade, TradeLog
from gateway.validator.crypto import address_of, private_key
from gateway.validator.tx import Reclaim, SettleBatch, Settlement
from tests.gateway.validator import kit
from tests.gateway.validator.netkit import START

from .test_reclaim import client
from .test_settlement_e2e import real_node

FAR = 2**40
TOWER = private_key(b"\x77" * 32)   # no NOIA, never seen by the chain before


async def fill(c, g, taker: int, nonce: int, noia: int, start: int = kit.GENESIS_TIME) -> bytes:  # type: ignore[no-untyped-def]
    o = kit.order(2, nonce, noia=noia, wh=100, expiry=FAR, interval_start=start)
    fid = o.digest(g.params().domain)
    assert (await c.wait_final(await c.submit(Intent("fill:" + fid.hex(), kit.addr(taker), kit.fill(o))), 20)).ok
    return fid


def test_watchtower_reclaims_only_expired_unsettled_fills_from_an_account_without_noia(tmp_path: Path) -> None:
    async def go() -> None:
        async with real_node(tmp_path) as (g, url):
            users = client(tmp_path / "users.db", url, g, StaticKeyring([kit.key(i) for i in range(8)]))
            async with users as u:
                now_start = int(time.time()) // kit.INTERVAL * kit.INTERVAL
                stuck = await fill(u, g, 3, 1, 1000)
                settled = await fill(u, g, 4, 2, 2000)
                gone = await fill(u, g, 5, 3, 3000)
                current = await fill(u, g, 3, 4, 4000, now_start)
                batch = SettleBatch(kit.GRID, kit.GENESIS_TIME, b"\x11" * 32, (Settlement(settled, 100, 2000, 0),))
                assert (await u.wait_final(await u.submit(Intent("settle", kit.addr(kit.COMPLEX), batch)), 20)).ok
                assert (await u.wait_final(await u.submit(Intent("r", kit.addr(5), Reclaim(gone))), 20)).ok
                b3 = await u.balance(kit.addr(3))
            conn = open_gateway_db(tmp_path / "tower.db")
            o = kit.order(2, 1, noia=1000, wh=100, expiry=FAR)
            TradeLog(conn).record(Trade(stuck, "g", o.interval_start, "h2", kit.addr(2), "h3", kit.addr(3), 100, 1000,
                                        "rfq", "agent", "agent", kit.signed(o), "fill:x", FINAL))
            c = client(tmp_path / "tower.db", url, g, StaticKeyring([TOWER]))
            async with c:
                tower = Watchtower(conn, c, ChainFillIndex(conn, c.backend.name, c.backend.domain), g.params(),
                                   address_of(TOWER))
                out = {o.fill_id: (o.outcome, o.refund) for o in await tower.run_once()}
                assert out == {stuck: ("reclaimed", 1000), settled: ("was_settled", None),
                               gone: ("was_reclaimed", None)}
                assert current not in out and tower.due() == []
                assert await c.balance(kit.addr(3)) == b3 + 1000
                assert await c.balance(address_of(TOWER)) == 0 and await c.nonce(address_of(TOWER)) == 1
                assert TradeLog(conn).get(stuck).state == "reclaimed"
                n = len(c.outbox.all())
                assert await tower.run_once() == [] and len(c.outbox.all()) == n  # nothing sent twice
                e = await c.backend.rpc.call("chain_getEscrow", "0x" + current.hex())
                assert e["status"] == "escrowed"
                # money conserved: every balance plus the one open escrow is the genesis supply
                held = [await c.balance(kit.addr(i)) for i in [*kit.USERS, kit.COMPLEX]]
                assert sum(held) + int(e["noia"]) == len(kit.USERS) * START
            conn.close()
    asyncio.run(go())


def test_cli_settle_reclaim_expired_once(tmp_path: Path) -> None:
    async def go() -> None:
        async with real_node(tmp_path) as (g, url):
            async with client(tmp_path / "users.db", url, g, StaticKeyring([kit.key(i) for i in range(8)])) as u:
                stuck = await fill(u, g, 6, 9, 900)
            gfile, kfile = tmp_path / "genesis.json", tmp_path / "tower.key"
            gfile.write_text(json.dumps(g.to_json()))
            write_key(kfile, TOWER.secret)

            async def cli() -> tuple[int, dict]:  # type: ignore[type-arg]
                p = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.cli", "settle", "reclaim-expired", "--db", str(tmp_path / "t.db"),
                    "--rpc", url, "--genesis", str(gfile), "--key", str(kfile), "--once", "--json",
                    env={**os.environ}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(p.communicate(), 120)
                assert TOWER.secret.hex() not in (out + err).decode()
                return p.returncode or 0, json.loads(out.decode().strip().splitlines()[-1])

            code, doc = await cli()
            assert code == 0 and doc["outcomes"] == [{"fill_id": "0x" + stuck.hex(), "outcome": "reclaimed",
                                                      "reason": None, "refund": "900"}]
            assert await cli() == (0, {"outcomes": []})
    asyncio.run(go())
