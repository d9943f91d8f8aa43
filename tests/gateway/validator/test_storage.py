"""Storage: memory and SQLite agree, reopening gives the same root, a crash mid-commit loses nothing."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from gateway.validator.crypto import keccak256
from gateway.validator.errors import StorageError
from gateway.validator.genesis import parse_genesis
from gateway.validator.state import accumulate, state_root
from gateway.validator.storage import MemoryStore, SqliteStore

from .kit import COMPLEX, GENESIS, Chain, fill, genesis_doc, order, settle, transfer


def run_script(chain: Chain) -> None:
    chain.send(2, transfer(3, 5))
    fids = [chain.send(3, fill(order(2, nonce=n))).order_hash for n in (1, 2)]
    chain.send(COMPLEX, settle([(fids[0], 100, 600, 400), (fids[1], 500, 1000, 0)]))
    chain.send(4, transfer(5, 9))


def test_sqlite_and_memory_agree_and_reopen(tmp_path: Path) -> None:
    mem, sq = Chain(MemoryStore(GENESIS)), Chain(SqliteStore(tmp_path / "chain.db", GENESIS))
    run_script(mem)
    run_script(sq)
    assert sq.store.head == mem.store.head
    assert list(sq.store.items()) == list(mem.store.items())
    head = sq.store.head
    sq.store.close()
    again = SqliteStore(tmp_path / "chain.db", GENESIS)
    assert again.head == head and state_root(again.accumulator) == head.state_root
    assert state_root(accumulate(again.items())) == head.state_root
    for h in range(head.height + 1):
        assert again.block_at(h) == mem.store.block_at(h)
        for raw in again.block_at(h).txs:
            assert again.receipt(keccak256(raw)) == mem.store.receipt(keccak256(raw))
    again.close()


def test_another_genesis_is_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "c.db", GENESIS).close()
    other = parse_genesis(genesis_doc(chain_id=7))
    with pytest.raises(StorageError) as ei:
        SqliteStore(tmp_path / "c.db", other)
    assert ei.value.reason == "genesis_mismatch"


def test_commit_must_extend_the_head(tmp_path: Path) -> None:
    c = Chain(SqliteStore(tmp_path / "c.db", GENESIS))
    blk, res, _ = c.block([])
    with pytest.raises(StorageError) as ei:
        c.store.commit_block(blk, res)  # the same block again
    assert ei.value.reason == "not_next_block"


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["state", "deletes", "block", "receipts", "meta"])
def test_failure_inside_the_commit_leaves_the_previous_block(tmp_path: Path, where: str) -> None:
    path = tmp_path / "c.db"
    c = Chain(SqliteStore(path, GENESIS))
    run_script(c)
    head, items = c.store.head, list(c.store.items())

    def fault(at: str) -> None:
        if at == where:
            raise Boom(at)

    c.store.fault = fault
    with pytest.raises(Boom):
        c.send(2, transfer(3, 1))
    assert c.store.head == head and list(c.store.items()) == items
    c.store.fault = None
    c.send(2, transfer(3, 1))  # the node carries on from the same head
    c.store.close()
    re = SqliteStore(path, GENESIS)
    assert re.head.height == head.height + 1 and state_root(accumulate(re.items())) == re.head.state_root
    re.close()


def _crash_mid_commit(path: str) -> None:
    store = SqliteStore(path, GENESIS)
    c = Chain(store)
    c.nonces = {2: 1}
    c.time += 100

    def die(at: str) -> None:
        if at == "block":
            os._exit(9)  # a kill -9 between the state rows and the block row

    store.fault = die
    c.send(2, transfer(3, 1))


def test_killed_process_mid_commit_reopens_at_the_previous_block(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    c = Chain(SqliteStore(path, GENESIS))
    c.send(2, transfer(3, 5))
    head, items = c.store.head, list(c.store.items())
    c.store.close()
    p = multiprocessing.get_context("spawn").Process(target=_crash_mid_commit, args=(str(path),))
    p.start()
    p.join(60)
    assert p.exitcode == 9
    re = SqliteStore(path, GENESIS)
    assert re.head == head and list(re.items()) == items
    re.close()


def test_tampered_accumulator_is_refused_on_open(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    c = Chain(SqliteStore(path, GENESIS))
    c.send(2, transfer(3, 5))
    c.store.conn.execute("UPDATE chain_meta SET value = ? WHERE key = 'accumulator'", (bytes(512),))
    c.store.close()
    with pytest.raises(StorageError) as ei:
        SqliteStore(path, GENESIS)
    assert ei.value.reason == "root_mismatch"


def test_receipts_whose_hashes_share_the_index_prefix_are_told_apart(tmp_path: Path) -> None:
    """The tx index is keyed by the first 8 bytes of the hash: a lookup checks the whole hash."""
    from gateway.validator.block import Block, Header
    from gateway.validator.execute import BlockResult, Receipt
    from gateway.validator.tx import FILL

    store = SqliteStore(tmp_path / "c.db", GENESIS)
    head = store.head
    prefix = b"\xab" * 8
    hashes = [prefix + bytes([i]) * 24 for i in (1, 2)]
    receipts = tuple(Receipt(h, head.height + 1, i, FILL, b"\x05" * 20, b"\x06" * 32) for i, h in enumerate(hashes))
    hd = Header(head.chain_id, head.height + 1, 0, head.hash, head.proposer, head.timestamp + 1, head.tx_root,
                head.state_root)
    store.commit_block(Block(hd, ()), BlockResult(store.accumulator, head.state_root, receipts, {}))
    assert [store.receipt(h) for h in hashes] == list(receipts)
    assert store.receipt(prefix + b"\x03" * 24) is None
    store.close()


def test_a_database_of_the_old_layout_is_refused_with_a_clear_reason(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    c = Chain(SqliteStore(path, GENESIS))
    c.send(2, transfer(3, 5))
    c.store.conn.execute("DELETE FROM chain_meta WHERE key = 'layout'")   # what layout 1 wrote: no 'layout' row
    c.store.close()
    with pytest.raises(StorageError) as ei:
        SqliteStore(path, GENESIS)
    assert ei.value.reason == "old_layout" and "layout 1" in str(ei.value)


def _commit_writes(store: SqliteStore, writes: dict[bytes, bytes | None], known: bool = False) -> None:
    """Commit a block of bare state writes (no txs), the accumulator updated as execution would;
    ``known``: the result carries the old values of the written keys, as execution's does."""
    from gateway.validator.block import Block, Header
    from gateway.validator.execute import BlockResult
    from gateway.validator.state import update_accumulator

    head = store.head
    before: dict[bytes, bytes | None] = {}
    acc = update_accumulator(store.accumulator, store, writes, before)
    assert before == {k: store.get(k) for k in writes}
    hd = Header(head.chain_id, head.height + 1, 0, head.hash, head.proposer, head.timestamp + 1, head.tx_root,
                state_root(acc))
    store.commit_block(Block(hd, ()), BlockResult(acc, hd.state_root, (), writes, before if known else {}))


