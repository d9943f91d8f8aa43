"""Indexer: signed intents in, matching counterparties out; every refusal, durability, limits, hostile input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.market.indexer import Indexer, IndexerConfig, IndexerRefused, IndexerService
from gateway.market.intent import Intent, typed_data, unset_digest
from gateway.validator.crypto import address_of, sign_digest, to_checksum
from gateway.validator.order import Domain, grid_id

DOMAIN = Domain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
GRID = grid_id("complex-1")
T0 = 1_750_000_500
START = 1_750_001_400  # the next interval
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
CFG = IndexerConfig(ip_rate=1000, ip_burst=1000, maker_rate=1000, maker_burst=1000, max_per_maker=5)


class Clock:
    def __init__(self) -> None:
        self.t: float = T0

    def __call__(self) -> float:
        return self.t


def make(key: PrivateKey = KEYS[0], *, sign_with: PrivateKey | None = None, **kw: Any) -> tuple[dict[str, Any], str]:
    fields: dict[str, Any] = dict(side="sell", grid=GRID, start=START, end=START + 900, wh=2000, price=250,
                                  locator="http://10.0.0.7:8701/", expiry=T0 + 600, maker=address_of(key), nonce=1)
    fields.update(kw)
    intent = Intent(**fields)
    sig = sign_digest(sign_with or key, intent.digest(DOMAIN))
    return intent.to_json(), "0x" + sig.hex()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ix(tmp_path: Path, clock: Clock) -> Indexer:
    return Indexer(tmp_path / "ix.db", DOMAIN, CFG, clock=clock)


def test_intent_digest_is_eip712_as_eth_account_computes_it() -> None:
    j, sig = make()
    intent = Intent.from_json(j)
    signable = encode_typed_data(full_message=typed_data(intent, DOMAIN))
    assert Account.recover_message(signable, signature=bytes.fromhex(sig[2:])) == to_checksum(address_of(KEYS[0]))
    assert Intent.from_json(json.loads(json.dumps(j))) == intent


def test_set_and_query_filters_and_orders_by_price(ix: Indexer) -> None:
    ix.set_intent(*make(KEYS[0], price=300, wh=5000, nonce=1))
    ix.set_intent(*make(KEYS[1], price=200, wh=1000, nonce=1))
    ix.set_intent(*make(KEYS[2], price=200, wh=3000, nonce=1))
    ix.set_intent(*make(KEYS[3], price=100, wh=500, nonce=1))                          # too small for min_wh
    ix.set_intent(*make(KEYS[3], side="buy", price=400, nonce=2))                      # other side
    ix.set_intent(*make(KEYS[3], start=START + 900, end=START + 1800, nonce=3))        # other window
    ix.set_intent(*make(KEYS[3], grid=grid_id("elsewhere"), nonce=4))                  # other grid
    got = ix.get_intents(GRID, "sell", START, min_wh=1000)
    assert [(g["intent"]["price"], g["intent"]["wh"]) for g in got] == [("200", 3000), ("200", 1000), ("300", 5000)]
    for g in got:  # a taker can check every answer itself
        assert Intent.from_json(g["intent"]).signer(DOMAIN, bytes.fromhex(g["signature"][2:])).hex() == \
            g["intent"]["maker"][2:].lower()
    assert len(ix.get_intents(GRID, "sell", START + 450, min_wh=0)) == 4     # inside the window
    assert ix.get_intents(GRID, "sell", START + 900) == [ix.get_intents(GRID, "sell", START + 900)[0]]
    ix.set_intent(*make(KEYS[1], side="buy", price=500, nonce=2))
    assert [g["intent"]["price"] for g in ix.get_intents(GRID, "buy", START)] == ["500", "400"]  # dearest first
    assert len(ix.get_intents(GRID, "sell", START, limit=2)) == 2


def test_a_newer_intent_replaces_and_unset_withdraws(ix: Indexer) -> None:
    ix.set_intent(*make(nonce=1, wh=1000))
    assert ix.set_intent(*make(nonce=2, wh=4000)) == {"accepted": True, "replaced": True}
    assert [g["intent"]["wh"] for g in ix.get_intents(GRID, "sell", START)] == [4000]
    maker = address_of(KEYS[0])
    with pytest.raises(IndexerRefused) as e:
        ix.unset_intent(maker, 2, "0x" + sign_digest(KEYS[1], unset_digest(DOMAIN, maker, 2)).hex())
    assert e.value.reason == "bad_signature"
    sig = "0x" + sign_digest(KEYS[0], unset_digest(DOMAIN, maker, 2)).hex()
    assert ix.unset_intent(maker, 2, sig) == {"removed": True}
    assert ix.unset_intent(maker, 2, sig) == {"removed": False}  # idempotent
    assert ix.get_intents(GRID, "sell", START) == []
    with pytest.raises(IndexerRefused) as e:  # the withdrawn intent cannot be replayed back in
        ix.set_intent(*make(nonce=2, wh=4000))
    assert e.value.reason == "replayed_nonce"


@pytest.mark.parametrize("reason,intent_sig", [
    ("unsigned", lambda: (make()[0], None)),
    ("unsigned", lambda: (make()[0], "0x")),
    ("bad_signature", lambda: (make()[0], "0x1234")),
    ("bad_signature", lambda: (make()[0], "0x" + "zz" * 65)),
    ("bad_signature", lambda: make(sign_with=KEYS[1])),
    ("bad_signature", lambda: (make()[0], make(nonce=99)[1])),
    ("bad_intent", lambda: ({**make()[0], "extra": 1}, make()[1])),
    ("bad_intent", lambda: ({**make()[0], "side": "hold"}, make()[1])),
    ("bad_intent", lambda: ({**make()[0], "wh": -1}, make()[1])),
    ("bad_intent", lambda: ({**make()[0], "wh": True}, make()[1])),
    ("bad_intent", lambda: ("not an object", make()[1])),
    ("expired", lambda: make(expiry=T0)),
    ("expiry_too_far", lambda: make(expiry=T0 + 8 * 86400)),
    ("bad_window", lambda: make(end=START)),
    ("bad_window", lambda: make(end=START + 86401)),
    ("window_past", lambda: make(start=T0 - 1800, end=T0 - 900)),
    ("window_too_far", lambda: make(start=T0 + 8 * 86400, end=T0 + 8 * 86400 + 900)),
    ("wh_out_of_range", lambda: make(wh=0)),
    ("wh_out_of_range", lambda: make(wh=1_000_001)),
    ("bad_price", lambda: make(price=0)),
    ("bad_locator", lambda: make(locator="ftp://x/")),
    ("bad_locator", lambda: make(locator="javascript:alert(1)")),
    ("bad_locator", lambda: make(locator="http://")),
    ("bad_locator", lambda: make(locator="http://a b/")),
    ("bad_locator", lambda: make(locator="http://h:99999/")),
    ("bad_locator", lambda: make(locator="http://h/" + "a" * 300)),
])
def test_every_refusal_reason(ix: Indexer, reason: str, intent_sig: Any) -> None:
    intent, sig = intent_sig()
    with pytest.raises(IndexerRefused) as e:
        ix.set_intent(intent, sig)
    assert e.value.reason == reason
    assert ix.status()["intents"] == 0 and ix.status()["refused"] == {reason: 1}


def test_replay_per_maker_limit_and_full(tmp_path: Path, ix: Indexer, clock: Clock) -> None:
    j = make(nonce=7)
    ix.set_intent(*j)
    with pytest.raises(IndexerRefused) as e:
        ix.set_intent(*j)
    assert e.value.reason == "replayed_nonce"
    for i in range(4):  # 5 live intents, each its own window
        ix.set_intent(*make(nonce=10 + i, start=START + 900 * (i + 1), end=START + 900 * (i + 2)))
    with pytest.raises(IndexerRefused) as e:
        ix.set_intent(*make(nonce=20, start=START + 9000, end=START + 9900))
    assert e.value.reason == "too_many_intents"
    ix.set_intent(*make(nonce=21, wh=999))  # replacing one of its own is fine at the limit
    full = Indexer(tmp_path / "full.db", DOMAIN, IndexerConfig(max_intents=1), clock=clock)
    full.set_intent(*make(KEYS[0]))
    with pytest.raises(IndexerRefused) as e:
        full.set_intent(*make(KEYS[1]))
    assert e.value.reason == "indexer_full"


def test_rate_limits_per_source_ip_and_per_maker(tmp_path: Path, clock: Clock) -> None:
    ix = Indexer(tmp_path / "rl.db", DOMAIN, IndexerConfig(ip_rate=1, ip_burst=3, maker_rate=1, maker_burst=2),
                 clock=clock)
    ix.set_intent(*make(KEYS[0], nonce=1), source="1.2.3.4")
    ix.set_intent(*make(KEYS[0], nonce=2), source="1.2.3.4")
    with pytest.raises(IndexerRefused) as e:  # the maker's bucket is empty, from any IP
        ix.set_intent(*make(KEYS[0], nonce=3), source="5.6.7.8")
    assert e.value.reason == "rate_limited"
    ix.set_intent(*make(KEYS[1], nonce=1), source="1.2.3.4")
    with pytest.raises(IndexerRefused) as e:  # the IP's bucket is empty, for any maker
        ix.set_intent(*make(KEYS[2], nonce=1), source="1.2.3.4")
    assert e.value.reason == "rate_limited"
    # junk with someone else's address does not spend that maker's tokens
    for _ in range(5):
        with pytest.raises(IndexerRefused):
            ix.set_intent(*make(KEYS[3], sign_with=KEYS[0], nonce=9), source="9.9.9.9")
    clock.t += 2  # tokens refill
    ix.set_intent(*make(KEYS[0], nonce=4), source="1.2.3.4")
    ix.set_intent(*make(KEYS[3], nonce=1), source="10.0.0.1")


def test_durable_across_restart_and_expired_ones_pruned(tmp_path: Path, clock: Clock) -> None:
    ix = Indexer(tmp_path / "d.db", DOMAIN, CFG, clock=clock)
    ix.set_intent(*make(KEYS[0], nonce=1, expiry=T0 + 100))
    ix.set_intent(*make(KEYS[1], nonce=1, expiry=T0 + 600))
    ix.conn.close()
    ix2 = Indexer(tmp_path / "d.db", DOMAIN, CFG, clock=clock)
    assert len(ix2.get_intents(GRID, "sell", START)) == 2
    with pytest.raises(IndexerRefused) as e:  # nonces survive the restart too
        ix2.set_intent(*make(KEYS[1], nonce=1, expiry=T0 + 600))
    assert e.value.reason == "replayed_nonce"
    clock.t += 101
    assert len(ix2.get_intents(GRID, "sell", START)) == 1  # expired ones are never returned
    assert ix2.prune() == 1
    assert ix2.conn.execute("SELECT COUNT(*) FROM indexer_intents").fetchone()[0] == 1
    assert ix2.conn.execute("SELECT COUNT(*) FROM indexer_nonces").fetchone()[0] == 1


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**300, 2**300) | st.floats(allow_nan=False)
                     | st.text(max_size=40), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                             max_size=4), max_leaves=12)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    base = make()[0]
    return st.builds(lambda k, v: {**base, k: v}, st.sampled_from(sorted(base)), _json)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(intent=st.one_of(_json, _mutations()), sig=st.one_of(_json, st.just(make()[1])))
def test_malformed_intents_get_a_reason_never_a_crash(ix: Indexer, intent: Any, sig: Any) -> None:
    try:
        ix.set_intent(intent, sig)
    except IndexerRefused as exc:
        assert exc.reason and " " not in exc.reason


def _serve(ix: Indexer, fn: Any) -> Any:
    async def main() -> Any:
        runner, (host, port) = await IndexerService(ix).start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as s:
                async def post(body: bytes | Any) -> tuple[int, Any]:
                    data = body if isinstance(body, bytes) else json.dumps(body).encode()
                    async with s.post(f"http://{host}:{port}/", data=data) as r:
                        raw = await r.read()
                        return r.status, (json.loads(raw) if raw else None)
                return await fn(post)
        finally:
            await runner.cleanup()
    return asyncio.run(main())


def _req(method: str, *params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}


def test_json_rpc_methods_errors_and_oversized_bodies(ix: Indexer) -> None:
    maker = to_checksum(address_of(KEYS[0]))
    grid = "0x" + GRID.hex()

    async def run(post: Any) -> dict[str, Any]:
        out = {}
        out["set"] = await post(_req("indexer_setIntent", *make()))
        out["again"] = await post(_req("indexer_setIntent", *make()))
        out["unsigned"] = await post(_req("indexer_setIntent", make()[0]))
        out["get"] = await post(_req("indexer_getIntents", grid, "sell", START, 100, 10))
        out["get_bad"] = await post(_req("indexer_getIntents", "0x12", "sell", START))
        out["get_huge"] = await post(_req("indexer_getIntents", grid, "sell", 2**64 - 1))
        sig = "0x" + sign_digest(KEYS[0], unset_digest(DOMAIN, address_of(KEYS[0]), 1)).hex()
        out["unset"] = await post(_req("indexer_unsetIntent", maker, "1", sig))
        out["unset_bad"] = await post(_req("indexer_unsetIntent", "0xnope", 1, sig))
        out["big"] = await post(b'{"x": "' + b"a" * 20_000 + b'"}')
        out["garbage"] = await post(b"\xff\xfe{{{")
        out["status"] = await post(_req("indexer_status"))
        return out

    out = _serve(ix, run)
    assert out["set"] == (200, {"jsonrpc": "2.0", "id": 1, "result": {"accepted": True, "replaced": False}})
    assert out["again"][1]["error"]["code"] == -32000
    assert out["again"][1]["error"]["data"] == {"reason": "replayed_nonce"}
    assert out["unsigned"][1]["error"]["data"] == {"reason": "unsigned"}
    assert [g["intent"]["maker"] for g in out["get"][1]["result"]] == [maker]
    assert out["get_bad"][1]["error"]["code"] == -32602
    assert out["get_huge"][1]["error"]["code"] == -32602
    assert out["unset"][1]["result"] == {"removed": True}
    assert out["unset_bad"][1]["error"]["code"] == -32602
    assert out["big"][0] == 413
    assert out["garbage"][1]["error"]["code"] == -32700
    st_ = out["status"][1]["result"]
    assert st_["intents"] == 0 and st_["accepted"] == 1 and st_["refused"] == {"replayed_nonce": 1, "unsigned": 1}


def test_rate_limit_over_http_is_unavailable_with_a_reason(tmp_path: Path, clock: Clock) -> None:
    ix = Indexer(tmp_path / "h.db", DOMAIN, IndexerConfig(ip_rate=0.001, ip_burst=2), clock=clock)

    async def run(post: Any) -> list[Any]:
        return [await post(_req("indexer_setIntent", *make(KEYS[i], nonce=1))) for i in range(3)]

    a, b, c = _serve(ix, run)
    assert "result" in a[1] and "result" in b[1]
    assert c[1]["error"]["code"] == -32001 and c[1]["error"]["data"] == {"reason": "rate_limited"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["indexer_setIntent", "indexer_unsetIntent", "indexer_getIntents", "indexer_status"]),
       params=st.one_of(_json, st.lists(_json, max_size=6)))
def test_hostile_rpc_params_never_an_internal_error(ix: Indexer, method: str, params: Any) -> None:
    svc = IndexerService(ix)
    res = asyncio.run(svc.rpc.call({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
    assert res is not None
    if "error" in res:
        assert res["error"]["code"] != -32603, res
    assert asyncio.run(svc.rpc.call(_req("indexer_status")))["result"]["intents"] >= 0


def test_cli_run_serves_and_keeps_intents_across_a_restart(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    db = tmp_path / "cli.db"
    now = int(time.time())
    start = now - now % 900 + 900
    intent, sig = make(start=start, end=start + 900, expiry=now + 300)

    def serve() -> tuple[subprocess.Popen[str], str]:
        p = subprocess.Popen([sys.executable, "-m", "gateway.cli", "indexer", "run", "--db", str(db),
                              "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        ready = json.loads(p.stdout.readline())
        return p, f"http://{ready['listen']}/"

    async def call(url: str, body: dict[str, Any]) -> Any:
        async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
            return await r.json()

    p, url = serve()
    try:
        assert asyncio.run(call(url, _req("indexer_setIntent", intent, sig)))["result"]["accepted"]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    p, url = serve()
    try:
        got = asyncio.run(call(url, _req("indexer_getIntents", "0x" + GRID.hex(), "sell", start)))["result"]
        assert [g["intent"] for g in got] == [intent]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    from gateway.cli import main
    assert main(["indexer", "status", "--db", str(db), "--json"]) == 0
