"""JSON-RPC 2.0 (rpc.py) on one in-process validator over real HTTP: every method, every error class,
idempotent submission, and garbage bodies (hypothesis) that must never crash the node."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.validator.crypto import keccak256
from gateway.validator.genesis import parse_genesis
from gateway.validator.node import Node

from . import kit
from .netkit import START, genesis_doc, node_configs


def with_node(tmp_path, scenario, **kw) -> None:
    async def main() -> None:
        g = parse_genesis(genesis_doc(1, 0.2))
        node = Node(node_configs(tmp_path, g, 1, **kw)[0])
        await node.start()
        url = f"http://{node.rpc_address[0]}:{node.rpc_address[1]}/"
        try:
            async with aiohttp.ClientSession() as s:
                await scenario(node, s, url)
        finally:
            await node.stop()
    asyncio.run(main())


async def post(s: aiohttp.ClientSession, url: str, body) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        text = await r.read()
        return r.status, (json.loads(text) if text else None)


async def call(s, url, method, *params):
    _, body = await post(s, url, {"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)})
    assert body["id"] == 7 and body["jsonrpc"] == "2.0"
    return body


def test_every_method_on_a_live_chain(tmp_path):
    async def scenario(node, s, url):
        u2, u3 = "0x" + kit.addr(2).hex(), "0x" + kit.addr(3).hex()
        o = kit.order(3, nonce=11, noia=500, expiry=2**40)
        raw_fill = kit.raw_tx(2, 0, kit.fill(o))
        raw_tr = kit.raw_tx(2, 1, kit.transfer(3, 1000))
        h_fill = (await call(s, url, "chain_sendRawTransaction", "0x" + raw_fill.hex()))["result"]
        # idempotent: the same tx again returns its hash and is applied once
        assert (await call(s, url, "chain_sendRawTransaction", "0x" + raw_fill.hex()))["result"] == h_fill
        res = (await call(s, url, "chain_sendRawTransactions", ["0x" + raw_tr.hex(), "0x" + raw_fill.hex(), "0xzz",
                                                                  "0x" + kit.raw_tx(2, 1, kit.transfer(4, 1)).hex()]))
        h_tr = res["result"][0]
        assert res["result"][1] == h_fill and res["result"][2] == {"error": "bad_hex"}
        assert res["result"][3] == {"error": "nonce_in_use"}
        assert (await call(s, url, "chain_getNonce", u2))["result"] == 2        # counts the pending run
        st = (await call(s, url, "chain_waitFinal", h_tr, 10))["result"]
        assert st["status"] == "final" and st["height"] >= 1, st
        assert (await call(s, url, "chain_getTransactionStatus", h_fill))["result"]["status"] == "final"
        rc = (await call(s, url, "chain_getTransactionReceipt", h_fill))["result"]
        fill_id = "0x" + o.digest(kit.DOMAIN).hex()
        assert rc["type"] == "fill" and rc["fillId"] == fill_id and rc["sender"] == u2
        esc = (await call(s, url, "chain_getEscrow", fill_id))["result"]
        assert esc["status"] == "escrowed" and esc["noia"] == "500" and esc["maker"] == u3
        assert (await call(s, url, "chain_getEscrow", "0x" + "00" * 32))["result"] is None
        assert (await call(s, url, "chain_getBalance", u2))["result"] == str(START - 500 - 1000)
        assert (await call(s, url, "chain_getBalance", u3))["result"] == str(START + 1000)
        assert (await call(s, url, "chain_getNonce", u2))["result"] == 2
        # resubmitting a final tx: its hash again, never a second application
        assert (await call(s, url, "chain_sendRawTransaction", "0x" + raw_tr.hex()))["result"] == h_tr
        await asyncio.sleep(0.5)
        assert (await call(s, url, "chain_getBalance", u3))["result"] == str(START + 1000)
        n = (await call(s, url, "chain_blockNumber"))["result"]
        assert (await call(s, url, "chain_finalizedNumber"))["result"] >= n
        blk = (await call(s, url, "chain_getBlockByNumber", rc["blockNumber"]))["result"]
        assert rc["txHash"] in blk["transactions"] and blk["hash"] == rc["blockHash"]
        assert blk["certificate"]["signers"] == ["0x" + node.address.hex()]
        full = (await call(s, url, "chain_getBlockByNumber", rc["blockNumber"], True))["result"]
        assert "0x" + raw_fill.hex() in full["transactions"]
        assert (await call(s, url, "chain_getBlockByNumber", "latest"))["result"]["number"] >= n
        assert (await call(s, url, "chain_getBlockByNumber", 10**6))["result"] is None
        stat = (await call(s, url, "chain_status"))["result"]
        assert stat["validators"] == 1 and stat["validatorsUp"] == 1 and stat["height"] >= n
        assert stat["counters"]["mempool_accepted"] == 2
        # unknown and rejected transactions
        unk = (await call(s, url, "chain_getTransactionStatus", "0x" + "11" * 32))["result"]
        assert unk == {"status": "unknown", "height": None, "reason": None}
        bad = bytearray(kit.raw_tx(4, 0, kit.transfer(3, 1)))
        bad[60] ^= 1
        err = (await call(s, url, "chain_sendRawTransaction", "0x" + bytes(bad).hex()))["error"]
        assert err["code"] == -32000 and err["data"]["reason"] in ("signer_mismatch", "bad_signature")
        from gateway.validator.crypto import keccak256
        st = (await call(s, url, "chain_getTransactionStatus", "0x" + keccak256(bytes(bad)).hex()))["result"]
        assert st["status"] == "rejected" and st["reason"] == err["data"]["reason"]
        stale = kit.raw_tx(2, 0, kit.transfer(5, 1))       # replayed nonce
        err = (await call(s, url, "chain_sendRawTransaction", "0x" + stale.hex()))["error"]
        assert err["data"]["reason"] == "bad_nonce"
        other = kit.raw_tx(2, 2, kit.transfer(5, 1), chain_id=99)
        assert (await call(s, url, "chain_sendRawTransaction", "0x" + other.hex()))["error"]["data"]["reason"] \
            == "wrong_chain_id"
        # a rejected tx (expired order) does not take the sender's later nonces down with it
        expired = kit.raw_tx(4, 0, kit.fill(kit.order(5, nonce=1, expiry=1000)))
        later = kit.raw_tx(4, 1, kit.transfer(5, 7))
        res = (await call(s, url, "chain_sendRawTransactions", ["0x" + expired.hex(), "0x" + later.hex()]))["result"]
        st = (await call(s, url, "chain_waitFinal", res[0], 2))["result"]
        assert st["status"] == "rejected" and st["reason"] == "order_expired"
        assert (await call(s, url, "chain_getTransactionStatus", res[1]))["result"]["status"] == "pending"
        refill = kit.raw_tx(4, 0, kit.transfer(5, 3))
        h = (await call(s, url, "chain_sendRawTransaction", "0x" + refill.hex()))["result"]
        assert (await call(s, url, "chain_waitFinal", res[1], 10))["result"]["status"] == "final"
        assert (await call(s, url, "chain_getTransactionStatus", h))["result"]["status"] == "final"
        # wait that times out
        t = (await call(s, url, "chain_waitFinal", "0x" + "22" * 32, 0.2))["result"]
        assert t["status"] == "unknown"
    with_node(tmp_path, scenario)


def test_error_codes(tmp_path):
    async def scenario(node, s, url):
        assert (await post(s, url, b"{not json"))[1]["error"]["code"] == -32700
        assert (await post(s, url, b"[]"))[1]["error"]["code"] == -32600
        assert (await post(s, url, {"jsonrpc": "1.0", "id": 1, "method": "chain_status"}))[1]["error"]["code"] == -32600
        assert (await post(s, url, {"jsonrpc": "2.0", "id": 1, "method": 5}))[1]["error"]["code"] == -32600
        assert (await post(s, url, {"jsonrpc": "2.0", "id": 1, "method": "eth_nope"}))[1]["error"]["code"] == -32601
        assert (await post(s, url, {"jsonrpc": "2.0", "id": 1, "method": "debug_setPartitioned", "params": [True]}
                           ))[1]["error"]["code"] == -32601       # debug methods are off by default
        for method, params in [("chain_getBalance", ["0x12"]), ("chain_getBalance", []),
                               ("chain_getTransactionStatus", ["0x" + "00" * 31]),
                               ("chain_getBlockByNumber", [-1]), ("chain_getBlockByNumber", ["pending"]),
                               ("chain_waitFinal", ["0x" + "00" * 32, 1000]), ("chain_sendRawTransaction", [1]),
                               ("chain_sendRawTransactions", ["0x00"]), ("chain_status", [1])]:
            body = (await post(s, url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))[1]
            assert body["error"]["code"] == -32602, (method, params, body)
        body = (await post(s, url, {"jsonrpc": "2.0", "id": 1, "method": "chain_status", "params": {"a": 1}}))[1]
        assert body["error"]["code"] == -32602
        # a batch: answers in order, notifications (no id) get none
        status, body = await post(s, url, [{"jsonrpc": "2.0", "id": 1, "method": "chain_blockNumber"},
                                           {"jsonrpc": "2.0", "method": "chain_blockNumber"},
                                           {"jsonrpc": "2.0", "id": 2, "method": "nope"}])
        assert status == 200 and [b["id"] for b in body] == [1, 2] and body[1]["error"]["code"] == -32601
        status, body = await post(s, url, {"jsonrpc": "2.0", "method": "chain_blockNumber"})
        assert status == 204
        assert node.counters.get("rpc_error_-32601", 0) >= 2
    with_node(tmp_path, scenario)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)
methods = st.sampled_from(["chain_sendRawTransaction", "chain_sendRawTransactions", "chain_getTransactionStatus",
                           "chain_getTransactionReceipt", "chain_getBlockByNumber", "chain_blockNumber",
                           "chain_finalizedNumber", "chain_getBalance", "chain_getNonce", "chain_waitFinal",
                           "chain_getEscrow", "chain_status", "x"])


def test_garbage_never_crashes_the_node(tmp_path):
    async def scenario(node, s, url):
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=st.one_of(
            st.binary(max_size=200),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.builds(lambda m, p, i: json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p}).encode(),
                      methods, st.one_of(json_values, st.lists(json_values, max_size=3)),
                      st.one_of(st.integers(), st.text(max_size=5), st.none()))))
        def one(body: bytes) -> None:
            status, resp = asyncio.run_coroutine_threadsafe(post(s, url, body), loop).result(30)
            assert status in (200, 204, 413)
            for r in (resp if isinstance(resp, list) else [resp] if resp is not None else []):
                assert r["jsonrpc"] == "2.0" and ("result" in r) != ("error" in r)
                if "error" in r:
                    assert r["error"]["code"] in (-32700, -32600, -32601, -32602, -32000, -32001)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, one)
        assert (await call(s, url, "chain_status"))["result"]["height"] >= 1   # still up, still making blocks
    with_node(tmp_path, scenario)


class _Submits:
    """Only what ``chain_sendRawTransactions`` calls: ``submit`` answers the tx hash, or a reason for
    txs starting with 0xee (the batch decoder is what is under test here)."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    async def submit(self, raws):
        self.got += raws
        return ["mempool_full" if r[:1] == b"\xee" else keccak256(r) for r in raws]