@pytest.mark.parametrize("known", [False, True], ids=["old-values-unknown", "old-values-known"])
def test_appended_state_rows_sharing_the_index_prefix_are_written_read_replaced_and_deleted(
        tmp_path: Path, known: bool) -> None:
    """Escrow/settled/reclaimed rows live in chain_rows behind a 9-byte index: same-prefix keys stay
    apart through insert, replace and delete, in the cache, in a fresh store and in prefetch; the
    same whether or not the result says which written keys were absent (then no old row is looked for)."""
    path = tmp_path / "c.db"
    store = SqliteStore(path, GENESIS)
    mem = MemoryStore(GENESIS)
    a, b, c = (b"E" + b"\x11" * 8 + bytes([i]) * 24 for i in (1, 2, 3))
    steps = [{a: b"v1" * 50, b: b"w1" * 50, b"S" + b"\x22" * 32: b"s" * 72},
             {a: b"v2" * 50},                  # replaced: same width
             {b: None, a: b"v3" * 51},         # b deleted, a replaced with another width
             {a: None, c: b"x" * 144}]
    for w in steps:
        _commit_writes(store, w, known)
        for k, v in w.items():
            if v is None:
                mem.state.pop(k, None)
            else:
                mem.state[k] = v
        assert list(store.items()) == sorted(mem.state.items())
        assert all(store.get(k) == mem.state.get(k) for k in (a, b, c))
    store.close()
    again = SqliteStore(path, GENESIS)
    assert list(again.items()) == sorted(mem.state.items())
    assert state_root(accumulate(again.items())) == again.head.state_root
    assert again.get(a) is None and again.get(b) is None and again.get(c) == b"x" * 144
    again.close()
    third = SqliteStore(path, GENESIS)
    third.prefetch([a, b, c, b"E" + b"\x11" * 8 + b"\x04" * 24])
    assert third._cache[a] is None and third._cache[b] is None and third._cache[c] == b"x" * 144
    assert third.get(b"E" + b"\x11" * 8 + b"\x04" * 24) is None
    third.close()


