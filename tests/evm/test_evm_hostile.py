"""Hostile input to the EVM backend: what it decodes from a node (JSON-RPC answers, receipts, traces,
view results, send refusals) and revert data. Every bad answer is a counted ``ChainUnavailable
(bad_response)`` (the outbox retries later); never another exception, never a wrong verdict.

The node here is a scripted JSON-RPC server over real HTTP (aiohttp on loopback) that answers what
each test tells it: no real node returns garbage on demand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from eth_abi import encode as abi_encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.chain_client import ChainUnavailable, NodeBusy, NonceError, TxInvalid
from gateway.chain_client.evm import EvmBackend, EvmConfig
from gateway.chain_client.evm_codec import (ERROR_SELECTOR, MAX_REVERT_DATA, PANIC_SELECTOR, REJECTED_SELECTOR,
                                            revert_reason)
from gateway.evm.compile import compile_contracts
from gateway.evm.deploy import Deployment
from gateway.validator.crypto import keccak256
from tests.evm.evm_kit import json_rpc_server

H = b"\xab" * 32
BH = b"\xcd" * 32

Answer = Callable[[list[Any]], Any]   # params -> result, or raises _Err


class _Err(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.obj = {"code": code, "message": message, **({"data": data} if data is not None else {})}


@asynccontextmanager
async def hostile_node(answers: dict[str, Any]) -> AsyncIterator[str]:
    """``answers[method]``: a JSON value (the result), an ``_Err`` or a callable of the params."""
    async def handle(req: web.Request) -> web.Response:
        body = await req.json()
        ans = answers.get(body["method"], _Err(-32601, "method not found"))
        try:
            res = ans(body["params"]) if callable(ans) else ans
            if isinstance(res, _Err):
                raise res
            doc = {"jsonrpc": "2.0", "id": body["id"], "result": res}
        except _Err as e:
            doc = {"jsonrpc": "2.0", "id": body["id"], "error": e.obj}
        return web.Response(text=json.dumps(doc), content_type="application/json")

    async with json_rpc_server(handle) as url:
        try:
            yield url
        finally:
            while _MADE:
                await _MADE.pop().aclose()


def deployment() -> Deployment:
    art = compile_contracts()
    return Deployment(31337, b"\x11" * 20, b"\x22" * 20, b"\x33" * 20, 900, 600, 1, art["NoiaToken"]["abi"],
                      art["Exchange"]["abi"])


_MADE: list[EvmBackend] = []


def backend(url: str) -> EvmBackend:
    b = EvmBackend(url, deployment(), EvmConfig(finality=2, timeout=3, head_cache_s=0))
    _MADE.append(b)
    return b


def receipt(**kw: Any) -> dict[str, Any]:
    r = {"transactionHash": "0x" + H.hex(), "blockNumber": "0x5", "blockHash": "0x" + BH.hex(), "status": "0x1",
         "gasUsed": "0x5208"}
    r.update(kw)
    return r


def rejected(reason: str) -> bytes:
    return REJECTED_SELECTOR + abi_encode(["string"], [reason])


# ---- revert data ----------------------------------------------------------------------------------

def test_revert_data_maps_to_the_bundled_chain_reasons() -> None:
    assert revert_reason(rejected("order_expired")) == ("order_expired", "Rejected")
    assert revert_reason(ERROR_SELECTOR + abi_encode(["string"], ["insufficient balance"]))[0] == "insufficient_balance"
    assert revert_reason(ERROR_SELECTOR + abi_encode(["string"], ["insufficient allowance"]))[0] == \
        "insufficient_allowance"
    assert revert_reason(ERROR_SELECTOR + abi_encode(["string"], ["something else"]))[0] == "reverted"
    assert revert_reason(PANIC_SELECTOR + abi_encode(["uint256"], [0x11]))[0] == "panic_0x11"
    assert revert_reason(PANIC_SELECTOR + abi_encode(["uint256"], [2**255]))[0] == "reverted"
    assert revert_reason(b"") == ("reverted", "no revert data")
    assert revert_reason(b"", used_all_gas=True)[0] == "out_of_gas"
    # a Rejected string that is not a reason code is not passed on as one
    for text in ("Order Expired", "", "x" * 65, "drop table;", "reason\n", "é"):
        assert revert_reason(rejected(text))[0] == "reverted"
    # truncated, lying offsets and lengths, trailing bytes, unknown selectors, oversize
    good = rejected("order_expired")
    for bad in (good[:4], good[:40], good[:-1], REJECTED_SELECTOR + (2**255).to_bytes(32, "big") + good[36:],
                REJECTED_SELECTOR + good[4:36] + (10**6).to_bytes(32, "big") + good[68:],
                PANIC_SELECTOR + b"\x01", b"\xde\xad\xbe\xef" + good[4:], b"\x01\x02",
                REJECTED_SELECTOR + b"\x00" * (MAX_REVERT_DATA + 1)):
        assert revert_reason(bad)[0] == "reverted", bad.hex()


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda s, tail: s + tail, st.sampled_from([REJECTED_SELECTOR, ERROR_SELECTOR,
                                                                      PANIC_SELECTOR]), st.binary(max_size=200))),
       st.booleans())
def test_any_revert_data_gives_a_reason_code_and_never_raises(data: bytes, oog: bool) -> None:
    reason, detail = revert_reason(data, used_all_gas=oog)
    assert reason.replace("_", "").isalnum() and reason == reason.lower() and len(reason) <= 64
    assert isinstance(detail, str) and len(detail) <= 400


# ---- answers from a hostile node ------------------------------------------------------------------

def _status_answers(rc: Any, block_hash: bytes = BH) -> dict[str, Any]:
    return {"eth_getTransactionReceipt": rc, "eth_blockNumber": "0x10",
            "eth_getBlockByNumber": {"hash": "0x" + block_hash.hex(), "number": "0x5"},
            "eth_getTransactionByHash": None,
            "debug_traceTransaction": {"output": "0x" + rejected("order_cancelled").hex(), "gas": "0x30000"}}


BAD_RECEIPTS = [
    "not a receipt", 7, [], {},
    receipt(transactionHash="0x" + (b"\x01" * 32).hex()),      # a receipt for another tx
    receipt(blockNumber="five"), receipt(blockNumber=5), receipt(blockNumber="0x"), receipt(blockNumber=None),
    receipt(blockHash="0x1234"), receipt(blockHash="0x" + "zz" * 32), receipt(status="0x2"), receipt(status=True),
    receipt(gasUsed=[1]), receipt(blockNumber="0x" + "f" * 80),
]


@pytest.mark.parametrize("rc", BAD_RECEIPTS, ids=range(len(BAD_RECEIPTS)))
def test_a_malformed_receipt_is_a_counted_bad_response(rc: Any) -> None:
    async def go() -> None:
        async with hostile_node(_status_answers(rc)) as url:
            b = backend(url)
            with pytest.raises(ChainUnavailable) as ei:
                await b.tx_status(H)
            assert ei.value.reason == "bad_response" and b.counters["bad_response"] == 1
            await b.aclose()

    asyncio.run(go())


def test_receipt_verdicts_final_rejected_included_and_a_non_canonical_block() -> None:
    async def go() -> None:
        async with hostile_node(_status_answers(receipt())) as url:
            b = backend(url)
            assert (await b.tx_status(H)).status == "final"
        async with hostile_node(_status_answers(receipt(status="0x0"))) as url:
            b = backend(url)
            st = await b.tx_status(H)
            assert (st.status, st.reason, st.height) == ("rejected", "order_cancelled", 5)
        async with hostile_node(_status_answers(receipt(blockNumber="0xf"))) as url:
            assert (await backend(url).tx_status(H)).status == "included"          # above head - 2
        async with hostile_node(_status_answers(receipt(), block_hash=b"\x99" * 32)) as url:
            b = backend(url)
            assert (await b.tx_status(H)).status == "pending"                       # reorganised away
            assert b.counters["receipt_not_canonical"] == 1
        # a garbage trace: counted, no verdict; no debug namespace: replayed with eth_call on the parent
        ans = _status_answers(receipt(status="0x0"))
        ans["debug_traceTransaction"] = {"output": "0xnothex", "gas": "0x1"}
        async with hostile_node(ans) as url:
            with pytest.raises(ChainUnavailable):
                await backend(url).tx_status(H)
        ans = _status_answers(receipt(status="0x0"))
        del ans["debug_traceTransaction"]
        ans["eth_getTransactionByHash"] = {"from": "0x" + "44" * 20, "to": "0x" + "22" * 20, "input": "0x",
                                           "gas": "0x30000"}
        ans["eth_call"] = _Err(3, "execution reverted", "0x" + rejected("self_fill").hex())
        async with hostile_node(ans) as url:
            assert (await backend(url).tx_status(H)).reason == "self_fill"
        ans["eth_call"] = _Err(3, "execution reverted", {"data": "0x" + rejected("zero_amount").hex()})
        async with hostile_node(ans) as url:
            assert (await backend(url).tx_status(H)).reason == "zero_amount"

    asyncio.run(go())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["transactionHash", "blockNumber", "blockHash", "status", "gasUsed"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=70),
                                 st.sampled_from(["0x", "0x0", "0x1", "0x5", "0x" + H.hex(), "0x" + BH.hex()]))))
def test_any_receipt_fields_give_a_verdict_or_a_bad_response(fields: dict[str, Any]) -> None:
    async def go() -> None:
        async with hostile_node(_status_answers(receipt(**fields))) as url:
            b = backend(url)
            try:
                st = await b.tx_status(H)
                assert st.status in ("final", "rejected", "included", "pending")
            except ChainUnavailable as exc:
                assert exc.reason == "bad_response"
            await b.aclose()

    asyncio.run(go())


def test_send_answers_and_refusals() -> None:
    raw = b"\x02\x01\x02\x03"
    h = keccak256(raw)

    async def send_with(answers: dict[str, Any]) -> tuple[Any, EvmBackend]:
        async with hostile_node(answers) as url:
            b = backend(url)
            try:
                return await b.send(raw), b
            except Exception as exc:  # the test looks at which one
                return exc, b

    async def go() -> None:
        assert (await send_with({"eth_sendRawTransaction": "0x" + h.hex()}))[0] == h
        other, b = await send_with({"eth_sendRawTransaction": "0x" + (b"\x01" * 32).hex()})   # hash of other bytes
        assert isinstance(other, ChainUnavailable) and b.counters["bad_response"] == 1
        for res in (None, 12, "0x12", ["0x" + h.hex()]):
            assert isinstance((await send_with({"eth_sendRawTransaction": res}))[0], ChainUnavailable)
        known = {"eth_sendRawTransaction": _Err(-32003, "transaction already imported")}
        assert (await send_with(known))[0] == h
        low = {"eth_sendRawTransaction": _Err(-32000, "nonce too low"), "eth_getTransactionReceipt": None,
               "eth_getTransactionByHash": None}
        assert isinstance((await send_with(low))[0], NonceError)
        low["eth_getTransactionByHash"] = {"hash": "0x" + h.hex()}                      # pooled: this very tx
        assert (await send_with(low))[0] == h
        for msg, kind, reason in (("replacement transaction underpriced", NodeBusy, "nonce_in_use"),
                                  ("Insufficient funds for gas * price + value", NodeBusy, "insufficient_gas_funds"),
                                  ("max fee per gas less than block base fee", NodeBusy, "fee_below_base_fee"),
                                  ("invalid chain id for signer", TxInvalid, "wrong_chain_id"),
                                  ("intrinsic gas too low", TxInvalid, "intrinsic_gas_too_low"),
                                  ("Failed to decode transaction", TxInvalid, "bad_encoding"),
                                  ("the moon is full", NodeBusy, "node_refused")):
            exc, b = await send_with({"eth_sendRawTransaction": _Err(-32000, msg)})
            assert isinstance(exc, kind) and exc.reason == reason, msg
            assert b.counters[f"send_{reason}"] == 1

    asyncio.run(go())


def test_view_results_are_decoded_strictly() -> None:
    async def go() -> None:
        for out in ("0x", "0x1234", "0x" + "00" * 33, 5, None, "0x" + "zz" * 32):
            async with hostile_node({"eth_call": out}) as url:
                b = backend(url)
                with pytest.raises(ChainUnavailable):
                    await b.balance(b"\x44" * 20)
                assert b.counters["bad_response"] == 1
        fills = abi_encode(["address", "uint64", "address", "uint64", "uint8", "uint256", "bytes32", "uint64",
                            "uint256", "uint256"], ["0x" + "44" * 20, 1, "0x" + "55" * 20, 2, 7, 3, b"\x00" * 32,
                                                    0, 0, 0])
        async with hostile_node({"eth_call": "0x" + fills.hex()}) as url:       # a fill status the contract lacks
            with pytest.raises(ChainUnavailable):
                await backend(url).fill_record(b"\x01" * 32)
        async with hostile_node({"eth_call": "0x" + abi_encode(["uint8"], [9]).hex()}) as url:
            with pytest.raises(ChainUnavailable):
                await backend(url).order_status(b"\x44" * 20, 1)
        async with hostile_node({"eth_call": _Err(3, "execution reverted")}) as url:  # a view that reverts
            with pytest.raises(ChainUnavailable):
                await backend(url).balance(b"\x44" * 20)
        async with hostile_node({"eth_chainId": "0x5"}) as url:
            with pytest.raises(Exception) as ei:
                await backend(url).attach()
            assert getattr(ei.value, "reason", None) == "wrong_chain_id"

    asyncio.run(go())
