"""Where settlement learns about fills: the gateway's own records and the chain itself.

- ``FillSource`` (Protocol): the fills of one (grid, interval) as the gateway knows them,
  with the households behind the maker and taker addresses: ``TradesFillSource``
  (the agents' ``trades`` table, gateway/market/trades.py), ``StaticFillSource`` (tests).
- ``ChainFillIndex``: a ``FillSource`` read from the chain: it scans final blocks
  (``chain_getBlockByNumber(n, true)``), decodes every fill transaction and indexes
  it by (grid, interval) in ``settlement_chain_fills``. A fill that reached the chain
  is found even if the gateway's records missed it. Households come from a
  ``HouseholdDirectory`` (address -> household; the wallet knows it). On the EVM backend
  its subclass ``EvmFillIndex`` (settlement_fills_evm.py) fills the same table from the
  exchange's ``Filled`` events; ``settlement_fills_evm.chain_fill_index`` picks by backend.
- ``chain_fill_state``: what the chain says about one fill id (escrowed, with the
  chain's maker, taker, Wh and NOIA; settled, with its amounts; reclaimed by its
  taker after the settle timeout, with the refund; or unknown).

Settlement always re-reads each fill's escrow from the chain before building a batch:
the chain is the source of truth for what was escrowed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.chain_client.api import ChainBackend, EscrowInfo
from gateway.db import ensure_schema
from gateway.validator.order import Domain, Order, grid_id
from gateway.validator.tx import FILL, HEADER_SIZE

FILL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS settlement_chain_fills (
        fill_id        BLOB PRIMARY KEY CHECK (length(fill_id) = 32),
        grid           BLOB NOT NULL,       -- bytes32 grid id
        interval_start INTEGER NOT NULL,
        maker          BLOB NOT NULL,
        taker          BLOB NOT NULL,
        wh             INTEGER NOT NULL,
        noia           TEXT NOT NULL,       -- decimal (uint256)
        height         INTEGER NOT NULL     -- block holding the fill
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS settlement_chain_fills_by_interval ON settlement_chain_fills (grid, interval_start)",
    """CREATE TABLE IF NOT EXISTS settlement_chain_scan (
        chain   TEXT PRIMARY KEY,            -- backend name, e.g. metanoia:31337
        height  INTEGER NOT NULL             -- last block scanned
    )""",
)


@dataclass(frozen=True)
class FillRecord:
    """A fill as the gateway knows it; the chain's escrow has the last word on the amounts."""
    fill_id: bytes                   # the order's EIP-712 digest
    maker: bytes                     # address
    taker: bytes
    wh: int
    noia: int
    maker_household: str | None = None
    taker_household: str | None = None


class FillSource(Protocol):
    def fills(self, grid: bytes, interval_start: int) -> Sequence[FillRecord]:
        """The fills of ``grid`` (bytes32 id) delivering in the interval starting at ``interval_start``."""
        ...


class HouseholdDirectory(Protocol):
    def household_of(self, address: bytes) -> str | None: ...


class MappingDirectory:
    """address -> household from a mapping (tests, or built from the wallet's ``households()``/``address()``)."""

    def __init__(self, mapping: Mapping[bytes, str]) -> None:
        self._m = dict(mapping)

    def household_of(self, address: bytes) -> str | None:
        return self._m.get(address)


class StaticFillSource:
    """Fills held in memory (tests; a stand-in until the agents' ``trades`` table lands)."""

    def __init__(self, fills: Iterable[tuple[bytes, int, FillRecord]] = ()) -> None:
        self._by: dict[tuple[bytes, int], dict[bytes, FillRecord]] = {}
        for grid, start, f in fills:
            self.add(grid, start, f)

    def add(self, grid: bytes, interval_start: int, fill: FillRecord) -> None:
        self._by.setdefault((grid, interval_start), {})[fill.fill_id] = fill

    def fills(self, grid: bytes, interval_start: int) -> Sequence[FillRecord]:
        return list(self._by.get((grid, interval_start), {}).values())


