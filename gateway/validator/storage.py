"""Chain storage behind one small interface, in memory and in SQLite.

A store holds the state key-values, the state accumulator, the blocks and the
receipts. ``commit_block`` is the only way to change it: the block, its
receipts, its state writes and the new accumulator land together or not at
all (one SQLite transaction, ``synchronous=FULL`` per gateway/db.py, so a
commit that returned survives a power cut and a crash at any point leaves the
previous block as the head). Reopening a store gives the same head and root;
the store refuses to open when the stored accumulator and the head's state
root disagree.
"""

from __future__ import annotations

import heapq
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from pathlib import Path
from typing import Protocol

from gateway import db

from .block import Block, Header, decode_block
from .errors import StorageError
from .execute import RECEIPT_SIZE, BlockResult, Receipt
from .genesis import Genesis
from .state import ACC_BYTES, accumulate, state_root

log = logging.getLogger(__name__)

NOT_INITIALISED = "not_initialised"
NOT_NEXT_BLOCK = "not_next_block"
ROOT_MISMATCH = "root_mismatch"
GENESIS_MISMATCH = "genesis_mismatch"
OLD_LAYOUT = "old_layout"

LAYOUT = 2            # chain_meta 'layout': 1 (unrecorded) = receipts keyed by tx hash; 2 = receipts appended
_POS_BITS = 20        # receipt id = height << 20 | position (MAX_BLOCK_TXS is 20,000)
_ROW_BITS = 24        # appended state row id = height << 24 | position (a 32 MiB block writes fewer rows)
APPENDED = frozenset(b"ESR")   # key prefixes stored in chain_rows (keyed by a fill id: random)
_INDEXED = 9          # bytes of an appended row's key in its index entry


class ChainStore(Protocol):
    """What the validator needs from storage."""

    def get(self, key: bytes) -> bytes | None: ...
    @property
    def head(self) -> Header: ...
    @property
    def accumulator(self) -> int: ...
    def header_at(self, height: int) -> Header | None: ...
    def block_at(self, height: int) -> Block | None: ...
    def receipt(self, tx_hash: bytes) -> Receipt | None: ...
    def commit_block(self, block: Block, result: BlockResult) -> None: ...
    def items(self) -> Iterator[tuple[bytes, bytes]]: ...
    def close(self) -> None: ...


def _check_next(head: Header, block: Block, result: BlockResult) -> None:
    h = block.header
    if h.height != head.height + 1 or h.parent_hash != head.hash:
        raise StorageError(NOT_NEXT_BLOCK, f"block {h.height} does not extend head {head.height}")
    if h.state_root != result.state_root or state_root(result.accumulator) != h.state_root:
        raise StorageError(ROOT_MISMATCH, "result does not match the header's state root")


class MemoryStore:
    def __init__(self, genesis: Genesis) -> None:
        self.state = genesis.state().data
        self._acc = accumulate(self.state.items())
        g = genesis.header()
        self._headers: list[Header] = [g]
        self._blocks: list[Block] = [Block(g, ())]
        self._receipts: dict[bytes, Receipt] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.state.get(key)

    @property
    def head(self) -> Header:
        return self._headers[-1]

    @property
    def accumulator(self) -> int:
        return self._acc

    def header_at(self, height: int) -> Header | None:
        return self._headers[height] if 0 <= height < len(self._headers) else None

    def block_at(self, height: int) -> Block | None:
        return self._blocks[height] if 0 <= height < len(self._blocks) else None

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        return self._receipts.get(tx_hash)

    def commit_block(self, block: Block, result: BlockResult) -> None:
        _check_next(self.head, block, result)
        for k, v in result.writes.items():
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v
        self._acc = result.accumulator
        self._headers.append(block.header)
        self._blocks.append(block)
        for r in result.receipts:
            self._receipts[r.tx_hash] = r

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted(self.state.items()))

    def close(self) -> None:
        pass


SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chain_state (
        key   BLOB PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID""",
    # State rows keyed by a fill id (escrows 'E', settled 'S', reclaimed 'R': random keys, written once)
    # are appended in block order under an ascending id (height << 24 | position) and found through a
    # compact index on their first 9 bytes (prefix + 8 bytes of the fill id), the full key checked.
    # A random-key B-tree of whole rows has a block's rows each dirty a page of its own once the
    # table outgrows the block; appended rows fill pages in order and the index's rows are ~20 bytes.
    """CREATE TABLE IF NOT EXISTS chain_rows (
        id    INTEGER PRIMARY KEY,    -- height << 24 | position among the block's appended rows
        key   BLOB NOT NULL,
        value BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS chain_rowindex (
        k  BLOB NOT NULL,             -- the key's first 9 bytes
        id INTEGER NOT NULL,          -- chain_rows.id
        PRIMARY KEY (k, id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chain_blocks (
        height INTEGER PRIMARY KEY,
        hash   BLOB NOT NULL UNIQUE,
        header BLOB NOT NULL,
        block  BLOB NOT NULL          -- the whole encoded block (header + txs)
    )""",
    # Receipts in block order under an ascending key (height << 20 | position), so a block's receipts
    # append to the end of the B-tree instead of landing on a random page each; a tx hash is found
    # through a compact index on its first 8 bytes (rows of ~20 bytes, so a block dirties few pages
    # of it), the full hash checked against the receipt.
    """CREATE TABLE IF NOT EXISTS chain_receipts (
        id      INTEGER PRIMARY KEY,  -- height << 20 | position in the block
        receipt BLOB NOT NULL         -- 97 bytes, the tx hash first (execute.Receipt)
    )""",
    """CREATE TABLE IF NOT EXISTS chain_txindex (
        k  BLOB NOT NULL,             -- the tx hash's first 8 bytes
        id INTEGER NOT NULL,          -- chain_receipts.id
        PRIMARY KEY (k, id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chain_meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    )""",
)


CACHE_MAX = 600_000        # state rows kept in memory (values and known-absent keys); cleared beyond
TOP_MAX = 200_000          # makers whose highest used order nonce is kept; cleared beyond
PREFETCH_CHUNK = 500       # keys per SELECT ... IN (...)


_SERIES = "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < :n) "
_INSERT_STATE = _SERIES + ("INSERT OR REPLACE INTO chain_state (key, value) "
                           "SELECT substr(:b, n * :w + 1, :kl), substr(:b, n * :w + :kl + 1, :vl) FROM i")
_DELETE_STATE = "DELETE FROM chain_state WHERE key IN (" + _SERIES + "SELECT substr(:b, n * :kl + 1, :kl) FROM i)"
_O, _ORDER_KEY, _MAX_NONCE = ord("O"), 53, b"\xff" * 32      # 'O' maker nonce: 1 + 20 + 32 bytes
_TOP_ORDER_KEY = _SERIES + ("SELECT n, (SELECT key FROM chain_state WHERE key > substr(:lo, n * 21 + 1, 21) "
                            "AND key <= substr(:hi, n * 53 + 1, 53) ORDER BY key DESC LIMIT 1) FROM i")
_SELECT_STATE = _SERIES + ("SELECT key, value FROM chain_state WHERE key IN "
                           "(SELECT substr(:b, n * :kl + 1, :kl) FROM i)")
_INSERT_ROWS = _SERIES + ("INSERT INTO chain_rows (id, key, value) "
                          "SELECT :base + n, substr(:b, n * :w + 1, :kl), substr(:b, n * :w + :kl + 1, :vl) FROM i")
_INSERT_ROWINDEX = _SERIES + ("INSERT INTO chain_rowindex (k, id) "
                              f"SELECT substr(:b, n * :w + 1, {_INDEXED}), :base + n FROM i")
_WRITTEN = _SERIES.rstrip() + ", w(key) AS (SELECT substr(:b, n * :kl + 1, :kl) FROM i) "
_DELETE_ROWS = ("DELETE FROM chain_rows WHERE id IN (" + _WRITTEN + "SELECT r.id FROM w "
                f"JOIN chain_rowindex x ON x.k = substr(w.key, 1, {_INDEXED}) "
                "JOIN chain_rows r ON r.id = x.id AND r.key = w.key)")
_DELETE_ROWINDEX = ("DELETE FROM chain_rowindex WHERE (k, id) IN (" + _WRITTEN + "SELECT x.k, x.id FROM w "
                    f"JOIN chain_rowindex x ON x.k = substr(w.key, 1, {_INDEXED}) "
                    "WHERE NOT EXISTS (SELECT 1 FROM chain_rows r WHERE r.id = x.id))")
_INSERT_RECEIPTS = _SERIES + ("INSERT INTO chain_receipts (id, receipt) "
                              "SELECT :base + n, substr(:b, n * :w + 1, :w) FROM i")
_INSERT_TXINDEX = _SERIES + ("INSERT INTO chain_txindex (k, id) "
                             "SELECT substr(:b, n * :w + 1, 8), :base + n FROM i")


def _state_steps(height: int, writes: Mapping[bytes, bytes | None], before: Mapping[bytes, bytes | None] | None = None
                 ) -> list[tuple[str | None, str, Any]]:
    """The statements writing ``writes``: rows grouped by key and value width, each group as one blob
    that a recursive CTE slices (one statement per group instead of one step per row). Keys with an
    ``APPENDED`` prefix: every written one is first deleted (with its index entry) unless ``before``
    (the stored values before this block) says it is absent, the new values are then appended under
    fresh ids."""
    steps: list[tuple[str | None, str, Any]] = []
    groups: dict[int, list[bytes]] = {}          # by key width << 20 | value width
    appended: dict[int, list[bytes]] = {}
    deletes: dict[int, list[bytes]] = {}
    replaced: dict[int, list[bytes]] = {}
    unknown = b""
    old = (before or {}).get
    for k, v in writes.items():
        kl = len(k)
        if k[0] in APPENDED and kl >= _INDEXED:
            if old(k, unknown) is not None:
                replaced.setdefault(kl, []).append(k)
            if v is not None:
                appended.setdefault(kl << 20 | len(v), []).append(k + v)
        elif v is None:
            deletes.setdefault(kl, []).append(k)
        else:
            w = kl << 20 | len(v)
            try:
                groups[w].append(k + v)
            except KeyError:
                groups[w] = [k + v]
    for w, rows in groups.items():
        kl, vl = w >> 20, w & 0xFFFFF
        steps.append((None, _INSERT_STATE, {"b": b"".join(rows), "n": len(rows), "w": kl + vl, "kl": kl, "vl": vl}))
    for kl, keys in replaced.items():
        p = {"b": b"".join(keys), "n": len(keys), "kl": kl}
        steps.append((None, _DELETE_ROWS, p))
        steps.append((None, _DELETE_ROWINDEX, p))
    base = height << _ROW_BITS
    for w, rows in appended.items():
        kl, vl = w >> 20, w & 0xFFFFF
        p = {"b": b"".join(rows), "n": len(rows), "w": kl + vl, "kl": kl, "vl": vl, "base": base}
        steps.append((None, _INSERT_ROWS, p))
        steps.append((None, _INSERT_ROWINDEX, p))
        base += len(rows)
    steps.append(("state", "", None))
    for kl, keys in deletes.items():
        steps.append((None, _DELETE_STATE, {"b": b"".join(keys), "n": len(keys), "kl": kl}))
    steps.append(("deletes", "", None))
    return steps


def _statements(block: Block, result: BlockResult, extra: Sequence[tuple[str, tuple[Any, ...]]]
                ) -> list[tuple[str | None, str, Any]]:
    """A block's transaction as (fault-hook name, sql, params) steps: state rows (``_state_steps``),
    the block, its receipts (fixed 97 bytes, the tx hash first) with their index, the accumulator."""
    h = block.header
    steps: list[tuple[str | None, str, Any]] = [(None, sql, params) for sql, params in extra]
    steps += _state_steps(h.height, result.writes, result.before)
    steps.append(("block", "INSERT INTO chain_blocks (height, hash, header, block) VALUES (?, ?, ?, ?)",
                  (h.height, h.hash, h.encode(), block.encode())))
    if result.receipts:
        rp = {"b": b"".join(map(Receipt.encode, result.receipts)), "n": len(result.receipts),
              "base": h.height << _POS_BITS, "w": RECEIPT_SIZE}
        steps.append((None, _INSERT_RECEIPTS, rp))
        steps.append((None, _INSERT_TXINDEX, rp))
    steps.append(("receipts", "", None))
    steps.append(("meta", "UPDATE chain_meta SET value = ? WHERE key = 'accumulator'",
                  (result.accumulator.to_bytes(ACC_BYTES, "little"),)))
    return steps


class _Checkpointer:
    """WAL checkpoints on a connection of their own, in a thread, after commits.

    A 10,000-fill block writes more than SQLite's automatic checkpoint threshold, so
    without this every commit would also copy the WAL into the database and fsync it
    on the caller's thread. A checkpoint is one ``sqlite3_step`` (the GIL is released
    for all of it); PASSIVE never blocks the writer or readers. Durability does not
    depend on it: a commit is durable once its WAL frames are fsync'd (``synchronous=FULL``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = db.connect(self.path)
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self.stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # e.g. busy: the next commit wakes us again
                    log.warning("wal checkpoint: %s", exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(10)


class SqliteStore:
    """The durable store. ``fault`` is a test hook called between the writes of a commit.

    A read cache keeps the state rows seen (values and keys known to be absent, so a
    fresh order nonce or escrow costs one lookup at most); ``prefetch`` fills it for a
    whole block in a few ``IN (...)`` queries; ``commit_block`` updates it with the writes.
    """

    def __init__(self, path: str | Path, genesis: Genesis, *, fault: Callable[[str], None] | None = None) -> None:
        self.conn: sqlite3.Connection = db.connect(path)
        self.conn.execute("PRAGMA cache_size=-65536")      # KiB: the B-tree pages of the hot tables
        db.ensure_schema(self.conn, "chain", SCHEMA)
        self.fault = fault
        self._cache: dict[bytes, bytes | None] = {}
        # maker -> its highest used order nonce (32 bytes; b"" if none) when last looked up. Every stored
        # order key of the maker above it has been written since, so is in _cache (cleared together).
        self._top: dict[bytes, bytes] = {}
        self._checkpointer: _Checkpointer | None = None
        meta = dict(self.conn.execute("SELECT key, value FROM chain_meta").fetchall())
        if "genesis" not in meta:
            self._init(genesis)
            meta = dict(self.conn.execute("SELECT key, value FROM chain_meta").fetchall())
        elif meta["genesis"] != genesis.hash:
            raise StorageError(GENESIS_MISMATCH, f"{path} holds another chain")
        else:
            row = self.conn.execute("SELECT header FROM chain_blocks WHERE height = 0").fetchone()
            if row is None or Header.decode(row[0]).state_root != genesis.header().state_root:
                raise StorageError(GENESIS_MISMATCH, f"{path}: its genesis block has another state root than this "
                                   f"validator computes for this genesis (written with another state-root "
                                   f"function: v1's SHAKE-256 elements?): move the file away and resync the "
                                   f"chain from peers")
        if int.from_bytes(meta.get("layout", b""), "big") != LAYOUT:
            raise StorageError(OLD_LAYOUT, f"{path} was written with storage layout "
                               f"{int.from_bytes(meta.get('layout', b''), 'big') or 1}; this validator reads "
                               f"layout {LAYOUT} only: move the file away and resync the chain from peers "
                               f"(or run the previous release on it)")
        self._acc = int.from_bytes(meta["accumulator"], "little")
        row = self.conn.execute("SELECT header FROM chain_blocks ORDER BY height DESC LIMIT 1").fetchone()
        self._head = Header.decode(row[0])
        if state_root(self._acc) != self._head.state_root:
            raise StorageError(ROOT_MISMATCH, "stored accumulator does not match the head's state root")
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = _Checkpointer(path)
        self._tip = self._head                       # the last staged block (== head when none is in flight)
        self.path = path
        self._wconn: sqlite3.Connection | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="chain-writer", initializer=self._open_writer)

    def _init(self, genesis: Genesis) -> None:
        state = genesis.state().data
        g = genesis.header()
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for _, sql, params in _state_steps(0, state):
                if sql:
                    c.execute(sql, params)
            c.execute("INSERT INTO chain_blocks (height, hash, header, block) VALUES (0, ?, ?, ?)",
                      (g.hash, g.encode(), Block(g, ()).encode()))
            c.execute("INSERT INTO chain_meta (key, value) VALUES ('genesis', ?), ('accumulator', ?), ('layout', ?)",
                      (genesis.hash, accumulate(state.items()).to_bytes(ACC_BYTES, "little"),
                       LAYOUT.to_bytes(1, "big")))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._cache[key]
        except KeyError:
            if key[:1] and key[0] in APPENDED and len(key) >= _INDEXED:
                row = self.conn.execute("SELECT r.value FROM chain_rowindex x JOIN chain_rows r ON r.id = x.id "
                                        "WHERE x.k = ? AND r.key = ?", (key[:_INDEXED], key)).fetchone()
            else:
                row = self.conn.execute("SELECT value FROM chain_state WHERE key = ?", (key,)).fetchone()
            v = None if row is None else bytes(row[0])
            self._cache[key] = v
            return v

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """Load the state rows of ``keys`` not cached yet (absent ones as known-absent)."""
        cache = self._cache
        todo = list({k for k in keys if k not in cache})
        if len(cache) + len(todo) > CACHE_MAX:
            cache.clear()
            self._top.clear()
        c = self.conn
        rows = [k for k in todo if k[:1] and k[0] in APPENDED and len(k) >= _INDEXED]
        plain = [k for k in todo if not (k[:1] and k[0] in APPENDED and len(k) >= _INDEXED)] if rows else todo
        by_width: dict[int, list[bytes]] = {}
        top = self._top
        if len(top) > TOP_MAX:
            top.clear()
        pending: list[bytes] = []        # order keys of makers whose highest used nonce is not known yet
        for k in plain:
            cache[k] = None
            if len(k) == _ORDER_KEY and k[0] == _O:
                t = top.get(k[1:21])
                if t is None:
                    pending.append(k)
                    continue
                if k[21:] > t:           # above the maker's highest used nonce: absent, no lookup
                    continue
            by_width.setdefault(len(k), []).append(k)
        if pending:
            makers = list({k[1:21] for k in pending})
            bounds = {"lo": b"".join(b"O" + m for m in makers), "n": len(makers),
                      "hi": b"".join(b"O" + m + _MAX_NONCE for m in makers)}
            for i, key in c.execute(_TOP_ORDER_KEY, bounds):
                top[makers[i]] = b"" if key is None else bytes(key)[21:]
            for k in pending:
                if k[21:] <= top[k[1:21]]:
                    by_width.setdefault(len(k), []).append(k)
        for kl, keys in by_width.items():   # one statement per key width, the keys in one blob
            for k, v in c.execute(_SELECT_STATE, {"b": b"".join(keys), "n": len(keys), "kl": kl}):
                cache[bytes(k)] = bytes(v)
        for i in range(0, len(rows), PREFETCH_CHUNK):
            part = rows[i:i + PREFETCH_CHUNK]
            wanted = set(part)
            for k in part:
                cache[k] = None
            q = ("SELECT r.key, r.value FROM chain_rowindex x JOIN chain_rows r ON r.id = x.id WHERE x.k IN ("
                 + ",".join("?" * len(part)) + ")")
            for k, v in c.execute(q, [k[:_INDEXED] for k in part]):
                k = bytes(k)
                if k in wanted:
                    cache[k] = bytes(v)

    @property
    def head(self) -> Header:
        return self._head

    @property
    def accumulator(self) -> int:
        return self._acc

    def header_at(self, height: int) -> Header | None:
        row = self.conn.execute("SELECT header FROM chain_blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else Header.decode(row[0])

    def block_at(self, height: int) -> Block | None:
        row = self.conn.execute("SELECT block FROM chain_blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else decode_block(row[0])

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        for (raw,) in self.conn.execute("SELECT r.receipt FROM chain_txindex x JOIN chain_receipts r ON r.id = x.id "
                                        "WHERE x.k = ?", (tx_hash[:8],)):
            if raw[:32] == tx_hash:
                return Receipt.decode(raw)
        return None

    def _hook(self, where: str) -> None:
        if self.fault is not None:
            self.fault(where)

    def commit_block(self, block: Block, result: BlockResult, extra: Sequence[tuple[str, tuple[Any, ...]]] = ()
                     ) -> None:
        """Write the block durably and make it the head (``stage`` + wait + ``finish``).

        ``extra``: statements run first in the same transaction (the node's commit certificate)."""
        fut = self.stage(block, result, extra)
        fut.result()
        self.finish(block, result)

    def stage(self, block: Block, result: BlockResult, extra: Sequence[tuple[str, tuple[Any, ...]]] = ()
              ) -> Future[None]:
        """Start writing the block on the writer thread; it must extend the last staged block.

        The returned future completes when the SQLite transaction has committed (fsync'd); until
        ``finish`` is called the head, the accumulator and the state read here stay those of the
        last finished block, so nothing reads as final before it is on disk. Several blocks may be
        staged; they are written in order."""
        _check_next(self._tip, block, result)
        self._tip = block.header
        fut = self._writer.submit(self._write, _statements(block, result, extra))
        fut.add_done_callback(self._write_done)
        return fut

    def finish(self, block: Block, result: BlockResult) -> None:
        """The staged block's transaction committed: it is the head now (call in stage order)."""
        if block.header.parent_hash != self._head.hash:
            raise StorageError(NOT_NEXT_BLOCK, f"block {block.header.height} finished out of order")
        writes = result.writes
        if len(self._cache) + len(writes) > CACHE_MAX:
            self._cache.clear()
            self._top.clear()
        self._cache.update(writes)
        self._acc = result.accumulator
        self._head = block.header
        if self._checkpointer is not None:
            self._checkpointer.wake.set()

    def _write_done(self, fut: Future[None]) -> None:
        if fut.exception() is not None:   # nothing staged after it can commit either: start again at the head
            self._tip = self._head

    def _open_writer(self) -> None:
        self._wconn = db.connect(self.path)
        self._wconn.execute("PRAGMA cache_size=-65536")

    def _write(self, steps: list[tuple[str | None, str, Any]]) -> None:
        """One transaction, on the writer thread: a handful of statements over packed blobs, each
        running in C with the GIL released throughout, so the event loop keeps running meanwhile."""
        c = self._wconn
        assert c is not None
        c.execute("BEGIN IMMEDIATE")
        try:
            for hook, sql, params in steps:
                if sql:
                    c.execute(sql, params)
                if hook:
                    self._hook(hook)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        plain = self.conn.execute("SELECT key, value FROM chain_state ORDER BY key")
        rows = self.conn.execute("SELECT key, value FROM chain_rows ORDER BY key")
        for k, v in heapq.merge(plain, rows):
            yield bytes(k), bytes(v)

    def close(self) -> None:
        self._writer.submit(self._close_writer).result()
        self._writer.shutdown(wait=True)
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.conn.close()

    def _close_writer(self) -> None:
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None