def test_fills_settled_and_reclaimed_in_the_block_that_made_them_are_stored_as_in_memory(tmp_path: Path) -> None:
    """Execution tells the store which written keys were absent (a new escrow is, without a lookup):
    escrows made and closed in one block, settled, reclaimed and refilled nonces end as in memory."""
    from gateway.validator.tx import Reclaim

    from .kit import PARAMS, vtx

    def script(c: Chain) -> None:
        f1 = vtx(3, 0, fill(order(2, nonce=1)))
        f2 = vtx(3, 1, fill(order(2, nonce=2, noia=70)))
        assert f1.order_hash and f2.order_hash
        c.block([f1, f2, vtx(COMPLEX, 0, settle([(f1.order_hash, 100, 600, 400)]))])   # made and settled
        c.block([vtx(4, 0, fill(order(5, nonce=1))), vtx(3, 2, fill(order(2, nonce=1)))])  # refill refused
        c.block([vtx(6, 0, Reclaim(f2.order_hash))], dt=PARAMS.reclaim_deadline(c.time) - c.time)
        c.block([vtx(COMPLEX, 1, settle([(f2.order_hash, 1, 1, 69)]))])               # refused: reclaimed

    mem, sq = Chain(MemoryStore(GENESIS)), Chain(SqliteStore(tmp_path / "c.db", GENESIS))
    script(mem)
    script(sq)
    assert sq.store.head == mem.store.head and list(sq.store.items()) == list(mem.store.items())
    assert any(k[:1] == b"R" for k, _ in mem.store.items()) and any(k[:1] == b"S" for k, _ in mem.store.items())
    sq.store.close()
    again = SqliteStore(tmp_path / "c.db", GENESIS)
    assert list(again.items()) == list(mem.store.items())
    again.close()


def test_an_order_nonce_above_the_makers_highest_is_known_absent_without_a_lookup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prefetch learns each maker's highest used order nonce once; a key above it is absent without a
    query, one at or below it is looked up; written keys land in the cache, and clearing the cache
    forgets the highest nonces too (so a stale one never answers)."""
    import gateway.validator.storage as storage

    maker, other = b"\x21" * 20, b"\x22" * 20

    def okey(m: bytes, n: int) -> bytes:
        return b"O" + m + n.to_bytes(32, "big")

    path = tmp_path / "c.db"
    store = SqliteStore(path, GENESIS)
    _commit_writes(store, {okey(maker, n): b"\x01" for n in (3, 7, 1 << 255)} | {okey(other, 5): b"\x02"}, True)
    store.close()
    store = SqliteStore(path, GENESIS)
    lookups: list[str] = []
    store.conn.set_trace_callback(lambda sql: lookups.append(sql) if "chain_state WHERE key IN" in sql else None)
    store.prefetch([okey(maker, 7), okey(maker, 8), okey(other, 5), okey(other, 6), okey(b"\x23" * 20, 1)])
    assert store._top == {maker: (1 << 255).to_bytes(32, "big"), other: (5).to_bytes(32, "big"), b"\x23" * 20: b""}
    assert [store.get(k) for k in (okey(maker, 7), okey(maker, 8), okey(other, 5), okey(other, 6))] == \
        [b"\x01", None, b"\x02", None]
    lookups.clear()
    store.prefetch([okey(other, 9), okey(b"\x23" * 20, 4)])              # above the highest: no query
    assert lookups == [] and store.get(okey(other, 9)) is None
    _commit_writes(store, {okey(other, 9): b"\x01"}, True)
    store.prefetch([okey(other, 9), okey(other, 10)])
    assert lookups == [] and store.get(okey(other, 9)) == b"\x01" and store.get(okey(other, 10)) is None
    monkeypatch.setattr(storage, "CACHE_MAX", 1)
    store.prefetch([okey(other, 9), okey(other, 12)])                      # cleared: looked up again
    assert store._top[other] == (9).to_bytes(32, "big") and store.get(okey(other, 9)) == b"\x01"
    store.close()