class TradesFillSource:
    """The agents' ``trades`` table (gateway/market/trades.py): every fill not refused by the chain."""

    def __init__(self, conn: sqlite3.Connection, grid: str) -> None:
        from gateway.market.trades import TradeLog
        TradeLog(conn)  # the table exists
        self.conn = conn
        self.grid = grid
        self.gid = grid_id(grid)

    def fills(self, grid: bytes, interval_start: int) -> Sequence[FillRecord]:
        if grid != self.gid:
            return []
        return [FillRecord(bytes(f), bytes(m), bytes(t), int(wh), int(noia), mh, th) for f, m, t, wh, noia, mh, th in
                self.conn.execute("SELECT fill_id, maker, taker, wh, noia, maker_household, taker_household FROM "
                                  "trades WHERE grid = ? AND interval_start = ? AND state != 'rejected' ORDER BY "
                                  "fill_id", (self.grid, interval_start))]

    def unsettled_intervals(self, horizon: int) -> list[int]:
        """Intervals up to ``horizon`` with a final fill that no live settlement row covers."""
        return [int(s) for (s,) in self.conn.execute(
            "SELECT DISTINCT t.interval_start FROM trades t WHERE t.grid = ? AND t.state = 'final' AND "
            "t.interval_start <= ? AND NOT EXISTS (SELECT 1 FROM settlement_fills f WHERE f.fill_id = t.fill_id "
            "AND f.state != 'rejected')", (self.grid, horizon))]


# ---- the chain's view of one fill ----

FillStatus = Literal["escrowed", "settled", "reclaimed", "unknown"]


@dataclass(frozen=True)
class ChainFill:
    fill_id: bytes
    status: FillStatus
    escrow: EscrowInfo | None = None                    # when escrowed
    settled: tuple[int, int, int] | None = None         # (delivered Wh, payment, refund) when settled
    reclaimed: int | None = None                        # the refund to the taker when reclaimed


def _int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        return int(v, 16) if v.startswith(("0x", "0X")) else int(v)
    raise ValueError(f"expected an integer, got {v!r}")


def _hexb(v: Any) -> bytes:
    if not isinstance(v, str):
        raise ValueError(f"expected hex, got {v!r}")
    return bytes.fromhex(v[2:] if v.startswith(("0x", "0X")) else v)


RpcCall = Callable[..., Awaitable[Any]]


def rpc_of(backend: ChainBackend) -> RpcCall | None:
    """The backend's raw JSON-RPC call, when it has one (the bundled backend)."""
    rpc = getattr(backend, "rpc", None)
    call = getattr(rpc, "call", None)
    return call if callable(call) else None


async def chain_fill_state(backend: ChainBackend, fill_id: bytes) -> ChainFill:
    """Escrowed / settled / reclaimed / unknown, read from the chain: the backend's ``fill_record`` where it
    has one (the EVM backend: the exchange's ``fills`` view), else ``chain_getEscrow`` (the bundled node)."""
    record = getattr(backend, "fill_record", None)
    if callable(record):
        f = await record(fill_id)
        if f is None:
            return ChainFill(fill_id, "unknown")
        if f.status == "settled":
            return ChainFill(fill_id, "settled", None, (f.delivered_wh, f.payment, f.refund))
        if f.status == "reclaimed":
            return ChainFill(fill_id, "reclaimed", reclaimed=f.refund)
        return ChainFill(fill_id, "escrowed", EscrowInfo(fill_id, f.maker, f.taker, f.noia, f.wh, f.interval_start,
                                                         f.grid))
    call = rpc_of(backend)
    if call is None:  # a backend without the raw call: settled and unknown look alike
        esc = await backend.escrow(fill_id)
        return ChainFill(fill_id, "escrowed", esc) if esc is not None else ChainFill(fill_id, "unknown")
    res = await call("chain_getEscrow", "0x" + fill_id.hex())
    if res is None:
        return ChainFill(fill_id, "unknown")
    if res.get("status") == "settled":
        return ChainFill(fill_id, "settled", None,
                         (_int(res["deliveredWh"]), _int(res["payment"]), _int(res["refund"])))
    if res.get("status") == "reclaimed":
        return ChainFill(fill_id, "reclaimed", reclaimed=_int(res["refund"]))
    return ChainFill(fill_id, "escrowed", EscrowInfo(
        fill_id, _hexb(res["maker"]), _hexb(res["taker"]), _int(res["noia"]), _int(res["wh"]),
        _int(res.get("intervalStart", res.get("interval_start"))), _hexb(res["grid"])))


