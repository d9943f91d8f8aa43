"""A homeowner reclaims their own fill's escrow (gateway/market/reclaim.py, ``metanoia wallet reclaim``).

On the REAL validator (in-process, JSON-RPC on loopback; default 7-day settle timeout). The household's
key is in the wallet (keystore at rest); it is funded on the chain and fills an order for an interval of
2023 (long past the timeout) and one for the current interval (not yet reclaimable).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from gateway.chain_client import BundledBackend, ClientConfig, Intent, Outbox, OutboxChainClient, StaticKeyring
from gateway.db import open_gateway_db
from gateway.market.reclaim import NOT_ESCROWED, NOT_TAKER, ReclaimRefused, key_of, reclaim_candidates, reclaim_fill
from gateway.market.trades import FINAL, Trade, TradeLog
from gateway.market.wallet import Wallet, WalletKdf, WalletKeyring
from gateway.market.wallet_policy import ByPolicy
from gateway.validator.errors import RECLAIM_TOO_EARLY
from gateway.validator.tx import Reclaim, Transfer, Tx, verify_tx
from tests.gateway.validator import kit

from .test_settlement_e2e import real_node

SECRET = b"operator-master-secret-0123456789"
CONFIG = ClientConfig(poll_interval=0.05, resubmit_after=2.0, backoff_initial=0.05, backoff_max=0.5)
FAR = 2**40
MAKER = 5


def client(db: Path, url: str, g, keyring) -> OutboxChainClient:  # type: ignore[no-untyped-def]
    backend = BundledBackend.from_genesis(url, g, timeout=3)
    return OutboxChainClient(backend, Outbox(db, backend.name), keyring, config=CONFIG)


async def household_with_fills(tmp: Path, url: str, g, wallet: Wallet) -> tuple[bytes, bytes, bytes, bytes]:  # type: ignore[no-untyped-def]
    """Fund household h1 and let it fill an old and a current order (recorded in the gateway's trades table,
    tmp/gw.db); plus an old fill by someone else. Returns (h1's address, old fill id, current fill id,
    someone else's old fill id)."""
    h1 = wallet.create("h1")
    dom = g.params().domain
    now_start = int(time.time()) // kit.INTERVAL * kit.INTERVAL
    old = kit.order(MAKER, 1, noia=6000, wh=600, expiry=FAR)
    cur = kit.order(MAKER, 2, noia=1000, wh=100, expiry=FAR, interval_start=now_start)
    theirs = kit.order(MAKER, 3, noia=500, wh=50, expiry=FAR)
    async with client(tmp / "setup.db", url, g, StaticKeyring([kit.key(i) for i in range(8)])) as c:
        assert (await c.wait_final(await c.submit(Intent("fund", kit.addr(2), Transfer(h1, 10_000))), 20)).ok
        assert (await c.wait_final(await c.submit(Intent("theirs", kit.addr(4), kit.fill(theirs))), 20)).ok
    conn = open_gateway_db(tmp / "gw.db")
    trades = TradeLog(conn)
    async with client(tmp / "h1.db", url, g, WalletKeyring(wallet)) as c:
        for o in (old, cur):
            fid = o.digest(dom)
            trades.record(Trade(fid, "g", o.interval_start, "h5", o.maker, "h1", h1, o.wh, o.noia, "rfq", "agent",
                                "agent", kit.signed(o), "fill:" + fid.hex(), FINAL))
            assert (await c.wait_final(await c.submit(Intent("fill:" + fid.hex(), h1, kit.fill(o))), 20)).ok
    conn.close()
    return h1, old.digest(dom), cur.digest(dom), theirs.digest(dom)


def test_a_household_reclaims_its_own_fill_past_the_timeout_and_nothing_else(tmp_path) -> None:
    async def go() -> None:
        async with real_node(tmp_path) as (g, url):
            wallet = Wallet(tmp_path / "w", SECRET, kdf=WalletKdf.light())
            try:
                h1, fold, fcur, ftheirs = await household_with_fills(tmp_path, url, g, wallet)
                async with client(tmp_path / "h1.db", url, g, WalletKeyring(wallet)) as c:
                    assert await c.balance(h1) == 10_000 - 7000
                    n = len(c.outbox.all())
                    for fid, reason in ((fcur, RECLAIM_TOO_EARLY), (ftheirs, NOT_TAKER), (b"\x09" * 32, NOT_ESCROWED)):
                        with pytest.raises(ReclaimRefused) as ei:
                            await reclaim_fill(c, h1, fid, g.params())
                        assert ei.value.reason == reason
                    assert len(c.outbox.all()) == n  # refused before anything was submitted
                    res = await reclaim_fill(c, h1, fold, g.params())
                    assert res.receipt.ok and res.refund == 6000
                    assert res.deadline == kit.GENESIS_TIME + kit.INTERVAL + 7 * 86_400
                    assert await c.balance(h1) == 10_000 - 1000
                    # asked again: the same intent, already final (idempotent), not a second tx
                    again = await c.submit(Intent(key_of(fold), h1, Reclaim(fold)))
                    assert (await c.wait_final(again, 5)).tx_hash == res.receipt.tx_hash
                    with pytest.raises(ReclaimRefused) as ei:
                        await reclaim_fill(c, h1, fold, g.params())
                    assert ei.value.reason == NOT_ESCROWED
                    # the gateway's clock past the deadline but the chain's not: the chain has the last word
                    res2 = await reclaim_fill(c, h1, fcur, g.params(), clock=lambda: 2**40, wait_s=20)
                    assert (res2.receipt.status, res2.receipt.reason) == ("rejected", RECLAIM_TOO_EARLY)
                    assert await c.balance(h1) == 10_000 - 1000
            finally:
                wallet.close()
    asyncio.run(go())


def test_candidates_are_the_households_unsettled_buys_past_the_deadline(tmp_path) -> None:
    conn = open_gateway_db(tmp_path / "gw.db")
    trades = TradeLog(conn)
    p = kit.PARAMS
    for n, (start, taker, state) in enumerate([(1000 * 900, "h1", FINAL), (1001 * 900, "h1", FINAL),
                                               (1000 * 900, "h2", FINAL), (999 * 900, "h1", "settled")]):
        o = kit.order(MAKER, n, interval_start=start)
        trades.record(Trade(o.digest(kit.DOMAIN), "g", start, "h5", o.maker, taker, kit.addr(3), o.wh, o.noia,
                            "rfq", "agent", "agent", kit.signed(o), f"fill:{n}", state))
    first = kit.order(MAKER, 0, interval_start=1000 * 900).digest(kit.DOMAIN)
    second = kit.order(MAKER, 1, interval_start=1001 * 900).digest(kit.DOMAIN)
    deadline = p.reclaim_deadline(1000 * 900)
    assert reclaim_candidates(conn, "h1", p, deadline - 1) == []
    assert reclaim_candidates(conn, "h1", p, deadline) == [first]
    assert reclaim_candidates(conn, "h1", p, deadline + 900) == [first, second]
    assert reclaim_candidates(conn, "h3", p, deadline + 900) == []
    conn.close()


def test_wallet_signs_a_reclaim_without_a_spend(tmp_path) -> None:
    wallet = Wallet(tmp_path / "w", SECRET, kdf=WalletKdf.light())
    try:
        a = wallet.create("h1")
        raw = wallet.sign_tx("h1", Tx(kit.CHAIN_ID, a, 0, Reclaim(b"\x01" * 32)), kit.DOMAIN, ByPolicy())
        assert verify_tx(raw, kit.DOMAIN).tx.payload == Reclaim(b"\x01" * 32)
        assert wallet.spent_today("h1") == 0
    finally:
        wallet.close()


def test_cli_wallet_reclaim(tmp_path) -> None:
    async def go() -> None:
        async with real_node(tmp_path) as (g, url):
            wallet = Wallet(tmp_path / "w", SECRET, kdf=WalletKdf.light())
            try:
                h1, fold, fcur, _ = await household_with_fills(tmp_path, url, g, wallet)
            finally:
                wallet.close()
            gfile = tmp_path / "genesis.json"
            gfile.write_text(json.dumps(g.to_json()))
            env = {**os.environ, "METANOIA_WALLET_SECRET": SECRET.decode()}

            async def cli(*which: str) -> tuple[int, dict]:  # type: ignore[type-arg]
                p = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.cli", "wallet", "reclaim", "h1", *which, "--dir",
                    str(tmp_path / "w"), "--rpc", url, "--genesis", str(gfile), "--test-kdf", "--json",
                    "--wait-final", "20", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(p.communicate(), 120)
                assert SECRET.decode() not in (out + err).decode()
                return p.returncode or 0, json.loads(out.decode().strip().splitlines()[-1])

            code, doc = await cli("0x" + fcur.hex())
            assert (code, doc) == (1, {"error": RECLAIM_TOO_EARLY})
            assert (await cli())[0] == 1  # neither a fill id nor --all
            # --all: the household's fills in the trades table past their deadline (the old one only)
            code, doc = await cli("--all", str(tmp_path / "gw.db"))
            assert code == 0 and doc["refused"] == [] and doc["household"] == "h1"
            (one,) = doc["reclaimed"]
            assert (one["fill_id"], one["status"], one["refund"]) == ("0x" + fold.hex(), "final", "6000")
            code, doc = await cli("0x" + fold.hex())
            assert (code, doc) == (1, {"error": NOT_ESCROWED})
            conn = open_gateway_db(tmp_path / "gw.db")
            assert {t.fill_id: t.state for t in TradeLog(conn).all()} == {fold: "reclaimed", fcur: "final"}
            conn.close()
            code, doc = await cli("--all", str(tmp_path / "gw.db"))  # nothing left to try
            assert (code, doc["reclaimed"], doc["refused"]) == (0, [], [])
            async with client(tmp_path / "check.db", url, g, StaticKeyring([])) as c:
                assert await c.balance(h1) == 10_000 - 1000
    asyncio.run(go())
