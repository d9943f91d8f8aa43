"""``chain_fill_state`` on the EVM backend (anvil + Exchange.sol through the outbox client): escrowed,
settled, reclaimed and unknown fills read from the exchange's ``fills`` view, so settlement can tell a
reclaimed fill from one that never landed on either backend."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.chain_client import Intent
from gateway.chain_client.evm import EvmBackend
from gateway.market.settlement_fills import chain_fill_state
from gateway.validator.genesis import DEFAULT_SETTLE_TIMEOUT
from gateway.validator.order import sign_order
from gateway.validator.tx import Fill, Reclaim, SettleBatch, Settlement
from tests.evm.evm_kit import evm_chain, make_client
from tests.gateway.validator import kit

I = kit.INTERVAL


def test_chain_fill_state_reads_the_exchange(tmp_path: Path) -> None:
    async def go() -> None:
        with evm_chain(tmp_path, settle_timeout=DEFAULT_SETTLE_TIMEOUT) as ev:
            backend = EvmBackend(ev.url, ev.deployment)
            await backend.attach()
            old = (int(time.time()) // I) * I - DEFAULT_SETTLE_TIMEOUT - 4 * I   # past its reclaim deadline
            orders = [kit.order(2, n, noia=1000 * n, wh=100, expiry=2**40, interval_start=old) for n in (1, 2, 3)]
            fids = [o.digest(backend.domain) for o in orders]
            c = make_client(tmp_path / "gw.db", ev.url, ev.deployment)
            async with c:
                for o, fid in zip(orders, fids):
                    fill = Fill(sign_order(o, backend.domain, kit.key(2)))
                    assert (await c.wait_final(await c.submit(Intent("fill:" + fid.hex(), kit.addr(3), fill)), 60)).ok
                batch = SettleBatch(kit.GRID, old, b"\x11" * 32, (Settlement(fids[0], 60, 600, 400),))
                assert (await c.wait_final(await c.submit(Intent("settle", kit.addr(kit.COMPLEX), batch)), 60)).ok
                assert (await c.wait_final(await c.submit(Intent("reclaim", kit.addr(3), Reclaim(fids[1]))), 60)).ok
            settled, reclaimed, escrowed = [await chain_fill_state(backend, f) for f in fids]
            assert (settled.status, settled.settled) == ("settled", (60, 600, 400))
            assert (reclaimed.status, reclaimed.reclaimed) == ("reclaimed", 2000)
            assert escrowed.status == "escrowed" and escrowed.escrow is not None
            e = escrowed.escrow
            assert (e.maker, e.taker, e.noia, e.wh, e.interval_start, e.grid) == (
                kit.addr(2), kit.addr(3), 3000, 100, old, kit.GRID)
            assert (await chain_fill_state(backend, b"\x42" * 32)).status == "unknown"
            await backend.aclose()
    asyncio.run(go())
