"""``EvmFillIndex`` on a real anvil: fills made through the EVM backend found from the exchange's ``Filled``
events (final blocks only, bounded ranges, a persisted cursor), a restart that resumes without duplicates,
hostile logs refused with counted reasons (anvil behind a proxy that corrupts its ``eth_getLogs`` answers),
and settlement of intervals on anvil that discovers its fills through the index alone.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from eth_utils import keccak

from gateway.chain_client import ChainUnavailable, Intent
from gateway.chain_client.evm import EvmBackend, EvmConfig
from gateway.db import open_gateway_db
from gateway.evm.compile import compile_contracts
from gateway.market.settlement import SettlementConfig, Settler
from gateway.market.settlement_fills import ChainFillIndex, MappingDirectory
from gateway.market.settlement_fills_evm import (FILLED_SIGNATURE, FILLED_TOPIC, EvmFillIndex, chain_fill_index,
                                                 decode_filled, filled_topic)
from gateway.validator.crypto import to_checksum
from gateway.validator.order import Domain, sign_order
from gateway.validator.tx import Fill
from tests.evm.evm_kit import EvmChain, dispose, evm_chain, json_rpc_server, make_client
from tests.gateway.validator import kit

ROOT = Path(__file__).resolve().parents[2]
HOUSES = {i: f"h{i}" for i in kit.USERS}
DIRECTORY = MappingDirectory({kit.addr(i): h for i, h in HOUSES.items()})
FAR = 2**40


def test_filled_topic0_is_keccak_of_the_solidity_signature() -> None:
    src = (ROOT / "contracts" / "Exchange.sol").read_text()
    decl = re.search(r"event Filled\(([^)]*)\);", src)
    assert decl is not None
    types = [p.split()[0] for p in " ".join(decl.group(1).split()).split(",")]
    assert f"Filled({','.join(types)})" == FILLED_SIGNATURE
    assert FILLED_TOPIC == keccak(text=FILLED_SIGNATURE)                   # eth-utils' keccak, not ours
    assert filled_topic(compile_contracts()["Exchange"]["abi"]) == FILLED_TOPIC
    bad: Any = copy.deepcopy(compile_contracts()["Exchange"]["abi"])
    next(e for e in bad if e.get("name") == "Filled")["inputs"][4]["type"] = "uint256"
    with pytest.raises(ValueError):
        filled_topic(bad)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with evm_chain(tmp_path_factory.mktemp("evm")) as c:
        yield c


async def fill_all(ev: EvmChain, db: Path, specs: list[tuple[int, int, int, int, int, int]]) -> list[bytes]:
    """specs: (interval start, maker, taker, order nonce, Wh, NOIA); each taker fills through the EVM backend."""
    c = make_client(db, ev.url, ev.deployment)
    dom = Domain(ev.deployment.chain_id, ev.deployment.exchange)
    sids, fids = [], []
    try:
        async with c:
            for start, mk, tk, nonce, wh, noia in specs:
                o = kit.order(mk, nonce, noia=noia, wh=wh, expiry=FAR, interval_start=start)
                fid = o.digest(dom)
                sids.append(await c.submit(Intent(f"fill:0x{fid.hex()}", kit.addr(tk),
                                                  Fill(sign_order(o, dom, kit.key(mk))))))
                fids.append(fid)
            for sid in sids:
                assert (await c.wait_final(sid, 60)).ok
    finally:
        c.outbox.close()
    return fids


def rows(conn: Any) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT fill_id, grid, interval_start, maker, taker, wh, noia FROM settlement_chain_fills "
                        "ORDER BY fill_id").fetchall()


def test_fills_are_found_in_bounded_ranges_and_a_restart_resumes_without_duplicates(chain: EvmChain,
                                                                                  tmp_path: Path) -> None:
    async def go() -> None:
        a, b = 50 * kit.INTERVAL, 51 * kit.INTERVAL
        specs = [(a, 2, 3, 101, 800, 8000), (a, 4, 5, 102, 300, 2999), (b, 2, 5, 103, 1, 10**20)]
        fids = await fill_all(chain, tmp_path / "takers.db", specs)
        db = tmp_path / "gw.db"
        conn = open_gateway_db(db)
        # nothing above the finality point: with 10,000 confirmations nothing here is final, nothing is read
        far = chain.backend(EvmConfig(finality=10_000))
        idx = EvmFillIndex(conn, far, directory=DIRECTORY)
        assert await idx.sync() == 0 and idx.scanned() == 0 and rows(conn) == []
        await far.aclose()
        backend = chain.backend()
        picked = chain_fill_index(conn, backend, directory=DIRECTORY)
        assert isinstance(picked, EvmFillIndex)
        idx = picked
        idx.max_range = 3
        assert await idx.sync() == 3
        final = await backend.finalized_number()
        assert idx.scanned() == final
        assert idx.counters["ranges"] >= (final - chain.deployment.block + 1) // 3   # bounded block ranges
        got = {f.fill_id: f for f in list(idx.fills(kit.GRID, a)) + list(idx.fills(kit.GRID, b))}
        for (start, mk, tk, _n, wh, noia), fid in zip(specs, fids):
            f = got[fid]
            assert (f.maker, f.taker, f.wh, f.noia) == (kit.addr(mk), kit.addr(tk), wh, noia)
            assert (f.maker_household, f.taker_household) == (HOUSES[mk], HOUSES[tk])
            rec = await backend.fill_record(fid)                   # the exchange's own view agrees
            assert rec is not None and (rec.interval_start, rec.grid, rec.maker, rec.taker) == (
                start, kit.GRID, kit.addr(mk), kit.addr(tk))
        assert sorted(f.fill_id for f in idx.fills(kit.GRID, a)) == sorted(fids[:2])
        assert not [k for k in idx.counters if k.startswith("refused_")]
        conn.close()
        # restart: a new index on the same database resumes from the cursor; only the new fill is added
        more = await fill_all(chain, tmp_path / "takers.db", [(b, 3, 4, 104, 50, 500)])
        conn = open_gateway_db(db)
        idx2 = EvmFillIndex(conn, backend, directory=DIRECTORY)
        assert idx2.scanned() == final
        assert await idx2.sync() == 1
        assert idx2.counters["logs"] == 1                          # read from the cursor on, not from the start
        assert len(rows(conn)) == 4 and {bytes(r[0]) for r in rows(conn)} == set(fids + more)
        # a re-scan from the deployment block inserts nothing twice
        before = rows(conn)
        conn.execute("DELETE FROM settlement_chain_scan")
        assert await idx2.sync() == 0 and rows(conn) == before and idx2.scanned() >= final
        conn.close()
        await backend.aclose()
    asyncio.run(go())


# ---- hostile logs: anvil behind a proxy that corrupts eth_getLogs answers ----

@asynccontextmanager
async def corrupting_proxy(upstream: str, corrupt: Callable[[Any, list[Any]], Any],
                           refuse: Callable[[list[Any]], str | None] = lambda p: None) -> AsyncIterator[str]:
    """Forwards every call to anvil; ``eth_getLogs`` answers pass through ``corrupt(result, params)``, or the
    call is refused with the JSON-RPC error message ``refuse(params)`` when that is not None."""
    session = ClientSession()

    async def handle(req: web.Request) -> web.Response:
        body = await req.json()
        why = refuse(body["params"]) if body["method"] == "eth_getLogs" else None
        if why is not None:
            doc = {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32005, "message": why}}
            return web.Response(text=json.dumps(doc), content_type="application/json")
        async with session.post(upstream, json=body) as r:
            doc = await r.json()
        if body["method"] == "eth_getLogs" and "result" in doc:
            doc["result"] = corrupt(doc["result"], body["params"])
        return web.Response(text=json.dumps(doc), content_type="application/json")

    try:
        async with json_rpc_server(handle) as url:
            yield url
    finally:
        await session.close()


def hostile_variants(good: dict[str, Any], hi: int) -> list[tuple[str, Any]]:
    """(expected reason, log) for every way a log can be wrong, each built from a real ``Filled`` log."""
    def v(**kw: Any) -> dict[str, Any]:
        d = copy.deepcopy(good)
        d.update(kw)
        return d
    t, data = good["topics"], good["data"]
    word = lambda i: data[2 + 64 * i:2 + 64 * (i + 1)]  # noqa: E731
    no_block = {k: x for k, x in good.items() if k != "blockNumber"}
    return [
        ("bad_log", "not a log"),
        ("bad_log", no_block),
        ("bad_log", v(data="0xzz")),
        ("removed", v(removed=True)),
        ("wrong_address", v(address="0x" + "66" * 20)),
        ("wrong_event", v(topics=["0x" + keccak(text="Cancelled(address,uint256)").hex()] + t[1:])),
        ("wrong_event", v(topics=[])),
        ("topic_count", v(topics=t[:3])),
        ("topic_count", v(topics=t + [t[1]])),
        ("bad_topic", v(topics=[t[0], t[1], "0x" + "ff" * 12 + t[2][26:], t[3]])),
        ("bad_topic", v(topics=[t[0], t[1][:-2], t[2], t[3]])),
        ("short_data", v(data=data[:-64])),
        ("short_data", v(data="0x")),
        ("bad_data", v(data=data + "00" * 32)),
        ("bad_data", v(data=data[:2] + word(0) + "01" + word(1)[2:] + data[2 + 128:])),   # wh word above 2^64 - 1
        ("not_final", v(blockNumber=hex(hi + 1))),
        ("out_of_range", v(blockNumber="0x0")),
    ]


def test_hostile_logs_are_refused_with_counted_reasons_and_the_good_fill_indexed_once(chain: EvmChain,
                                                                                     tmp_path: Path) -> None:
    async def go() -> None:
        (fid,) = await fill_all(chain, tmp_path / "takers.db", [(60 * kit.INTERVAL, 6, 7, 201, 40, 400)])
        expected: list[str] = []

        def corrupt(result: list[Any], params: list[Any]) -> Any:
            hi = int(params[0]["toBlock"], 16)
            out = list(result)
            for lg in result:
                if bytes.fromhex(lg["topics"][1][2:]) == fid:
                    variants = hostile_variants(lg, hi)
                    expected.extend(r for r, _ in variants)
                    out += [x for _, x in variants]
            return out

        conn = open_gateway_db(tmp_path / "gw.db")
        async with corrupting_proxy(chain.url, corrupt) as url:
            backend = EvmBackend(url, chain.deployment)
            idx = EvmFillIndex(conn, backend)
            n = await idx.sync()
            refused = {k[len("refused_"):]: c for k, c in idx.counters.items() if k.startswith("refused_")}
            want: dict[str, int] = {}
            for r in expected:
                want[r] = want.get(r, 0) + 1
            assert expected and refused == want
            assert [bytes(r[0]) for r in rows(conn) if bytes(r[0]) == fid] == [fid]
            assert n == len(rows(conn))                             # only real fills, each once
            await backend.aclose()

        # an answer that is not a list of logs is the node's failure as a whole: nothing committed
        async def not_a_list() -> None:
            conn2 = open_gateway_db(tmp_path / "gw2.db")
            async with corrupting_proxy(chain.url, lambda r, p: {"logs": r}) as url:
                backend = EvmBackend(url, chain.deployment)
                idx = EvmFillIndex(conn2, backend)
                with pytest.raises(ChainUnavailable):
                    await idx.sync()
                assert idx.scanned() == 0 and rows(conn2) == []
                await backend.aclose()
            conn2.close()
        await not_a_list()
        conn.close()
    asyncio.run(go())


def test_a_node_that_refuses_large_ranges_gets_smaller_ones(chain: EvmChain, tmp_path: Path) -> None:
    async def go() -> None:
        fids = await fill_all(chain, tmp_path / "takers.db", [(61 * kit.INTERVAL, 6, 7, 301, 10, 100),
                                                              (61 * kit.INTERVAL, 5, 7, 302, 10, 100)])
        spans: list[int] = []

        def refuse(params: list[Any]) -> str | None:   # Besu's and most providers' wording and limit style
            n = int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
            spans.append(n)
            return "block range too large: exceeds 4 blocks" if n > 4 else None

        conn = open_gateway_db(tmp_path / "gw.db")
        async with corrupting_proxy(chain.url, lambda r, p: r, refuse) as url:
            backend = EvmBackend(url, chain.deployment)
            idx = EvmFillIndex(conn, backend, max_range=1000)
            await idx.sync()
            assert set(fids) <= {bytes(r[0]) for r in rows(conn)}
            assert idx.counters["range_halved"] >= 1 and max(spans[idx.counters["range_halved"]:]) <= 4
            assert idx.scanned() == await backend.finalized_number()
            await backend.aclose()
        conn.close()
    asyncio.run(go())


def test_a_fill_in_a_block_reorganised_away_before_final_is_never_indexed(tmp_path: Path) -> None:
    """A reorganisation above the finality point (20 confirmations here), made with evm_snapshot / evm_revert:
    the fill's log was on the node at ``latest`` but is never indexed, and the cursor passes its height."""
    async def go() -> None:
        with evm_chain(tmp_path) as ev:
            b = ev.backend(EvmConfig(finality=20))
            conn = open_gateway_db(tmp_path / "gw.db")
            idx = EvmFillIndex(conn, b)
            snap = ev.node.rpc("evm_snapshot")
            o = kit.order(2, 401, noia=100, wh=10, expiry=FAR, interval_start=70 * kit.INTERVAL)
            fid = o.digest(b.domain)
            tx = b.build(Intent("fill", kit.addr(3), Fill(sign_order(o, b.domain, kit.key(2)))),
                         await b.pending_nonce(kit.addr(3)), kit.key(3))
            await b.send(tx.raw)
            for _ in range(100):
                st = await b.tx_status(tx.tx_hash)
                if st.status == "included":
                    break
                await asyncio.sleep(0.05)
            assert st.status == "included" and st.height is not None
            seen = await b.rpc.call("eth_getLogs", {"address": to_checksum(ev.deployment.exchange),
                                                    "fromBlock": hex(st.height), "toBlock": "latest"})
            assert any(bytes.fromhex(lg["topics"][1][2:]) == fid for lg in seen)   # there to be found at latest
            await idx.sync()
            assert idx.scanned() < st.height and rows(conn) == []
            assert ev.node.rpc("evm_revert", [snap]) is True                        # the block is gone
            while await b.finalized_number() <= st.height + 2:
                await asyncio.sleep(0.2)
            await idx.sync()
            assert idx.scanned() > st.height and rows(conn) == []
            assert await b.fill_record(fid) is None and (await b.tx_status(tx.tx_hash)).status == "unknown"
            conn.close()
            await b.aclose()
    asyncio.run(go())


