"""The Peer: each method's answer, each refusal's reason, inventory with expiring quotes, limits, hostile input."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.jsonrpc import INTERNAL, JsonRpcServer
from gateway.market.nonces import NonceStore
from gateway.market.peer import (REASONS, FixedInventory, FixedPricer, KeySigner, Peer, PeerConfig, PeerError,
                                 SignerRefused)
from gateway.market.peer_client import Ask, QuoteInvalid, check_quote, request, signed_order_of
from gateway.validator.crypto import address_of, to_checksum
from gateway.validator.order import Domain, grid_id, order_signer, typed_data

KEY = PrivateKey(b"\x11" * 32)
MAKER = address_of(KEY)
CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
DOMAIN = Domain(31337, bytes.fromhex(CONTRACT[2:]))
GRID = "gangnam-1"
PRICE = 10**15
NOW = 1_800_000_000.0  # a multiple of 900
START = int(NOW) + 900
TAKER = bytes.fromhex("00000000000000000000000000000000000000aa")


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_peer(tmp_path: Path, *, clock: Clock | None = None, inventory: Any = None, signer: Any = None,
              db: str = "nonces.db", **cfg: Any) -> Peer:
    cfg.setdefault("taker_rate", 0)
    cfg.setdefault("ip_rate", 0)
    config = PeerConfig(grid=GRID, domain=DOMAIN, **cfg)
    signer = signer or KeySigner(KEY)
    return Peer(config, signer, FixedPricer(PRICE), inventory or FixedInventory(5_000),
                NonceStore(tmp_path / db, signer.maker), clock=clock or Clock())


def params(**over: Any) -> list[dict[str, Any]]:
    p: dict[str, Any] = {"grid": GRID, "intervalStart": START, "taker": "0x0", "chainId": 31337,
                         "verifyingContract": CONTRACT}
    p.update(over)
    return [{k: v for k, v in p.items() if v is not None}]


def call(peer: Peer, method: str, **over: Any) -> dict[str, Any]:
    result: dict[str, Any] = asyncio.run(peer.methods()[method](params(**over)))
    return result


def refused(peer: Peer, method: str, **over: Any) -> PeerError:
    with pytest.raises(PeerError) as info:
        call(peer, method, **over)
    assert info.value.code == REASONS[info.value.reason]
    return info.value


# -- happy paths ------------------------------------------------------------------------------

def test_sender_side_order_is_signed_by_the_maker_at_the_pricers_price(tmp_path: Path) -> None:
    peer = make_peer(tmp_path)
    res = call(peer, "getSenderSideOrder", wh=500, taker=to_checksum(TAKER))
    signed = check_quote(res, DOMAIN, MAKER, Ask(GRID, START, TAKER, wh=500), now=NOW)
    o = signed.order
    assert (o.maker, o.taker, o.wh, o.interval_start, o.noia, o.grid) == (MAKER, TAKER, 500, START, 500 * PRICE,
                                                                           grid_id(GRID))
    assert o.expiry == int(NOW) + 60 and res["pricePerWh"] == str(PRICE)
    assert order_signer(signed, DOMAIN)[0] == MAKER
    # an independent EIP-712 implementation recovers the same maker from the typed data
    msg = encode_typed_data(full_message=typed_data(o, DOMAIN))
    assert Account.recover_message(msg, signature=signed.signature) == to_checksum(MAKER)
    assert res["signature"]["v"] in (27, 28) and res["encoded"] == "0x" + signed.encode().hex()


def test_signer_side_order_gives_the_wh_the_noia_buys(tmp_path: Path) -> None:
    peer = make_peer(tmp_path)
    res = call(peer, "getSignerSideOrder", noia=str(1234 * PRICE + 17))
    o = check_quote(res, DOMAIN, MAKER, Ask(GRID, START, noia=1234 * PRICE + 17)).order
    assert (o.wh, o.noia) == (1234, 1234 * PRICE + 17)  # the sender amount stays as offered, Wh rounds down
    res = call(peer, "getSignerSideOrder", noia=300 * PRICE, wh=300)  # a full proposal at the maker's price
    assert check_quote(res, DOMAIN, MAKER, Ask(GRID, START, wh=300, noia=300 * PRICE)).order.wh == 300


def test_max_quote_reports_what_is_left_and_commits_nothing(tmp_path: Path) -> None:
    peer = make_peer(tmp_path, max_wh=4_000)
    mq = call(peer, "getMaxQuote", taker=None)
    assert (mq["wh"], mq["noia"], mq["pricePerWh"]) == (4_000, str(4_000 * PRICE), str(PRICE))
    assert call(peer, "getMaxQuote")["wh"] == 4_000  # asking again commits nothing
    call(peer, "getSenderSideOrder", wh=1_200)
    assert call(peer, "getMaxQuote")["wh"] == 3_800
    assert call(peer, "getMaxQuote", intervalStart=START + 900)["wh"] == 4_000  # another interval


def test_nonces_never_repeat_across_restarts_blocks_and_a_clock_gone_back(tmp_path: Path) -> None:
    seen: list[int] = []
    for _restart in range(3):
        peer = make_peer(tmp_path)
        seen += [int(call(peer, "getSenderSideOrder", wh=1)["order"]["nonce"]) for _ in range(4)]
        peer.nonces.close()
    assert len(set(seen)) == len(seen) == 12
    store = NonceStore(tmp_path / "nonces.db", MAKER, block=3, clock_us=lambda: 0)  # clock at the epoch
    more = [store.next() for _ in range(10)]
    assert len(set(more)) == 10 and min(more) > max(seen)
    fresh = NonceStore(tmp_path / "lost.db", MAKER)  # the database lost: the time floor keeps nonces above
    assert fresh.next() > max(seen)


def test_expiry_is_short_and_never_past_the_interval_start(tmp_path: Path) -> None:
    clock = Clock(START - 10)
    peer = make_peer(tmp_path, clock=clock)
    assert call(peer, "getSenderSideOrder", wh=5)["order"]["expiry"] == START


def test_grid_may_be_named_by_its_bytes32_id(tmp_path: Path) -> None:
    res = call(make_peer(tmp_path), "getSenderSideOrder", wh=5, grid="0x" + grid_id(GRID).hex())
    assert res["order"]["grid"] == "0x" + grid_id(GRID).hex()


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method,over,reason", [
    ("getSenderSideOrder", {"wh": None}, "bad_params"),
    ("getSenderSideOrder", {"wh": 5, "extra": 1}, "bad_params"),
    ("getSenderSideOrder", {"wh": 5, "noia": "5"}, "bad_params"),
    ("getSenderSideOrder", {"wh": 5.0}, "bad_params"),
    ("getSenderSideOrder", {"wh": True}, "bad_params"),
    ("getSenderSideOrder", {"wh": -1}, "bad_params"),
    ("getSenderSideOrder", {"wh": "12a"}, "bad_params"),
    ("getSenderSideOrder", {"wh": 5, "taker": None}, "bad_params"),
    ("getSenderSideOrder", {"wh": 5, "taker": "0x1234"}, "bad_params"),
    ("getSenderSideOrder", {"wh": 5, "taker": "0x00000000000000000000000000000000000000Aa"}, "bad_params"),
    ("getSenderSideOrder", {"wh": 5, "grid": 7}, "bad_params"),
    ("getSignerSideOrder", {"noia": "0"}, "bad_params"),
    ("getSignerSideOrder", {"noia": None}, "bad_params"),
    ("getMaxQuote", {"wh": 5}, "bad_params"),
    ("getSenderSideOrder", {"wh": 5, "intervalStart": START - 900}, "interval_past"),
    ("getSenderSideOrder", {"wh": 5, "intervalStart": int(NOW)}, "interval_past"),
    ("getSenderSideOrder", {"wh": 5, "intervalStart": START + 1}, "interval_misaligned"),
    ("getSenderSideOrder", {"wh": 5, "intervalStart": int(NOW) + 86_400 + 900}, "interval_too_far"),
    ("getSenderSideOrder", {"wh": 0}, "wh_out_of_range"),
    ("getSenderSideOrder", {"wh": 1_000_001}, "wh_out_of_range"),
    ("getSenderSideOrder", {"wh": 2**70}, "wh_out_of_range"),
    ("getSignerSideOrder", {"noia": str(PRICE - 1)}, "underpriced"),
    ("getSignerSideOrder", {"noia": str(10 * PRICE - 1), "wh": 10}, "underpriced"),
    ("getSignerSideOrder", {"noia": str(2_000_000 * PRICE)}, "wh_out_of_range"),
    ("getSenderSideOrder", {"wh": 5_001}, "over_commit"),
    ("getSenderSideOrder", {"wh": 5, "chainId": 1}, "wrong_domain"),
    ("getSenderSideOrder", {"wh": 5, "verifyingContract": "0x" + "11" * 20}, "wrong_domain"),
    ("getMaxQuote", {"chainId": 1}, "wrong_domain"),
    ("getSenderSideOrder", {"wh": 5, "grid": "elsewhere"}, "wrong_grid"),
])
def test_each_bad_request_gets_its_specific_reason_and_commits_nothing(
        tmp_path: Path, method: str, over: dict[str, Any], reason: str) -> None:
    peer = make_peer(tmp_path)
    err = refused(peer, method, **over)
    assert err.reason == reason and err.data["reason"] == reason
    assert peer.errors[reason] == 1 and len(peer.outstanding) == 0 and peer.quotes == 0


def test_params_must_be_one_object(tmp_path: Path) -> None:
    peer = make_peer(tmp_path)
    for bad in (None, [], [1], [{}, {}], ["x"]):
        with pytest.raises(PeerError) as info:
            asyncio.run(peer.get_sender_side_order(bad))
        assert info.value.reason == "bad_params"


def test_underpriced_and_over_commit_say_what_would_do(tmp_path: Path) -> None:
    peer = make_peer(tmp_path)
    assert refused(peer, "getSignerSideOrder", noia="1").data["minNoia"] == str(PRICE)
    assert refused(peer, "getSenderSideOrder", wh=9_999).data["availableWh"] == 5_000


def test_signer_refusal_is_specific_and_commits_nothing(tmp_path: Path) -> None:
    class PolicySays:
        maker = MAKER

        def sign(self, order: Any, domain: Any) -> bytes:
            raise SignerRefused("above_daily_limit")

    peer = make_peer(tmp_path, signer=PolicySays())
    err = refused(peer, "getSenderSideOrder", wh=100)
    assert (err.reason, err.data["signerReason"]) == ("signer_refused", "above_daily_limit")
    assert call(peer, "getMaxQuote")["wh"] == 5_000


# -- inventory, expiry, rate limits ---------------------------------------------------------------

def test_outstanding_quotes_count_against_inventory_until_they_expire(tmp_path: Path) -> None:
    clock = Clock()
    peer = make_peer(tmp_path, clock=clock, inventory=FixedInventory(1_000), expiry_grace_s=5)
    first = call(peer, "getSenderSideOrder", wh=600)
    assert refused(peer, "getSenderSideOrder", wh=500).data["availableWh"] == 400
    call(peer, "getSenderSideOrder", wh=400)
    assert refused(peer, "getSignerSideOrder", noia=str(PRICE)).reason == "over_commit"
    assert call(peer, "getSenderSideOrder", wh=1_000, intervalStart=START + 900)  # other intervals are apart
    clock.t += 60 + 4  # expired, but a block stamped a little late could still fill them: still counted
    assert refused(peer, "getSenderSideOrder", wh=1).reason == "over_commit"
    clock.t += 1
    assert call(peer, "getMaxQuote")["wh"] == 1_000
    assert call(peer, "getSenderSideOrder", wh=1_000)["order"]["wh"] == 1_000
    assert peer.release(int(first["order"]["nonce"])) is False  # long gone


def test_release_frees_a_filled_quote_early(tmp_path: Path) -> None:
    peer = make_peer(tmp_path, inventory=FixedInventory(1_000))
    q = call(peer, "getSenderSideOrder", wh=1_000)
    assert refused(peer, "getSenderSideOrder", wh=1).reason == "over_commit"
    assert peer.release(int(q["order"]["nonce"])) is True
    assert call(peer, "getSenderSideOrder", wh=1)


def test_a_taker_that_never_fills_cannot_lock_the_maker_out(tmp_path: Path) -> None:
    clock = Clock()
    peer = make_peer(tmp_path, clock=clock, inventory=FixedInventory(1_000), taker_rate=1, taker_burst=2)
    hog = "0x" + "66" * 20
    signed = 0
    for _ in range(600):  # ten minutes of asking for everything, every second, never filling
        try:
            call(peer, "getSenderSideOrder", wh=1_000, taker=hog)
            signed += 1
        except PeerError as err:
            assert err.reason in ("over_commit", "rate_limited")
        clock.t += 1
    assert 8 <= signed <= 10  # one order per lifetime (60 s + 5 s grace) at most
    clock.t += 65
    assert call(peer, "getSenderSideOrder", wh=1_000, taker="0x" + "77" * 20)  # an honest taker gets it all


def test_rate_limit_per_taker_refills(tmp_path: Path) -> None:
    clock = Clock()
    peer = make_peer(tmp_path, clock=clock, taker_rate=2, taker_burst=3)
    t = to_checksum(TAKER)
    for _ in range(3):
        call(peer, "getSenderSideOrder", wh=1, taker=t)
    err = refused(peer, "getSenderSideOrder", wh=1, taker=t)
    assert err.reason == "rate_limited" and err.data["retryAfter"] == 0.5
    assert call(peer, "getSenderSideOrder", wh=1, taker="0x" + "bb" * 20)  # another taker is not affected
    clock.t += 0.5
    assert call(peer, "getSenderSideOrder", wh=1, taker=t)


# -- over HTTP ----------------------------------------------------------------------------------

class Served:
    """A Peer served over HTTP on loopback from its own event-loop thread."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def up() -> None:
            self.runner, (self.host, self.port) = await peer.start("127.0.0.1", 0)
            started.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(up()), self.loop.run_forever()),
                                       daemon=True)
        self.thread.start()
        assert started.wait(10)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        try:
            self.conn.request("POST", "/", body=body, headers=headers or {"Content-Type": "application/json"})
            r = self.conn.getresponse()
            raw = r.read()
        except (http.client.HTTPException, OSError):  # the server may close on a refused body: reconnect
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            raise
        return r.status, (json.loads(raw) if raw else None)

    def close(self) -> None:
        self.conn.close()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    import time as _time
    clock = _time.time
    peer = Peer(PeerConfig(grid=GRID, domain=DOMAIN, ip_rate=0, taker_rate=0, max_body=2048, max_batch=3),
                KeySigner(KEY), FixedPricer(PRICE), FixedInventory(10**9), NonceStore(tmp_path / "n.db", MAKER),
                clock=clock)
    s = Served(peer)
    yield s
    s.close()


