"""The EVM counterpart of ``ChainFillIndex``: fills read from the Exchange's ``Filled`` events.

``EvmFillIndex(conn, backend)`` asks the node for the exchange's ``Filled`` logs
(``eth_getLogs`` by address and topic0) over **final blocks only** (the backend's finality
point: the ``finalized`` tag, else N confirmations; ``EvmBackend.finalized_number``), in
bounded block ranges (``max_range``, halved while the node refuses a range as too large),
from the deployment's creation block on, and stores them in the same
``settlement_chain_fills`` table as the bundled index: ``fills()`` and
``unsettled_intervals()`` are inherited unchanged. Each range's rows and the cursor
(``settlement_chain_scan``, keyed ``evm:{chain id}/0x{exchange}``) are committed in one
transaction, so a restart resumes after the last range committed and a re-scan inserts
nothing twice (the fill id is the key). Reorg-safe because nothing above the finality
point is ever read.

Every log is checked before it is stored; a bad one is refused with a counted reason
(``counters``) and a warning, never an exception: ``bad_log`` (not an object, a field
missing or not hex), ``removed``, ``wrong_address``, ``wrong_event`` (topic0 is not
``Filled``), ``topic_count``, ``bad_topic`` (an address topic with non-zero padding),
``short_data``, ``bad_data`` (too long, or not the canonical encoding: a ``uint64`` word
above 2^64 - 1), ``not_final`` (a block above the range asked, i.e. above the finality
point) and ``out_of_range`` (below it). A refused log does not hold the cursor back: the
exchange cannot emit a malformed ``Filled``, so such a log is the node's (and a fill it
hides is still found through the trades table, or after a re-scan from another node).
An answer that is not a list of logs is the node's failure as a whole: ``ChainUnavailable``,
nothing committed, the next pass retries.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import abi_to_signature, event_abi_to_log_topic

from gateway.chain_client.bundled import BundledBackend
from gateway.chain_client.errors import BAD_RESPONSE, ChainUnavailable, RpcError
from gateway.chain_client.evm import EvmBackend
from gateway.validator.crypto import keccak256, to_checksum

from .settlement_fills import ChainFillIndex, HouseholdDirectory, RpcCall

log = logging.getLogger(__name__)

# contracts/Exchange.sol: event Filled(bytes32 indexed fillId, address indexed maker, address indexed taker,
#                                      uint256 nonce, uint64 wh, uint64 intervalStart, uint256 noia, bytes32 grid)
FILLED_SIGNATURE = "Filled(bytes32,address,address,uint256,uint64,uint64,uint256,bytes32)"
FILLED_TOPIC = keccak256(FILLED_SIGNATURE.encode())
_INDEXED = (("fillId", "bytes32"), ("maker", "address"), ("taker", "address"))
_DATA = (("nonce", "uint256"), ("wh", "uint64"), ("intervalStart", "uint64"), ("noia", "uint256"), ("grid", "bytes32"))
DATA_TYPES = [t for _, t in _DATA]
DATA_SIZE = 32 * len(_DATA)

REFUSALS = ("bad_log", "removed", "wrong_address", "wrong_event", "topic_count", "bad_topic", "short_data",
            "bad_data", "not_final", "out_of_range")


class LogRefused(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def filled_topic(exchange_abi: list[dict[str, Any]]) -> bytes:
    """topic0 of ``Filled`` from the deployment's ABI; refuses an ABI whose event is not the one decoded here."""
    entries = [e for e in exchange_abi if e.get("type") == "event" and e.get("name") == "Filled"]
    if len(entries) != 1:
        raise ValueError("the exchange ABI has no single Filled event")
    e = entries[0]
    shape = [(i["name"], i["type"], bool(i.get("indexed"))) for i in e["inputs"]]
    want = [(n, t, True) for n, t in _INDEXED] + [(n, t, False) for n, t in _DATA]
    if shape != want or abi_to_signature(e) != FILLED_SIGNATURE:  # type: ignore[arg-type]
        raise ValueError(f"the exchange ABI's Filled is {shape}, expected {want}")
    topic = bytes(event_abi_to_log_topic(e))  # type: ignore[arg-type]
    if topic != FILLED_TOPIC:
        raise ValueError("Filled topic0 is not keccak256 of its signature")
    return topic


def _hex(v: Any, n: int | None = None) -> bytes:
    if not isinstance(v, str) or v[:2] not in ("0x", "0X") or len(v) % 2:
        raise LogRefused("bad_log", f"not hex data: {v!r:.80}")
    try:
        b = bytes.fromhex(v[2:])
    except ValueError:
        raise LogRefused("bad_log", f"not hex data: {v!r:.80}") from None
    if n is not None and len(b) != n:
        raise LogRefused("bad_topic" if n == 32 else "bad_log", f"{len(b)} bytes, expected {n}")
    return b


def _qty(v: Any) -> int:
    if not isinstance(v, str) or v[:2] not in ("0x", "0X") or not 2 < len(v) <= 18:
        raise LogRefused("bad_log", f"not a quantity: {v!r:.80}")
    try:
        return int(v, 16)
    except ValueError:
        raise LogRefused("bad_log", f"not a quantity: {v!r:.80}") from None


def _address(topic: bytes) -> bytes:
    if topic[:12] != bytes(12):
        raise LogRefused("bad_topic", f"address topic with padding 0x{topic[:12].hex()}")
    return topic[12:]


