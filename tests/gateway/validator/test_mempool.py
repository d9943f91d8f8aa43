"""The mempool (mempool.py): ``add_many`` answers and leaves the pool exactly as ``add`` one tx at a
time does (every reason: bad_nonce, nonce_in_use, mempool_full, sender_limit, a tx already pending),
with the same counters; ``remove`` drops a block's txs and the ones its senders' nonces made stale."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from gateway.validator.crypto import keccak256
from gateway.validator.mempool import Mempool
from gateway.validator.tx import HEADER, VerifiedTx

SENDERS = [bytes((i,)) * 20 for i in range(1, 5)]


def vtx(sender: int, nonce: int, salt: int = 0) -> VerifiedTx:
    raw = HEADER.pack(1, 31337, SENDERS[sender], nonce) + bytes((salt,)) * 52 + b"\x1b" * 65
    return VerifiedTx.checked(raw, keccak256(raw), None)


def _pool(nonces: dict[bytes, int]) -> Mempool:
    return Mempool(lambda a: nonces.get(a, 0), max_txs=6, max_per_sender=3, max_rejected=4)


def _state(m: Mempool):
    return (dict(m.pending), {s: dict(v) for s, v in m.by_sender.items() if v}, list(m.rejected.items()),
            dict(m.counters))


TXS = st.lists(st.builds(vtx, st.integers(0, 3), st.integers(0, 5), st.integers(0, 2)), max_size=14)


def _add_reference(m: Mempool, v: VerifiedTx) -> str | None:
    """``add`` as it was written one tx at a time (through the properties, one counter bump per tx)."""
    h = v.hash
    if h in m.pending:
        return None
    sender, nonce = v.sender, v.nonce
    if nonce < m.nonce_of(sender):
        m.reject(h, "bad_nonce")
        return "bad_nonce"
    slots = m.by_sender.setdefault(sender, {})
    for reason, refused in (("nonce_in_use", nonce in slots), ("mempool_full", len(m.pending) >= m.max_txs),
                            ("sender_limit", len(slots) >= m.max_per_sender)):
        if refused:
            m._count("rejected_" + reason)
            return reason
    slots[nonce] = h
    m.pending[h] = v
    m.rejected.pop(h, None)
    m._count("accepted")
    return None


@settings(max_examples=300, deadline=None)
@given(first=TXS, second=TXS, used=st.dictionaries(st.sampled_from(SENDERS), st.integers(0, 3)))
def test_add_many_is_add_one_at_a_time(first, second, used):
    a, b, c = _pool(used), _pool(used), _pool(used)
    for batch in (first, second):
        want = [_add_reference(a, v) for v in batch]
        assert b.add_many(batch) == want
        assert [c.add(v) for v in batch] == want
        assert _state(b) == _state(a) == _state(c)


def test_every_reason():
    m = _pool({SENDERS[0]: 2})
    assert m.add(vtx(0, 1)) == "bad_nonce"
    assert m.add_many([vtx(0, 2), vtx(0, 2), vtx(0, 2, salt=1), vtx(0, 3), vtx(0, 4), vtx(0, 5)]) == \
        [None, None, "nonce_in_use", None, None, "sender_limit"]
    assert m.add_many([vtx(1, 0), vtx(1, 1), vtx(1, 2), vtx(2, 0)]) == [None, None, None, "mempool_full"]
    assert m.counters == {"rejected_bad_nonce": 1, "rejected_nonce_in_use": 1, "rejected_sender_limit": 1,
                          "rejected_mempool_full": 1, "accepted": 6}
    assert m.rejected == {vtx(0, 1).hash: "bad_nonce"}


def test_remove_drops_the_block_and_what_it_made_stale():
    nonces = {SENDERS[0]: 0}
    m = _pool(nonces)
    a0, a1, a2, b0 = vtx(0, 0), vtx(0, 1), vtx(0, 2), vtx(1, 0)
    assert m.add_many([a0, a1, a2, b0]) == [None] * 4
    other_a1 = vtx(0, 1, salt=1)           # the block carried another tx with nonce 1
    nonces[SENDERS[0]] = 2
    m.remove([a0, other_a1])
    assert set(m.pending) == {a2.hash, b0.hash}
    assert m.rejected[a1.hash] == "bad_nonce"
    assert m.by_sender == {SENDERS[0]: {2: a2.hash}, SENDERS[1]: {0: b0.hash}}
    nonces[SENDERS[1]] = 1
    m.remove([b0])
    assert SENDERS[1] not in m.by_sender and [v.hash for v in m.select(10)] == [a2.hash]