def _next_start() -> int:
    import time as _time
    return (int(_time.time()) // 900 + 2) * 900


def test_http_answers_verify_and_envelope_errors_are_specific(served: Served) -> None:
    ask = Ask(GRID, _next_start(), wh=42)
    status, doc = served.post(json.dumps(request("getSenderSideOrder", ask, DOMAIN, rid=7)).encode())
    assert status == 200 and doc["id"] == 7
    check_quote(doc["result"], DOMAIN, MAKER, ask)
    assert served.post(b'{"jsonrpc":"2.0","id":1,"method":"getQuote","params":[{}]}')[1]["error"]["code"] == -32601
    assert served.post(b"{nope")[1]["error"]["code"] == -32700
    status, doc = served.post(b"[" + b"1," * 2000 + b"1]")
    assert status == 413 and doc["error"]["data"]["reason"] == "oversized"
    batch = [request("getMaxQuote", ask, DOMAIN, rid=i) for i in range(4)]
    assert served.post(json.dumps(batch).encode())[1]["error"]["code"] == -32600  # batches of 3 at most
    assert served.peer.errors["oversized"] == 1


def test_http_rate_limit_per_client_ip(tmp_path: Path) -> None:
    peer = Peer(PeerConfig(grid=GRID, domain=DOMAIN, ip_rate=0.01, ip_burst=3, taker_rate=0),
                KeySigner(KEY), FixedPricer(PRICE), FixedInventory(10**9), NonceStore(tmp_path / "n.db", MAKER))
    s = Served(peer)
    try:
        reasons = []
        for i in range(5):  # a different taker each time: the IP is what is limited
            ask = Ask(GRID, _next_start(), bytes([i + 1]) * 20, wh=1)
            doc = s.post(json.dumps(request("getSenderSideOrder", ask, DOMAIN)).encode())[1]
            reasons.append(doc.get("error", {}).get("data", {}).get("reason", "ok"))
        assert reasons == ["ok", "ok", "ok", "rate_limited", "rate_limited"]
    finally:
        s.close()


_json = st.recursive(st.none() | st.booleans() | st.integers(min_value=-(2**300), max_value=2**300)
                     | st.floats(allow_nan=False) | st.text(max_size=50),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=12)
_field = st.sampled_from(["grid", "intervalStart", "wh", "noia", "taker", "chainId", "verifyingContract", "x"])
_good = {"grid": GRID, "intervalStart": START, "wh": 5, "noia": str(5 * PRICE), "taker": "0x0", "chainId": 31337,
         "verifyingContract": CONTRACT}
_param_obj = st.dictionaries(_field, _json | st.sampled_from(list(_good.values()) + [2**64, "0x0", START + 1]),
                             max_size=7)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["getSenderSideOrder", "getSignerSideOrder", "getMaxQuote", "nope", 7]),
       params=st.one_of(_json, st.lists(_param_obj, min_size=1, max_size=2),
                        st.builds(lambda d: [{**_good, **d}], _param_obj)),
       rid=_json)