def decode_filled(lg: Any, exchange: bytes, lo: int, hi: int) -> tuple[Any, ...]:
    """One ``eth_getLogs`` entry -> a ``settlement_chain_fills`` row (fill id, grid, interval start, maker, taker,
    Wh, NOIA as decimal, block); raises ``LogRefused(reason)`` for anything else. ``[lo, hi]``: the range asked."""
    if not isinstance(lg, dict):
        raise LogRefused("bad_log", f"not an object: {lg!r:.80}")
    for k in ("address", "topics", "data", "blockNumber"):
        if k not in lg:
            raise LogRefused("bad_log", f"no {k}")
    if lg.get("removed") not in (None, False):
        raise LogRefused("removed", "a log of a reorganised-away block")
    height = _qty(lg["blockNumber"])
    if height > hi:
        raise LogRefused("not_final", f"block {height} above {hi}")
    if height < lo:
        raise LogRefused("out_of_range", f"block {height} below {lo}")
    if _hex(lg["address"], 20) != exchange:
        raise LogRefused("wrong_address", str(lg["address"]))
    topics = lg["topics"]
    if not isinstance(topics, list):
        raise LogRefused("bad_log", "topics is not a list")
    if not topics or _hex(topics[0], 32) != FILLED_TOPIC:
        raise LogRefused("wrong_event", str(topics[:1]))
    if len(topics) != 1 + len(_INDEXED):
        raise LogRefused("topic_count", f"{len(topics)} topics, expected {1 + len(_INDEXED)}")
    fill_id, maker_t, taker_t = (_hex(t, 32) for t in topics[1:])
    maker, taker = _address(maker_t), _address(taker_t)
    data = _hex(lg["data"])
    if len(data) < DATA_SIZE:
        raise LogRefused("short_data", f"{len(data)} bytes, expected {DATA_SIZE}")
    if len(data) > DATA_SIZE:
        raise LogRefused("bad_data", f"{len(data)} bytes, expected {DATA_SIZE}")
    try:
        _nonce, wh, start, noia, grid = abi_decode(DATA_TYPES, data, strict=True)
        if abi_encode(DATA_TYPES, [_nonce, wh, start, noia, grid]) != data:
            raise ValueError("not canonical")
    except Exception as exc:  # eth-abi's own errors: a uint64 word above 2^64 - 1, ...
        raise LogRefused("bad_data", f"{type(exc).__name__}: {exc}") from None
    return (fill_id, bytes(grid), int(start), maker, taker, int(wh), str(int(noia)), height)


class EvmFillIndex(ChainFillIndex):
    """Every ``Filled`` event of one exchange in final blocks, indexed by (grid, interval); a ``FillSource``."""

    def __init__(self, conn: sqlite3.Connection, backend: EvmBackend, *,
                 directory: HouseholdDirectory | None = None, max_range: int = 2000) -> None:
        dep = backend.deployment
        super().__init__(conn, f"{backend.name}/0x{dep.exchange.hex()}", backend.domain, directory=directory)
        if max_range < 1:
            raise ValueError("max_range must be >= 1")
        self.backend = backend
        self.exchange = dep.exchange
        self.first_block = dep.block
        self.topic = filled_topic(dep.exchange_abi)
        self.max_range = max_range
        self.counters: dict[str, int] = {}

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    async def sync(self, call: RpcCall | None = None, *, max_blocks: int = 1_000_000) -> int:
        """Index the ``Filled`` logs of final blocks after the cursor (at most ``max_blocks`` blocks); returns the
        fills newly indexed (a re-scan returns 0). ``call`` is accepted for ``ChainFillIndex``'s interface
        (``Settler.run_once`` and the watchtower pass the backend's raw call) and not used: the index reads
        through its own backend."""
        final = await self.backend.finalized_number()
        lo = max(self.scanned() + 1, self.first_block)
        end = min(final, lo + max_blocks - 1)
        span, found = self.max_range, 0
        addr = to_checksum(self.exchange)
        while lo <= end:
            hi = min(end, lo + span - 1)
            try:
                logs = await self.backend.rpc.call("eth_getLogs", {"address": addr, "topics": ["0x" + self.topic.hex()],
                                                                   "fromBlock": hex(lo), "toBlock": hex(hi)})
            except RpcError as exc:  # "block range too large", "more than 10000 results", ...: a smaller range
                if hi == lo:
                    raise
                span = max(1, (hi - lo + 1) // 2)
                self._count("range_halved")
                log.info("evm fill index: eth_getLogs %d..%d refused (%s); ranges of %d blocks", lo, hi, exc, span)
                continue
            if not isinstance(logs, list):
                self._count(BAD_RESPONSE)
                raise ChainUnavailable(BAD_RESPONSE, f"eth_getLogs {lo}..{hi}: not a list: {logs!r:.200}")
            rows = []
            for lg in logs:
                try:
                    rows.append(decode_filled(lg, self.exchange, lo, hi))
                except LogRefused as exc:
                    self._count(f"refused_{exc.reason}")
                    log.warning("evm fill index %s: log refused (%s)", self.chain, exc)
            found += self._commit(rows, hi)
            self._count("logs", len(logs))
            self._count("ranges")
            lo = hi + 1
        return found



def chain_fill_index(conn: sqlite3.Connection, backend: BundledBackend | EvmBackend, *,
                     directory: HouseholdDirectory | None = None) -> ChainFillIndex:
    """The chain's fill index for a backend: the exchange's events on an EVM chain, else the bundled node's
    blocks."""
    if isinstance(backend, EvmBackend):
        return EvmFillIndex(conn, backend, directory=directory)
    return ChainFillIndex(conn, backend.name, backend.domain, directory=directory)
