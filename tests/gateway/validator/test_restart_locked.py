"""A lone authority killed after it signed a precommit and before its block was written comes back
locked on that block and must still finish it.

The node (``metanoia validator run``, a single-authority network, real process) gets a stream of
transfers over JSON-RPC and exits (fault hook ``METANOIA_VALIDATOR_FAULT``) exactly there: right
after the precommit at height H is in its vote log (``precommit@H``), or inside the SQLite
transaction that writes block H (``commit@H``). Either way the precommit is on disk and block H is
not. It is restarted without the hook and must: decide block H as the very block it precommitted
(never a second block at H), keep making blocks, and have every accepted tx final exactly once.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.validator.crypto import keccak256
from gateway.validator.node import FAULT_ENV, FAULT_EXIT
from gateway.validator.votes import PRECOMMIT, VoteLog

from . import kit
from .netkit import Proc, free_ports, genesis_doc, rpc

BT = 0.4
H = 4


def _head(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT MAX(height) FROM chain_blocks").fetchone()[0])


def _precommit(folder: Path, height: int) -> bytes:
    log = VoteLog(folder / "votes.log")
    try:
        votes = [v for v in log.at_height(height) if v.kind == PRECOMMIT and v.value is not None]
    finally:
        log.close()
    assert len(votes) == 1, votes
    return votes[0].block_hash


@pytest.mark.parametrize("where", ["precommit", "commit"])
def test_lone_authority_killed_between_precommit_and_block_write_recovers(tmp_path, where):
    gpath = tmp_path / "genesis.json"
    gpath.write_text(json.dumps(genesis_doc(1, BT)))
    p2p_port, rpc_port = free_ports(2)
    node = Proc(tmp_path, 0, gpath, ("127.0.0.1", p2p_port), [], rpc_port, BT)
    data = tmp_path / "node0"
    accepted: dict[bytes, bytes] = {}
    unanswered: list[bytes] = []

    async def submit_while(session: aiohttp.ClientSession, nonces: dict[int, int], running) -> None:
        """Transfers one by one; like the chain client's outbox, an unanswered tx is sent again as is
        (the node may have logged it before it died), never replaced by another with its nonce."""
        while running():
            k = len(accepted)
            u = kit.USERS[k % len(kit.USERS)]
            raw = unanswered.pop() if unanswered else \
                kit.raw_tx(u, nonces[u], kit.transfer(kit.USERS[(k + 1) % len(kit.USERS)], 1 + k))
            try:
                res = await asyncio.wait_for(rpc(session, node.url, "chain_sendRawTransaction", "0x" + raw.hex()), 5)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                unanswered.append(raw)
                await asyncio.sleep(0.05)
                continue
            accepted[bytes.fromhex(res[2:])] = raw
            nonces[u] += 1
            await asyncio.sleep(0.02)

    async def wait_up(session: aiohttp.ClientSession) -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                await rpc(session, node.url, "chain_status")
                return
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.1)
        raise AssertionError((tmp_path / "node0.log").read_text()[-3000:])

    async def main() -> None:
        nonces = {u: 0 for u in kit.USERS}
        async with aiohttp.ClientSession() as s:
            # run 1: killed by the hook at height H
            node.start(env={FAULT_ENV: f"{where}@{H}"})
            await wait_up(s)
            load = asyncio.create_task(submit_while(s, nonces, lambda: node.p.poll() is None))
            code = await asyncio.to_thread(node.p.wait, 60)
            await load
            assert code == FAULT_EXIT, (tmp_path / "node0.log").read_text()[-3000:]
            locked = _precommit(data, H)               # the precommit is on disk ...
            assert _head(data / "chain.db") == H - 1   # ... the block is not
            before = len(accepted)

            # run 2: no hook. It must finish block H as the block it locked on, then go on.
            node.start()
            await wait_up(s)
            stop = time.monotonic() + 1.5
            await submit_while(s, nonces, lambda: time.monotonic() < stop)
            assert len(accepted) > before
            end = time.monotonic() + 30
            while time.monotonic() < end:
                st = await rpc(s, node.url, "chain_status")
                finals = [await rpc(s, node.url, "chain_getTransactionStatus", "0x" + h.hex()) for h in accepted]
                if st["height"] >= H + 3 and all(f["status"] == "final" for f in finals):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"not recovered: {st} {(tmp_path / 'node0.log').read_text()[-3000:]}")
            assert st["counters"].get("held_replayed", 0) >= 1, st["counters"]
            block = await rpc(s, node.url, "chain_getBlockByNumber", H)
            assert block["hash"] == "0x" + locked.hex()          # the locked block, not a second block at H
            assert block["txCount"] > 0                          # and it carried load when the node died
            seen: dict[bytes, int] = {}
            top = await rpc(s, node.url, "chain_blockNumber")
            for h in range(1, top + 1):
                b = await rpc(s, node.url, "chain_getBlockByNumber", h, True)
                for t in b["transactions"]:
                    th = keccak256(bytes.fromhex(t[2:]))
                    assert th not in seen, f"tx in blocks {seen[th]} and {h}"
                    seen[th] = h
            assert set(accepted) <= set(seen)
        node.stop()

    try:
        asyncio.run(main())
    finally:
        node.stop()