def test_hostile_requests_get_an_error_object_never_an_internal_error(tmp_path: Path, method: Any, params: Any,
                                                                        rid: Any) -> None:
    peer = make_peer(tmp_path, db="hyp.db")
    server = JsonRpcServer(peer.methods())
    req = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
    res = asyncio.run(server.call(req))
    peer.nonces.close()
    if res is None:
        return
    if "result" in res:
        if "order" in res["result"]:  # anything it signs is a valid order of this maker
            so = signed_order_of(res["result"])
            assert order_signer(so, DOMAIN)[0] == MAKER
    else:
        assert res["error"]["code"] != INTERNAL, res


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=3000), _json.map(lambda v: json.dumps(v).encode())))
def test_hostile_bodies_over_http_never_take_the_peer_down(served: Served, body: bytes) -> None:
    try:
        status, doc = served.post(body)
    except (http.client.HTTPException, OSError):
        status, doc = 0, None
    assert status in (0, 200, 204, 413)
    if isinstance(doc, dict) and "error" in doc:
        assert doc["error"]["code"] != INTERNAL
    ask = Ask(GRID, _next_start(), wh=3)
    status, doc = served.post(json.dumps(request("getSenderSideOrder", ask, DOMAIN)).encode())
    assert status == 200 and check_quote(doc["result"], DOMAIN, MAKER, ask)


