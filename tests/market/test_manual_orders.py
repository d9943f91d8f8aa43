"""A homeowner's manual orders beside the agents: approved in the wallet, executed by the same mechanisms,
cancelled on the chain when signed but unfilled; the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest

from gateway.cli import main as cli
from gateway.market.mechanisms import CallAuction
from gateway.market.mechanisms.execute import Executor
from gateway.market.orders import CANCELLED, FILLED, OPEN, SIGNED, OrderError
from gateway.market.trades import FINAL
from gateway.market.wallet_policy import SpendRefused
from gateway.validator.tx import Fill
from tests.market.test_agents import NOIA, world


def test_rfq_manual_sell_is_a_firm_order_a_taker_fills_and_a_manual_buy_fills_once(tmp_path: Path) -> None:
    async def go() -> None:
        async with world(tmp_path) as w:
            s = w.start
            # h1 sells 1000 Wh by hand, cheaper than any agent quote (none posted): the taker takes it
            o = w.manual.place("h1", "sell", s, 1000, 10**17)
            assert o.state == SIGNED and o.signed_order is not None and o.signed_order.order.wh == 1000
            other = dataclasses.replace(o.signed_order.order, wh=999)
            with pytest.raises(SpendRefused) as e:    # the approval was used by the firm order
                w.wallet.sign_order("h1", other, w.config.domain,
                                    __import__("gateway.market.wallet_policy", fromlist=["ByHomeowner"]).ByHomeowner(o.id))
            assert e.value.reason == "authorisation_used"
            trades = await w.takers["h3"].cover(s)
            assert [(t.maker_household, t.wh, t.maker_origin, t.state) for t in trades][0] == \
                ("h1", 1000, f"manual:{o.id}", FINAL)
            assert w.manual.get(o.id).state == FILLED      # type: ignore[union-attr]
            # h4 buys by hand: one fill of at most 300 Wh at no more than 1 NOIA/Wh, from h2's agent
            assert (await w.makers["h2"].post_intent(w.rpc, s, w.makers["h2"].locator))["accepted"]  # type: ignore[attr-defined]
            b = w.manual.place("h4", "buy", s, 300, NOIA)
            got = await w.manual.execute_buy(b.id, w.takers["h4"])
            assert [(t.maker_household, t.wh, t.origin, t.state) for t in got] == [("h2", 300, f"manual:{b.id}", FINAL)]
            assert w.manual.get(b.id).state == FILLED      # type: ignore[union-attr]
            with pytest.raises(OrderError) as e2:
                await w.manual.cancel(b.id, "h4", w.chain)
            assert e2.value.reason == "filled"

    asyncio.run(go())


def test_cancel_withdraws_an_open_order_and_cancels_a_signed_one_on_chain(tmp_path: Path) -> None:
    async def go() -> None:
        async with world(tmp_path) as w:
            s = w.start
            a = w.manual.place("h4", "buy", s, 200, NOIA)
            with pytest.raises(OrderError) as e:
                await w.manual.cancel(a.id, "h3")
            assert e.value.reason == "not_yours"
            assert (await w.manual.cancel(a.id, "h4")).state == CANCELLED
            with pytest.raises(OrderError) as e:
                await w.manual.cancel(a.id, "h4")
            assert e.value.reason == "already_cancelled"
            o = w.manual.place("h2", "sell", s, 500, 10**17)
            assert (await w.manual.cancel(o.id, "h2", w.chain)).state == CANCELLED
            assert w.manual.firm_asks(s) == []
            # a fill of the cancelled order now fails on the chain: order_cancelled, recorded as rejected
            assert o.signed_order is not None
            t = await w.filler.fill("h3", o.signed_order, __import__("gateway.market.wallet_policy",
                                    fromlist=["ByPolicy"]).ByPolicy(), mechanism="rfq")
            assert t.state == "rejected" and t.reason == "order_cancelled"

    asyncio.run(go())


def test_auction_manual_orders_split_their_approval_among_counterparties(tmp_path: Path) -> None:
    async def go() -> None:
        async with world(tmp_path) as w:
            s = w.start
            sell = w.manual.place("h2", "sell", s, 600, 2 * 10**17, mechanism="auction")
            assert sell.state == OPEN
            b3 = w.manual.place("h3", "buy", s, 400, NOIA, mechanism="auction")
            b4 = w.manual.place("h4", "buy", s, 200, 3 * 10**17, mechanism="auction")
            book = w.manual.book_orders(s)
            bids = [o for o in book if o.side == "buy"]
            asks = [o for o in book if o.side == "sell"]
            c = CallAuction().clear(s, bids, asks)
            assert c.volume_wh == 600 and c.price_per_wh == 25 * 10**16  # all matched: [ask 2e17, marginal bid 3e17], middle
            assert {(m.buyer, m.wh) for m in c.matches} == {("h3", 400), ("h4", 200)}
            ex = Executor(w.filler, lambda h, t: 0)
            trades = await ex.execute(c, book, now=int(time.time()))
            assert all(t.state == FINAL and t.maker_origin == f"manual:{sell.id}" for t in trades)
            assert {w.manual.get(x.id).state for x in (sell, b3, b4)} == {FILLED}  # type: ignore[union-attr]
            # the seller's single approval was split in two (one per counterparty), each used once
            rows = w.wallet._conn().execute("SELECT used_for FROM wallet_manual_orders WHERE id = ?",
                                            (sell.id,)).fetchone()
            assert rows[0] == b"split"

    asyncio.run(go())


def test_cli_place_list_cancel(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("METANOIA_WALLET_SECRET", "cli-master-secret-0123456789")
    wd, db = str(tmp_path / "w"), str(tmp_path / "g.db")
    assert cli(["wallet", "create", "--dir", wd, "--test-kdf", "h1"]) == 0
    gen = tmp_path / "genesis.json"
    from tests.gateway.validator.netkit import genesis_doc
    gen.write_text(json.dumps(genesis_doc(1)))
    capsys.readouterr()
    start = int(time.time()) // 900 * 900 + 1800
    base = ["market", "order", "--db", db, "--wallet-dir", wd, "--grid", "test-complex", "--genesis", str(gen)]
    assert cli(base + ["place", "h1", "--side", "buy", "--interval", str(start), "--wh", "500",
                       "--price", "1000"]) == 0
    placed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert placed["state"] == "open" and placed["wh"] == 500
    assert cli(base + ["list", "--household", "h1"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [o["id"] for o in listed["orders"]] == [placed["id"]]
    assert cli(base + ["cancel", "h1", placed["id"]]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["state"] == "cancelled"
    assert cli(base + ["cancel", "h1", placed["id"]]) == 1
    assert "already_cancelled" in capsys.readouterr().err
