"""The shared JSON-RPC 2.0 dispatcher: envelopes, errors, batches, hostile bodies."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jsonrpc import INVALID_PARAMS, JsonRpcServer, RpcError, params_of


async def _echo(params):
    (x,) = params_of(params, 1, 1)
    if x == "boom":
        raise RuntimeError("bug")
    if x == "nope":
        raise RpcError(-32000, "refused", {"reason": "nope"})
    return x


def _serve_and(fn):
    async def main():
        errors = []
        server = JsonRpcServer({"echo": _echo}, max_body=4096, max_batch=3, on_error=errors.append)
        runner, (host, port) = await server.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as s:
                async def post(body: bytes):
                    async with s.post(f"http://{host}:{port}/", data=body) as r:
                        return r.status, (await r.read())
                return await fn(post), errors
        finally:
            await runner.cleanup()
    return asyncio.run(main())


def test_envelopes_results_and_specific_errors():
    async def run(post):
        out = {}
        for name, body in {
            "ok": {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [5]},
            "notification": {"jsonrpc": "2.0", "method": "echo", "params": [5]},
            "unknown": {"jsonrpc": "2.0", "id": 2, "method": "nope"},
            "arity": {"jsonrpc": "2.0", "id": 3, "method": "echo", "params": []},
            "not_array": {"jsonrpc": "2.0", "id": 4, "method": "echo", "params": {"x": 1}},
            "app": {"jsonrpc": "2.0", "id": 5, "method": "echo", "params": ["nope"]},
            "bug": {"jsonrpc": "2.0", "id": 6, "method": "echo", "params": ["boom"]},
            "v1": {"id": 7, "method": "echo", "params": [1]},
        }.items():
            out[name] = await post(json.dumps(body).encode())
        out["parse"] = await post(b"{not json")
        out["big"] = await post(b"[" + b"1," * 5000 + b"1]")
        out["batch"] = await post(json.dumps([{"jsonrpc": "2.0", "id": i, "method": "echo", "params": [i]}
                                              for i in range(3)]).encode())
        out["batch_big"] = await post(json.dumps([{"jsonrpc": "2.0", "id": i, "method": "echo", "params": [i]}
                                                  for i in range(4)]).encode())
        return out
    out, errors = _serve_and(run)
    body = {k: (v[0], json.loads(v[1]) if v[1] else None) for k, v in out.items()}
    assert body["ok"] == (200, {"jsonrpc": "2.0", "id": 1, "result": 5})
    assert body["notification"] == (204, None)
    assert body["unknown"][1]["error"]["code"] == -32601
    assert body["arity"][1]["error"]["code"] == INVALID_PARAMS
    assert body["not_array"][1]["error"]["code"] == INVALID_PARAMS
    assert body["app"][1]["error"] == {"code": -32000, "message": "refused", "data": {"reason": "nope"}}
    assert body["bug"][1]["error"]["code"] == -32603
    assert body["v1"][1]["error"]["code"] == -32600
    assert body["parse"][1]["error"]["code"] == -32700
    assert body["big"][0] == 413
    assert [r["result"] for r in body["batch"][1]] == [0, 1, 2]
    assert body["batch_big"][1]["error"]["code"] == -32600
    assert sorted(errors) == sorted([-32601, -32602, -32602, -32000, -32603, -32600, -32700, -32600, -32600])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300) | st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                                             lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                                             max_leaves=12).map(lambda v: json.dumps(v).encode()))
def test_any_body_gets_a_json_rpc_answer_never_a_crash(body):
    async def run(post):
        status, raw = await post(body)
        status2, raw2 = await post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1]}).encode())
        return status, raw, status2, raw2
    (status, raw, status2, raw2), _ = _serve_and(run)
    assert status in (200, 204, 413)
    if status == 200:
        parsed = json.loads(raw)
        assert isinstance(parsed, (dict, list))
    assert status2 == 200 and json.loads(raw2)["result"] == 1  # still serving