# ---- fills read from the chain's blocks ----

class ChainFillIndex:
    """Every fill in the chain's final blocks, indexed by (grid, interval); a ``FillSource``."""

    def __init__(self, conn: sqlite3.Connection, chain: str, domain: Domain, *,
                 directory: HouseholdDirectory | None = None) -> None:
        self.conn = conn
        self.chain = chain
        self.domain = domain
        self.directory = directory
        ensure_schema(conn, "settlement_chain_fills", FILL_SCHEMA)

    def scanned(self) -> int:
        row = self.conn.execute("SELECT height FROM settlement_chain_scan WHERE chain = ?", (self.chain,)).fetchone()
        return 0 if row is None else int(row[0])

    async def sync(self, call: RpcCall, *, max_blocks: int = 1000) -> int:
        """Scan final blocks after the last one scanned (at most ``max_blocks``); returns fills indexed."""
        final = _int(await call("chain_finalizedNumber"))
        start = self.scanned() + 1
        found = 0
        for n in range(start, min(final, start + max_blocks - 1) + 1):
            blk = await call("chain_getBlockByNumber", n, True)
            if blk is None:
                break
            rows = []
            for tx_hex in blk.get("transactions", []):
                raw = _hexb(tx_hex)
                if raw and raw[0] == FILL:
                    o = Order.decode(raw[HEADER_SIZE:HEADER_SIZE + 160])
                    rows.append((o.digest(self.domain), o.grid, o.interval_start, o.maker, raw[9:29], o.wh,
                                 str(o.noia), n))
            self._commit(rows, n)
            found += len(rows)
        return found

    def _commit(self, rows: list[tuple[Any, ...]], height: int) -> int:
        """The rows and the cursor in one transaction; returns the rows new to the table."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            n = self.conn.executemany("INSERT OR IGNORE INTO settlement_chain_fills VALUES (?,?,?,?,?,?,?,?)",
                                      rows).rowcount if rows else 0
            self.conn.execute("INSERT INTO settlement_chain_scan (chain, height) VALUES (?, ?) ON CONFLICT "
                              "(chain) DO UPDATE SET height = excluded.height", (self.chain, height))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return max(n, 0)

    def fills(self, grid: bytes, interval_start: int) -> Sequence[FillRecord]:
        d = self.directory
        out = []
        for fid, maker, taker, wh, noia in self.conn.execute(
                "SELECT fill_id, maker, taker, wh, noia FROM settlement_chain_fills WHERE grid = ? AND "
                "interval_start = ? ORDER BY fill_id", (grid, interval_start)):
            maker, taker = bytes(maker), bytes(taker)
            out.append(FillRecord(bytes(fid), maker, taker, int(wh), int(noia),
                                  d.household_of(maker) if d else None, d.household_of(taker) if d else None))
        return out

    def unsettled_intervals(self, grid: bytes, horizon: int) -> list[int]:
        """Intervals up to ``horizon`` with a fill on the chain that no live settlement row covers."""
        return [int(s) for (s,) in self.conn.execute(
            "SELECT DISTINCT c.interval_start FROM settlement_chain_fills c WHERE c.grid = ? AND c.interval_start <= ? "
            "AND NOT EXISTS (SELECT 1 FROM settlement_fills f WHERE f.fill_id = c.fill_id AND f.state != 'rejected')",
            (grid, horizon))]
