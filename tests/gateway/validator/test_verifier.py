"""The verify pool (verifier.py): ``check_tx``'s short path for fills answers exactly what
``tx.verify_tx`` answers (valid fills, every kind of mutation, other tx types, other chains),
the inline queue serves urgent work before queued bulk work, a promoted bulk job overtakes the
rest, and the process pool gives the same results as the inline checks."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings, strategies as st

from gateway.validator.crypto import keccak256, sign_digest
from gateway.validator.errors import DecodeError
from gateway.validator.order import Domain, Order
from gateway.validator.tx import SIG_PREFIX, Fill, Tx, sign_tx, verify_tx
from gateway.validator.verifier import FILL_SIZE, Verifier, check_batch, check_tx, verify_compact

from . import kit

MAKERS = st.integers(2, 7)


def _outcome(f, raw: bytes, domain: Domain):
    try:
        v = f(raw, domain)
    except DecodeError as exc:
        return ("error", exc.reason, exc.detail)
    return ("ok", v.hash, v.order_hash, v.raw)


def _fill_raw(maker: int, taker: int, nonce: int, wh: int, noia: int, expiry: int, open_taker: bool,
              signer: int | None = None, chain_id: int = kit.CHAIN_ID) -> bytes:
    o = Order(nonce, expiry, kit.addr(maker), kit.ZERO_ADDRESS if open_taker else kit.addr(taker), wh,
              kit.GENESIS_TIME, noia, kit.GRID)
    return sign_tx(Tx(chain_id, kit.addr(taker), 7, Fill(kit.signed(o, signer))), kit.key(taker))


fills = st.builds(_fill_raw, MAKERS, MAKERS, st.integers(0, 2**256 - 1), st.integers(0, 2**64 - 1),
                  st.integers(0, 2**256 - 1), st.integers(0, 2**64 - 1), st.booleans())


@settings(max_examples=150, deadline=None)
@given(raw=fills)
def test_valid_fills_check_as_verify_tx_does(raw):
    assert len(raw) == FILL_SIZE
    assert _outcome(check_tx, raw, kit.DOMAIN) == _outcome(verify_tx, raw, kit.DOMAIN)
    assert _outcome(check_tx, raw, kit.DOMAIN)[0] == "ok"


@settings(max_examples=400, deadline=None)
@given(raw=fills, data=st.data())
def test_mutated_fills_get_the_same_answer(raw, data):
    how = data.draw(st.sampled_from(["flip", "flip2", "truncate", "extend", "zero_field"]))
    b = bytearray(raw)
    if how in ("flip", "flip2"):
        for _ in range(1 if how == "flip" else 2):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del b[data.draw(st.integers(0, len(b) - 1)):]
    elif how == "extend":
        b += data.draw(st.binary(min_size=1, max_size=8))
    else:  # the sender, the maker or the order taker set to the zero address
        off = data.draw(st.sampled_from([9, 37 + 40, 37 + 60]))
        b[off:off + 20] = bytes(20)
    m = bytes(b)
    assert _outcome(check_tx, m, kit.DOMAIN) == _outcome(verify_tx, m, kit.DOMAIN)


def test_wrong_signers_wrong_chain_and_other_types_agree():
    cases = [
        _fill_raw(2, 3, 1, 10, 10, 10**9, True, signer=4),             # order signed by someone else
        _fill_raw(2, 3, 1, 10, 10, 10**9, True, chain_id=kit.CHAIN_ID + 1),
        kit.raw_tx(2, 0, kit.transfer(3, 5)),
        kit.raw_tx(3, 1, kit.fill(kit.order(2))),
        b"",
        b"\x02" * FILL_SIZE,
    ]
    tx_signed_by_other = bytearray(_fill_raw(2, 3, 1, 10, 10, 10**9, True))
    o = Order(1, 10**9, kit.addr(2), kit.ZERO_ADDRESS, 10, kit.GENESIS_TIME, 10, kit.GRID)
    cases.append(sign_tx(Tx(kit.CHAIN_ID, kit.addr(4), 7, Fill(kit.signed(o))), kit.key(4))[:-65]
                 + bytes(tx_signed_by_other[-65:]))                     # tx signature of another sender
    for raw in cases:
        assert _outcome(check_tx, raw, kit.DOMAIN) == _outcome(verify_tx, raw, kit.DOMAIN), raw[:1]
    reasons = {_outcome(check_tx, r, kit.DOMAIN)[1] for r in cases if _outcome(check_tx, r, kit.DOMAIN)[0] == "error"}
    assert {"order_bad_signature", "wrong_chain_id", "signer_mismatch", "truncated"} <= reasons


def test_inline_queue_serves_urgent_and_promoted_work_first():
    async def main() -> None:
        v = Verifier(kit.PARAMS, workers=0, inline_chunk=4)
        bulk = [kit.raw_tx(2, n, kit.transfer(3, 1)) for n in range(12)]
        later = [kit.raw_tx(4, n, kit.transfer(3, 1)) for n in range(12)]
        urgent = [kit.raw_tx(5, n, kit.transfer(3, 1)) for n in range(4)]
        order: list[str] = []
        jb, jl = v.start(bulk), v.start(later)
        ju = v.start(urgent, urgent=True)
        v.promote(jl)
        for name, job in (("bulk", jb), ("later", jl), ("urgent", ju)):
            job_task = asyncio.ensure_future(job.result())
            job_task.add_done_callback(lambda _t, n=name: order.append(n))
        res = await jb.result()
        await asyncio.sleep(0)
        assert order[:2] == ["urgent", "later"], order
        assert [r.raw for r in res] == bulk                   # results in submission order
        assert v.counters["promoted_txs"] == 12
        v.close()
    asyncio.run(main())


def test_the_process_pool_answers_as_the_inline_checks():
    async def main() -> None:
        raws = [kit.raw_tx(3, n, kit.fill(kit.order(2, nonce=n))) for n in range(40)]
        raws[5] = raws[5][:-1] + bytes((raws[5][-1] ^ 1,))                # v flipped: 27 <-> 28
        raws[9] = raws[9][:100] + bytes((raws[9][100] ^ 0x40,)) + raws[9][101:]
        pool = Verifier(kit.PARAMS, workers=1, chunk=16)
        inline = Verifier(kit.PARAMS, workers=0)
        try:
            a = await pool.verify(raws)
            b = await inline.verify(raws)
        finally:
            pool.close()
            inline.close()
        key = lambda r: (r.reason, r.detail) if isinstance(r, DecodeError) else (r.hash, r.order_hash)  # noqa: E731
        assert [key(r) for r in a] == [key(r) for r in b]
        assert isinstance(a[5], DecodeError) and isinstance(a[9], DecodeError)
        assert sum(isinstance(r, DecodeError) for r in a) == 2
    asyncio.run(main())


_KEYS = {kit.addr(i): kit.key(i) for i in range(2, 8)}
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SCALAR = st.one_of(st.sampled_from([0, 1, N // 2, N // 2 + 1, N - 1, N, N + 1, 2**256 - 1]), st.integers(0, 2**256 - 1))


@settings(max_examples=400, deadline=None)
@given(raw=fills, data=st.data())
def test_signature_edge_cases_get_the_same_answer(raw, data):
    """The tx signature (at 262) or the order's (at 197) rewritten: r or s set to 0, n/2 + 1, n or
    beyond, v outside {27, 28}, or the high-s twin of the valid signature (same key, s -> n - s, v
    flipped: libsecp256k1 alone recovers the signer from it)."""
    off = data.draw(st.sampled_from([262, 197]))
    b = bytearray(raw)
    how = data.draw(st.sampled_from(["r", "s", "v", "twin"]))
    if how == "twin":
        s = int.from_bytes(b[off + 32:off + 64], "big")
        b[off + 32:off + 64] = (N - s).to_bytes(32, "big")
        b[off + 64] = 55 - b[off + 64]
    elif how == "v":
        b[off + 64] = data.draw(st.integers(0, 255))
    else:
        at = off if how == "r" else off + 32
        b[at:at + 32] = data.draw(SCALAR).to_bytes(32, "big")
    m = bytes(b)
    if off == 197:   # the order's signature is part of the signed body: the taker signs it again
        m = m[:-65] + sign_digest(_KEYS[m[9:29]], keccak256(SIG_PREFIX + m[:-65]))
    want = _outcome(verify_tx, m, kit.DOMAIN)
    assert _outcome(check_tx, m, kit.DOMAIN) == want
    if how == "twin":
        assert want[:2] == ("error", "high_s" if off == 262 else "order_bad_signature")
    (compact,) = verify_compact([m], kit.CHAIN_ID, kit.CONTRACT)
    (batched,) = check_batch([m], kit.DOMAIN, [keccak256(m)])
    if want[0] == "ok":
        assert compact == want[2] and (batched.hash, batched.order_hash) == (want[1], want[2])
    else:
        assert compact == want[1:] and (batched.reason, batched.detail) == want[1:]


def test_the_worker_answers_order_hashes_and_the_node_supplies_the_tx_hash():
    async def main() -> None:
        raws = [kit.raw_tx(3, n, kit.fill(kit.order(2, nonce=n))) for n in range(6)] + [kit.raw_tx(2, 0, kit.transfer(3, 5))]
        ans = verify_compact(raws, kit.CHAIN_ID, kit.CONTRACT)
        assert [type(a) for a in ans] == [bytes] * 7 and ans[-1] == b"" and all(len(a) == 32 for a in ans[:-1])
        fake = [bytes((i,)) * 32 for i in range(7)]          # the node's hashes are used as they are
        pool = Verifier(kit.PARAMS, workers=1, chunk=16)
        try:
            got = await pool.start(raws, hashes=fake).result()
            own = await pool.verify(raws)
        finally:
            pool.close()
        assert [v.hash for v in got] == fake
        assert [v.hash for v in own] == [keccak256(r) for r in raws]
        assert [v.order_hash for v in got] == [v.order_hash for v in own] == [verify_tx(r, kit.DOMAIN).order_hash
                                                                              for r in raws]
    asyncio.run(main())


@settings(max_examples=60, deadline=None)
@given(raws=st.lists(fills, min_size=1, max_size=5), data=st.data())
def test_a_batch_answers_as_each_tx_alone(raws, data):
    """Batches mix valid fills, mutated ones and other types; each answer is ``verify_tx``'s for that tx."""
    batch = []
    for raw in raws:
        b = bytearray(raw)
        for _ in range(data.draw(st.integers(0, 2))):
            b[data.draw(st.integers(0, len(b) - 1))] ^= data.draw(st.integers(1, 255))
        batch.append(bytes(b))
    batch.insert(data.draw(st.integers(0, len(batch))), kit.raw_tx(2, 0, kit.transfer(3, 5)))
    want = [_outcome(verify_tx, m, kit.DOMAIN) for m in batch]
    compact = verify_compact(batch, kit.CHAIN_ID, kit.CONTRACT)
    checked = check_batch(batch, kit.DOMAIN, [keccak256(m) for m in batch])
    for w, c, v in zip(want, compact, checked):
        if w[0] == "ok":
            assert c == (w[2] or b"") and (v.hash, v.order_hash, v.raw) == w[1:]
        else:
            assert c == w[1:] and (v.reason, v.detail) == w[1:]