def _reference(entry) -> bytes | dict:
    """The single-tx decoder's answer for one entry of the batch."""
    from gateway.jsonrpc import RpcError
    from gateway.validator.rpc import _bytes
    try:
        return _bytes(entry, "tx")
    except RpcError as exc:
        return {"error": (exc.data or {}).get("reason", "bad_hex")}


class _Hex(str):
    pass


ENTRIES = st.one_of(
    st.binary(max_size=40).map(lambda b: "0x" + b.hex()),
    st.binary(max_size=40).map(lambda b: "0X" + b.hex()),
    st.binary(max_size=40).map(lambda b: b.hex()),
    st.binary(min_size=1, max_size=40).map(lambda b: _Hex("0x" + b.hex())),
    st.text(max_size=12).map(lambda t: "0x" + t),
    st.text(max_size=12),
    st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2), st.floats(allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(ENTRIES, max_size=8))
def test_batch_hex_decoding_gives_each_entry_the_single_tx_answer(entries):
    from gateway.validator.rpc import MAX_TX_SIZE, Rpc
    entries = list(entries)
    entries.append("0x" + "ab" * (MAX_TX_SIZE + 1))       # too large
    entries.append("0x" + "ab" * MAX_TX_SIZE)             # the largest allowed
    rpc = Rpc.__new__(Rpc)
    rpc.node = _Submits()
    out = asyncio.run(rpc.rpc_chain_sendRawTransactions([entries]))
    want = [_reference(e) for e in entries]
    assert rpc.node.got == [w for w in want if isinstance(w, bytes)]
    for o, w in zip(out, want, strict=True):
        if isinstance(w, dict):
            assert o == w
        elif w[:1] == b"\xee":
            assert o == {"error": "mempool_full"}
        else:
            assert o == "0x" + keccak256(w).hex()
    assert out[-2] == {"error": "too_large"}