def test_decode_filled_refuses_what_is_not_a_log() -> None:
    cases: list[Any] = [None, [], 7, {"address": "0x"}]
    for bad in cases:
        with pytest.raises(ValueError):
            decode_filled(bad, b"\x22" * 20, 0, 10)


# ---- settlement on anvil, its fills found by the index alone ----

def test_settlement_on_anvil_finds_its_fills_through_the_event_index(tmp_path: Path) -> None:
    from tests.market.test_settlement_e2e import ENERGY, EXPECTED, FILLS, GRID, S, setup_db

    async def go() -> None:
        db = tmp_path / "gw.db"
        setup_db(db, {s: ENERGY[s] for s in S[:3]})
        with evm_chain(tmp_path) as ev:
            fids = await fill_all(ev, tmp_path / "takers.db", FILLS[:3])
            conn = open_gateway_db(db)
            c = make_client(db, ev.url, ev.deployment)
            assert isinstance(c.backend, EvmBackend)
            backend = c.backend
            index = chain_fill_index(conn, backend, directory=DIRECTORY)
            assert isinstance(index, EvmFillIndex) and isinstance(index, ChainFillIndex)
            async with c:
                # the index is the only fill source: no trades table, no bundled node
                st = Settler(conn, c, kit.addr(kit.COMPLEX), [index],
                             SettlementConfig(GRID, grace_s=60, wait_final_s=60), directory=DIRECTORY)
                results = {r.start: r for r in await st.run_once()}
                assert index.scanned() > 0 and len(rows(conn)) == 3
                for s, fid, exp in zip(S[:3], fids, EXPECTED[:3]):
                    r = results[s]
                    assert r.state == "settled" and r.fills == 1 and r.payment + r.refund == r.escrow
                    rec = await backend.fill_record(fid)        # read back from the exchange
                    assert rec is not None and rec.status == "settled"
                    assert (rec.delivered_wh, rec.payment, rec.refund) == exp
                again = await st.run_once()                        # nothing new: nothing re-planned
                assert all(r.state == "settled" and len(r.batches) <= 1 for r in again)
                assert index.unsettled_intervals(kit.GRID, S[2]) == []
            await dispose(c)
            conn.close()
    asyncio.run(go())
