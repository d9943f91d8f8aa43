"""The chain as the operator sees it, on four real validators over loopback: all up, then one stopped
(reported down with its reason, the others still finalising), then two stopped (no quorum)."""

from __future__ import annotations

import asyncio
import time

from gateway.web.readmodel import chain_view
from hil.market_rig import Chain


def test_validators_up_and_down_on_a_four_authority_chain(tmp_path) -> None:
    async def go() -> None:
        chain = Chain(tmp_path / "chain", 4, {}, int(time.time()) - 60, time.time, block_time=0.25)
        (tmp_path / "chain").mkdir()
        await chain.start()
        stopped: set[int] = set()

        async def stop(i: int) -> None:
            stopped.add(i)
            await chain.nodes[i].stop()
        try:
            v = await chain_view(tuple(chain.urls), 2.0)
            assert (v.up, v.down, v.authorities, v.quorum) == (4, (), 4, True)
            assert all(x.up and x.validators_up == 4 and x.peers == 3 for x in v.validators)
            assert {x.address for x in v.validators} == {"0x" + a.hex() for a in chain.genesis.authorities}
            await stop(3)
            h0 = v.height or 0
            deadline = time.monotonic() + 60
            while True:                       # the three others go on finalising blocks
                v = await chain_view(tuple(chain.urls), 1.0)
                if v.height is not None and v.height > h0 + 2:
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert (v.up, v.down, v.quorum) == (3, (chain.urls[3],), True)
            assert v.validators[3].error in ("unavailable", "timeout") and v.final_hash is not None
            await stop(2)
            v = await chain_view(tuple(chain.urls), 1.0)
            assert (v.up, v.quorum) == (2, False)
        finally:
            for i in set(range(4)) - stopped:
                await chain.nodes[i].stop()
    asyncio.run(go())