def test_key_file_must_be_private(tmp_path: Path) -> None:
    from gateway.cli import main
    from gateway.cli.peer import read_key_file, write_key_file
    key = tmp_path / "m.key"
    write_key_file(key, b"\x22" * 32)
    assert read_key_file(key) == b"\x22" * 32
    key.chmod(0o644)
    with pytest.raises(PermissionError):
        read_key_file(key)
    assert main(["peer", "run", "--key", str(key), "--listen", "127.0.0.1:0"]) == 2


def test_check_quote_catches_a_tampered_answer(tmp_path: Path) -> None:
    res = call(make_peer(tmp_path), "getSenderSideOrder", wh=500)
    ask = Ask(GRID, START, wh=500)
    bad = json.loads(json.dumps(res))
    bad["order"]["wh"] = 5_000
    with pytest.raises(QuoteInvalid) as info:
        check_quote(bad, DOMAIN, MAKER, Ask(GRID, START, wh=5_000))
    assert info.value.reason == "wrong_signer"
    with pytest.raises(QuoteInvalid):
        check_quote(res, Domain(1, DOMAIN.verifying_contract), MAKER, ask)


def test_wired_to_the_wallet_the_household_key_signs_under_its_policy(tmp_path: Path) -> None:
    from gateway.market.wallet import HouseholdSigner, Wallet, WalletKdf
    from gateway.market.wallet_policy import Policy

    wallet = Wallet(tmp_path / "w", b"operator-master-secret-0123456789", kdf=WalletKdf.light(), clock=Clock())
    household = wallet.create("h1")
    wallet.set_policy("h1", Policy(sell_floor_per_wh=PRICE, interval_wh=1_000))
    signer = HouseholdSigner(wallet, "h1", lambda _start: 5_000)
    peer = make_peer(tmp_path, signer=signer)
    res = call(peer, "getSenderSideOrder", wh=600)
    assert check_quote(res, DOMAIN, household, Ask(GRID, START, wh=600)).order.maker == household
    err = refused(peer, "getSenderSideOrder", wh=600)  # the policy's per-interval limit, before the inventory
    assert err.reason == "signer_refused" and err.data["signerReason"]
    assert call(peer, "getMaxQuote")["wh"] == 4_400 and peer.quotes == 1
