"""The EVM backend on a real anvil: every action through the outbox to a final receipt, the queries,
deterministic signing, gas limits, reverts as the bundled chain's reasons, idempotent sends, finality."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes

from gateway.chain_client import FINAL, REJECTED, Intent, NonceError, NonceFill
from gateway.chain_client.evm import EvmConfig
from gateway.chain_client.evm_codec import GAS, Fees, UnsupportedAction, gas_limit
from gateway.validator import tx as chain_tx
from gateway.validator.crypto import keccak256
from gateway.validator.order import sign_order
from gateway.validator.tx import Cancel, Checkpoint, Fill, SettleBatch, Settlement, Transfer
from tests.evm.evm_kit import EvmChain, dispose, evm_chain, make_client
from tests.gateway.validator import kit

SETTLE_TIMEOUT = 600


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvmChain]:
    with evm_chain(tmp_path_factory.mktemp("evm"), settle_timeout=SETTLE_TIMEOUT) as c:
        yield c


def past_interval(chain: EvmChain) -> int:
    """An interval whose settle timeout is over too (settle and reclaim both allowed)."""
    return (chain.now() // kit.INTERVAL) * kit.INTERVAL - 4 * kit.INTERVAL


def order(chain: EvmChain, maker: int, nonce: int, **kw: object) -> Fill:
    o = kit.order(maker, nonce, expiry=chain.now() + 3600, interval_start=past_interval(chain), **kw)  # type: ignore[arg-type]
    return Fill(sign_order(o, chain.backend().domain, kit.key(maker)))


def test_every_action_final_through_the_outbox_and_the_queries_read_the_exchange(chain: EvmChain,
                                                                                  tmp_path: Path) -> None:
    async def go() -> None:
        c = make_client(tmp_path / "gw.db", chain.url, chain.deployment)
        b = c.backend
        await b.attach()
        async with c:
            t3, t4 = await c.balance(kit.addr(3)), await c.balance(kit.addr(4))
            r = await c.wait_final(await c.submit(Intent("pay", kit.addr(3), kit.transfer(4, 777))), 30)
            assert r.ok and r.height is not None and r.height <= await c.finalized_number()
            f1, f2 = order(chain, 3, 11, noia=5000, wh=800), order(chain, 3, 12, noia=3000, wh=400)
            fid1, fid2 = (f.signed_order.order.digest(b.domain) for f in (f1, f2))
            ids = [await c.submit(Intent(f"fill:{i}", kit.addr(4), f)) for i, f in enumerate((f1, f2))]
            rf = await asyncio.gather(*(c.wait_final(i, 30) for i in ids))
            assert [x.status for x in rf] == [FINAL, FINAL] and rf[0].fill_id == fid1
            esc = await c.escrow(fid1)
            assert esc is not None and (esc.maker, esc.taker, esc.noia, esc.wh, esc.grid) == (
                kit.addr(3), kit.addr(4), 5000, 800, kit.GRID)
            assert await b.order_status(kit.addr(3), 11) == "filled"
            rc = await c.wait_final(await c.submit(Intent("cancel", kit.addr(3), Cancel(13))), 30)
            assert rc.ok and await b.order_status(kit.addr(3), 13) == "cancelled"
            assert await b.order_status(kit.addr(3), 14) == "open"
            start = f1.signed_order.order.interval_start
            batch = SettleBatch(kit.GRID, start, b"\x42" * 32, (Settlement(fid1, 600, 3750, 1250),))
            rs = await c.wait_final(await c.submit(Intent("settle", kit.addr(kit.COMPLEX), batch)), 30)
            assert rs.ok and await c.escrow(fid1) is None
            rec = await b.fill_record(fid1)
            assert rec is not None and (rec.status, rec.delivered_wh, rec.payment, rec.refund) == (
                "settled", 600, 3750, 1250)
            assert await b.interval_root(kit.GRID, start) == b"\x42" * 32
            assert await b.interval_root(kit.GRID, start + kit.INTERVAL) is None
            if hasattr(chain_tx, "Reclaim"):
                rr = await c.wait_final(await c.submit(Intent("reclaim", kit.addr(5), chain_tx.Reclaim(fid2))), 30)
                assert rr.ok and (await b.fill_record(fid2)).status == "reclaimed"  # type: ignore[union-attr]
                refund2 = 3000
            else:
                refund2 = 0
            rn = await c.wait_final(await c.submit(Intent("filler", kit.addr(4), NonceFill())), 30)
            assert rn.ok
            assert await c.balance(kit.addr(3)) == t3 - 777 + 3750
            assert await c.balance(kit.addr(4)) == t4 + 777 - 5000 - 3000 + 1250 + refund2
            # every action stayed under its fixed gas limit, and the nonces ran 1.. without a gap
            for row in c.outbox.all():
                rcpt = chain.node.rpc("eth_getTransactionReceipt", ["0x" + row.tx_hash.hex()])
                assert int(rcpt["gasUsed"], 16) <= gas_limit(row.intent.action), row.key  # 21,000 exactly for the filler
            assert sorted(r.nonce for r in c.outbox.all() if r.sender == kit.addr(4)) == [1, 2, 3]
        c.outbox.close()

    asyncio.run(go())


def test_signing_is_deterministic_and_uses_the_configured_gas_and_fees(chain: EvmChain) -> None:
    b = chain.backend(EvmConfig(fees=Fees(max_fee_per_gas=7 * 10**9, max_priority_fee_per_gas=10**9)))
    f = order(chain, 5, 99)
    intents = [Intent("a", kit.addr(6), kit.transfer(5, 1)), Intent("b", kit.addr(6), f),
               Intent("c", kit.addr(5), Cancel(3)), Intent("d", kit.addr(6), NonceFill()),
               Intent("e", kit.addr(kit.COMPLEX), SettleBatch(kit.GRID, 0, b"\x01" * 32, tuple(
                   Settlement(bytes([i]) * 32, 1, 1, 0) for i in range(1, 4))))]
    for it in intents:
        one, two = b.build(it, 5, KEY_OF[it.sender]), b.build(it, 5, KEY_OF[it.sender])
        assert one == two and one.tx_hash == keccak256(one.raw) and one.nonce == 5
        assert b.build(it, 6, KEY_OF[it.sender]).raw != one.raw
        assert Account.recover_transaction(one.raw).lower() == "0x" + it.sender.hex()
        tx = TypedTransaction.from_bytes(HexBytes(one.raw)).as_dict()
        assert (tx["chainId"], tx["nonce"], tx["gas"], tx["maxFeePerGas"], tx["maxPriorityFeePerGas"]) == (
            chain.deployment.chain_id, 5, gas_limit(it.action), 7 * 10**9, 10**9)
    assert gas_limit(intents[4].action) == GAS["settle"] + 3 * GAS["settle_entry"]
    assert chain.backend().build(intents[0], 5, KEY_OF[kit.addr(6)]).raw != b.build(intents[0], 5,
                                                                                   KEY_OF[kit.addr(6)]).raw
    with pytest.raises(UnsupportedAction):
        b.build(Intent("cp", kit.addr(0), Checkpoint(1, b"\x01" * 32, b"\x02" * 32)), 0, kit.key(0))


KEY_OF = {kit.addr(i): kit.key(i) for i in range(10)}


def test_reverts_are_rejected_with_the_exchange_reason_and_use_their_nonce(chain: EvmChain, tmp_path: Path) -> None:
    async def go() -> None:
        c = make_client(tmp_path / "gw.db", chain.url, chain.deployment)
        async with c:
            f = order(chain, 6, 50, noia=100)
            ok = await c.wait_final(await c.submit(Intent("fill", kit.addr(7), f)), 30)
            twice = await c.wait_final(await c.submit(Intent("fill again", kit.addr(5), f)), 30)
            bad_settle = SettleBatch(kit.GRID, past_interval(chain), b"\x01" * 32,
                                     (Settlement(ok.fill_id or b"", 1, 100, 0),))
            unauth = await c.wait_final(await c.submit(Intent("settle by 5", kit.addr(5), bad_settle)), 30)
            over = await c.wait_final(await c.submit(Intent("overspend", kit.addr(5), kit.transfer(6, 10**30))), 30)
            after = await c.wait_final(await c.submit(Intent("after", kit.addr(5), kit.transfer(6, 1))), 30)
            assert ok.ok and after.ok
            assert [(x.status, x.reason) for x in (twice, unauth, over)] == [
                (REJECTED, "order_already_filled"), (REJECTED, "not_authority"), (REJECTED, "insufficient_balance")]
            # a reverted tx is mined and uses its nonce: no filler row, the next tx takes the next nonce
            assert [x.nonce for x in (twice, unauth, over, after)] == [twice.nonce + i for i in range(4)]
            assert not any(r.kind == "nonce_fill" for r in c.outbox.all())
        c.outbox.close()

    asyncio.run(go())


def test_out_of_gas_with_a_gas_table_too_small(chain: EvmChain, tmp_path: Path) -> None:
    async def go() -> None:
        cfg = EvmConfig(gas=dict(GAS, fill=60_000))
        c = make_client(tmp_path / "gw.db", chain.url, chain.deployment, config=cfg)
        async with c:
            r = await c.wait_final(await c.submit(Intent("fill", kit.addr(7), order(chain, 2, 70))), 30)
            assert (r.status, r.reason) == (REJECTED, "out_of_gas")
        c.outbox.close()

    asyncio.run(go())


def test_sends_are_idempotent_and_a_foreign_tx_at_a_used_nonce_is_a_nonce_error(chain: EvmChain) -> None:
    async def go() -> None:
        b = chain.backend()
        n = await b.pending_nonce(kit.addr(2))
        stx = b.build(Intent("x", kit.addr(2), kit.transfer(3, 5)), n, kit.key(2))
        assert await b.send(stx.raw) == stx.tx_hash
        assert await b.send(stx.raw) == stx.tx_hash                  # pooled: "already imported" (or just mined)
        assert (await b.tx_status(stx.tx_hash)).status in ("pending", "included", "final")
        for _ in range(100):
            if (await b.tx_status(stx.tx_hash)).status == "final":
                break
            await asyncio.sleep(0.1)
        st = await b.tx_status(stx.tx_hash)
        assert st.status == "final" and st.height is not None
        assert await b.send(stx.raw) == stx.tx_hash                  # mined: "nonce too low", found by hash
        other = b.build(Intent("y", kit.addr(2), kit.transfer(3, 6)), n, kit.key(2))
        with pytest.raises(NonceError) as ei:
            await b.send(other.raw)
        assert ei.value.reason == "bad_nonce"
        assert await b.nonce(kit.addr(2)) == n + 1
        assert (await b.tx_status(other.tx_hash)).status == "unknown"
        assert b.counters["send_bad_nonce"] >= 2 and b.counters["send_bad_nonce"] + b.counters.get("send_known", 0) == 3
        await b.aclose()

    asyncio.run(go())


def test_n_confirmations_finality(chain: EvmChain) -> None:
    async def go() -> None:
        b = chain.backend(EvmConfig(finality=8, head_cache_s=0))
        assert await b.finality_mode() == 8
        head = await b.block_number()
        assert head - 8 <= await b.finalized_number() <= head - 5     # blocks may come between the two reads
        n = await b.pending_nonce(kit.addr(2))
        stx = b.build(Intent("z", kit.addr(2), kit.transfer(3, 5)), n, kit.key(2))
        await b.send(stx.raw)
        seen = []
        for _ in range(200):
            st = await b.tx_status(stx.tx_hash)
            if not seen or seen[-1] != st.status:
                seen.append(st.status)
            if st.status == "final":
                break
            await asyncio.sleep(0.05)
        assert seen[-1] == "final" and "included" in seen
        assert st.height is not None and await b.finalized_number() >= st.height
        await b.aclose()

    asyncio.run(go())


def test_a_nonce_used_outside_the_outbox_is_re_signed_only_once_that_use_is_final(chain: EvmChain,
                                                                                   tmp_path: Path) -> None:
    """The outbox starts an account at its nonce at the finality point. A tx sent elsewhere and not yet final
    takes that nonce: the outbox's tx is refused ("nonce too low" / a replacement) and waits; once the other
    tx is final the stale-nonce rule re-signs the intent with the next nonce. Applied once, the dead bytes kept."""
    async def go() -> None:
        cfg = EvmConfig(finality=15)                      # 15 blocks of 0.2 s: the outside tx stays unfinal a while
        b = chain.backend(cfg)
        n = await b.pending_nonce(kit.addr(7))
        for _ in range(200):                              # the account's earlier txs all 15 blocks deep first
            if await b.nonce(kit.addr(7)) == n:
                break
            await asyncio.sleep(0.1)
        outside = b.build(Intent("elsewhere", kit.addr(7), kit.transfer(2, 11)), n, kit.key(7))
        assert await b.send(outside.raw) == outside.tx_hash
        before = await b.balance(kit.addr(6))
        c = make_client(tmp_path / "gw.db", chain.url, chain.deployment, config=cfg)
        async with c:
            r = await c.wait_final(await c.submit(Intent("pay 6", kit.addr(7), kit.transfer(6, 5))), 60)
            assert r.ok and r.nonce == n + 1
            (dead_nonce, dead_hash, why), = c.outbox.attempts("pay 6")
            assert (dead_nonce, why) == (n, "stale_nonce") and dead_hash != r.tx_hash
            assert (await b.tx_status(dead_hash)).status == "unknown"     # the first bytes never applied
            assert (await b.tx_status(outside.tx_hash)).status == "final"
            assert await b.balance(kit.addr(6)) == before + 5 and await b.nonce(kit.addr(7)) == n + 2
            assert c.counters.get("resigned_stale") == 1
        c.outbox.close()
        await b.aclose()

    asyncio.run(go())
