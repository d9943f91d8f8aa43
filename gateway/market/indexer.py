"""The Indexer: makers post signed intents, takers find counterparties.

An intent (``intent.py``) says "maker M sells (or buys) up to W Wh on grid G in
the window [start, end) at about P per Wh; ask my Peer at URL". Intents are
hints, not orders: what binds is the order a Peer signs. The Indexer checks
each intent before it stores it, in this order, and refuses with a reason:

=====================  ========================================================
``rate_limited``       too many writes from the source IP (before any work) or
                       for the maker (after its signature is checked, so nobody
                       can spend another maker's tokens)
``bad_intent``         not exactly the intent's fields with their types
``unsigned``           no signature
``bad_signature``      malformed, or does not recover to ``maker``
``expired``            ``expiry <= now``; ``expiry_too_far``: beyond ``max_ttl_s``
``bad_window``         ``start >= end`` or longer than ``max_window_s``
``window_past``        ``end <= now``; ``window_too_far``: start beyond ``max_ahead_s``
``wh_out_of_range``    outside ``min_wh..max_wh``; ``bad_price``: price 0
``bad_locator``        not an http(s) URL with a host, or too long
``replayed_nonce``     the maker already used this nonce (kept until it expires)
``too_many_intents``   the maker has ``max_per_maker`` live intents
``indexer_full``       ``max_intents`` live intents in all
=====================  ========================================================

A maker has one intent per (grid, side, window): a newer one replaces it.
Intents are in SQLite (``synchronous=FULL``: an accepted intent survives a power
cut), expired ones are pruned. JSON-RPC methods (``gateway/jsonrpc.py``):
``indexer_setIntent(intent, signature)``, ``indexer_unsetIntent(maker, nonce,
signature)``, ``indexer_getIntents(grid, side, interval_start[, min_wh[, limit]])``,
``indexer_status()``. Errors: -32000 rejected, -32001 unavailable (rate limits,
full), with ``data.reason``; -32602 for malformed query params.
"""

from __future__ import annotations

import contextvars
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway import db as gdb
from gateway.jsonrpc import INVALID_PARAMS, JsonRpcServer, RpcError, params_of, serve
from gateway.validator.crypto import parse_address, recover_address, to_checksum
from gateway.validator.errors import DecodeError
from gateway.validator.order import Domain

from .intent import SIDES, Intent, IntentError, hex_bytes, json_int, unset_digest
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

REJECTED, UNAVAILABLE = -32000, -32001
_UNAVAILABLE_REASONS = {"rate_limited", "indexer_full"}
_I64_MAX = (1 << 63) - 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS indexer_intents (
        maker       BLOB    NOT NULL,
        grid        BLOB    NOT NULL,
        side        INTEGER NOT NULL,   -- 0 sell, 1 buy
        start       INTEGER NOT NULL,
        end_        INTEGER NOT NULL,
        wh          INTEGER NOT NULL,
        price       BLOB    NOT NULL,   -- uint256 big-endian, 32 bytes: byte order = numeric order
        locator     TEXT    NOT NULL,
        expiry      INTEGER NOT NULL,
        nonce       BLOB    NOT NULL,   -- uint256 big-endian
        signature   BLOB    NOT NULL,
        received_at INTEGER NOT NULL,   -- unix ms
        PRIMARY KEY (maker, grid, side, start, end_))""",
    "CREATE INDEX IF NOT EXISTS indexer_intents_query ON indexer_intents (grid, side, start)",
    "CREATE INDEX IF NOT EXISTS indexer_intents_expiry ON indexer_intents (expiry)",
    "CREATE INDEX IF NOT EXISTS indexer_intents_nonce ON indexer_intents (maker, nonce)",
    """CREATE TABLE IF NOT EXISTS indexer_nonces (
        maker BLOB NOT NULL, nonce BLOB NOT NULL, expiry INTEGER NOT NULL,
        PRIMARY KEY (maker, nonce)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS indexer_nonces_expiry ON indexer_nonces (expiry)",
)

_REMOTE: contextvars.ContextVar[str] = contextvars.ContextVar("indexer_remote", default="local")


class IndexerRefused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class IndexerConfig:
    """Limits; every default works for a complex of a few hundred households."""

    min_wh: int = 1
    max_wh: int = 1_000_000              # 1 MWh
    max_window_s: int = 86_400
    max_ahead_s: int = 7 * 86_400
    max_ttl_s: int = 7 * 86_400
    max_locator: int = 256
    max_per_maker: int = 200
    max_intents: int = 100_000
    max_results: int = 500
    ip_rate: float = 10.0                # writes per second per source IP
    ip_burst: int = 50
    maker_rate: float = 2.0              # writes per second per maker address
    maker_burst: int = 20
    max_body: int = 16 * 1024
    prune_every_s: float = 60.0


def _u256(n: int) -> bytes:
    return n.to_bytes(32, "big")


def check_locator(url: str, max_len: int) -> None:
    if len(url) > max_len or not url.isprintable() or any(c.isspace() for c in url):
        raise IndexerRefused("bad_locator", f"a locator is a printable URL of at most {max_len} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise IndexerRefused("bad_locator", "not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise IndexerRefused("bad_locator", "the locator must be an http(s) URL with a host")


class Indexer:
    """The store and its rules (Python API); ``IndexerService`` puts JSON-RPC in front."""

    def __init__(self, db: str | Path | sqlite3.Connection, domain: Domain, config: IndexerConfig | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.conn = db if isinstance(db, sqlite3.Connection) else gdb.connect(db)
        gdb.ensure_schema(self.conn, "indexer", _SCHEMA)
        self.domain = domain
        self.config = config or IndexerConfig()
        self.clock = clock
        self.ip_limit = RateLimiter(self.config.ip_rate, self.config.ip_burst)
        self.maker_limit = RateLimiter(self.config.maker_rate, self.config.maker_burst)
        self.refused: Counter[str] = Counter()
        self.accepted = 0
        self.started = clock()
        self._last_prune = 0.0

    def _refuse(self, reason: str, detail: str = "") -> IndexerRefused:
        self.refused[reason] += 1
        log.debug("indexer refused %s: %s", reason, detail)
        return IndexerRefused(reason, detail)

    def _verify(self, digest: bytes, signature: Any, maker: bytes) -> None:
        if signature is None or signature == "" or signature == "0x" or signature == b"":
            raise self._refuse("unsigned", "no signature")
        if isinstance(signature, str):
            if not signature.startswith("0x") or len(signature) != 132:
                raise self._refuse("bad_signature", "a signature is 0x + 130 hex digits")
            try:
                signature = bytes.fromhex(signature[2:])
            except ValueError:
                raise self._refuse("bad_signature", "not hex") from None
        if not isinstance(signature, bytes):
            raise self._refuse("bad_signature", "not a signature")
        try:
            signer = recover_address(digest, signature)
        except DecodeError as exc:
            raise self._refuse("bad_signature", exc.reason) from None
        if signer != maker:
            raise self._refuse("bad_signature", "the signature is not the maker's")

    def set_intent(self, intent_json: Any, signature: Any, source: str = "local") -> dict[str, Any]:
        """Check and store one intent (``IndexerRefused`` otherwise); returns a receipt."""
        cfg, now = self.config, self.clock()
        if not self.ip_limit.allow(source, now):
            raise self._refuse("rate_limited", "too many writes from this address")
        try:
            intent = intent_json if isinstance(intent_json, Intent) else Intent.from_json(intent_json)
        except IntentError as exc:
            raise self._refuse(exc.reason, exc.detail) from None
        self._verify(intent.digest(self.domain), signature, intent.maker)
        if not self.maker_limit.allow(intent.maker.hex(), now):
            raise self._refuse("rate_limited", "too many writes for this maker")
        if intent.expiry <= now:
            raise self._refuse("expired", f"expired at {intent.expiry}")
        if intent.expiry > now + cfg.max_ttl_s:
            raise self._refuse("expiry_too_far", f"expiry more than {cfg.max_ttl_s} s ahead")
        if intent.start >= intent.end or intent.end - intent.start > cfg.max_window_s:
            raise self._refuse("bad_window", f"need start < end and a window of at most {cfg.max_window_s} s")
        if intent.end <= now:
            raise self._refuse("window_past", "the window is over")
        if intent.start > now + cfg.max_ahead_s:
            raise self._refuse("window_too_far", f"the window starts more than {cfg.max_ahead_s} s ahead")
        if not cfg.min_wh <= intent.wh <= cfg.max_wh:
            raise self._refuse("wh_out_of_range", f"wh must be in {cfg.min_wh}..{cfg.max_wh}")
        if intent.price == 0:
            raise self._refuse("bad_price", "a price hint is > 0")
        try:
            check_locator(intent.locator, cfg.max_locator)
        except IndexerRefused as exc:
            raise self._refuse(exc.reason, exc.detail) from None
        if now - self._last_prune > cfg.prune_every_s:
            self.prune()
        key = (intent.maker, intent.grid, SIDES[intent.side], intent.start, intent.end)
        nonce = _u256(intent.nonce)
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if c.execute("SELECT 1 FROM indexer_nonces WHERE maker = ? AND nonce = ?",
                         (intent.maker, nonce)).fetchone():
                raise self._refuse("replayed_nonce", "this nonce was used")
            replaces = c.execute("SELECT 1 FROM indexer_intents WHERE maker = ? AND grid = ? AND side = ? AND "
                                 "start = ? AND end_ = ? AND expiry > ?", (*key, int(now))).fetchone() is not None
            if not replaces:
                (mine,) = c.execute("SELECT COUNT(*) FROM indexer_intents WHERE maker = ? AND expiry > ?",
                                    (intent.maker, int(now))).fetchone()
                if mine >= cfg.max_per_maker:
                    raise self._refuse("too_many_intents", f"{cfg.max_per_maker} live intents per maker")
                (total,) = c.execute("SELECT COUNT(*) FROM indexer_intents WHERE expiry > ?",
                                     (int(now),)).fetchone()
                if total >= cfg.max_intents:
                    raise self._refuse("indexer_full", f"{cfg.max_intents} live intents")
            c.execute("INSERT INTO indexer_nonces VALUES (?, ?, ?)", (intent.maker, nonce, intent.expiry))
            c.execute("INSERT OR REPLACE INTO indexer_intents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (*key, intent.wh, _u256(intent.price), intent.locator, intent.expiry, nonce,
                       bytes.fromhex(signature[2:]) if isinstance(signature, str) else signature,
                       int(now * 1000)))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self.accepted += 1
        log.info("indexer: %s %s Wh by %s for [%d, %d)%s", intent.side, intent.wh, to_checksum(intent.maker),
                 intent.start, intent.end, " (replaces)" if replaces else "")
        return {"accepted": True, "replaced": replaces}

    def unset_intent(self, maker: bytes, nonce: int, signature: Any, source: str = "local") -> dict[str, Any]:
        """Withdraw the maker's intent ``nonce`` (signed ``UnsetIntent``); idempotent."""
        now = self.clock()
        if not self.ip_limit.allow(source, now):
            raise self._refuse("rate_limited", "too many writes from this address")
        self._verify(unset_digest(self.domain, maker, nonce), signature, maker)
        if not self.maker_limit.allow(maker.hex(), now):
            raise self._refuse("rate_limited", "too many writes for this maker")
        cur = self.conn.execute("DELETE FROM indexer_intents WHERE maker = ? AND nonce = ?", (maker, _u256(nonce)))
        log.info("indexer: %s withdrew intent %d (%s)", to_checksum(maker), nonce,
                 "removed" if cur.rowcount else "not found")
        return {"removed": cur.rowcount > 0}

    def get_intents(self, grid: bytes, side: str, interval_start: int, min_wh: int = 0,
                    limit: int = 50) -> list[dict[str, Any]]:
        """Live intents on ``grid`` and ``side`` whose window holds ``interval_start`` and that
        offer at least ``min_wh``: sells cheapest first, buys dearest first, then larger first."""
        if side not in SIDES:
            raise ValueError("side is 'sell' or 'buy'")
        limit = max(1, min(limit, self.config.max_results))
        order = "ASC" if side == "sell" else "DESC"
        rows = self.conn.execute(
            "SELECT maker, grid, side, start, end_, wh, price, locator, expiry, nonce, signature "
            "FROM indexer_intents WHERE grid = ? AND side = ? AND start <= ? AND end_ > ? AND wh >= ? AND "
            f"expiry > ? ORDER BY price {order}, wh DESC, received_at ASC LIMIT ?",
            (grid, SIDES[side], interval_start, interval_start, min_wh, int(self.clock()), limit)).fetchall()
        out = []
        for maker, g, _s, start, end, wh, price, locator, expiry, nonce, sig in rows:
            intent = Intent(side, g, start, end, wh, int.from_bytes(price, "big"), locator, expiry, maker,
                            int.from_bytes(nonce, "big"))
            out.append({"intent": intent.to_json(), "signature": "0x" + sig.hex()})
        return out

    def prune(self) -> int:
        """Delete expired intents and the nonces of expired intents; returns intents removed."""
        now = int(self.clock())
        self._last_prune = now
        n = self.conn.execute("DELETE FROM indexer_intents WHERE expiry <= ?", (now,)).rowcount
        self.conn.execute("DELETE FROM indexer_nonces WHERE expiry <= ?", (now,))
        if n:
            log.info("indexer: pruned %d expired intents", n)
        return n

    def status(self) -> dict[str, Any]:
        now = int(self.clock())
        by_side = dict(self.conn.execute("SELECT side, COUNT(*) FROM indexer_intents WHERE expiry > ? GROUP BY side",
                                         (now,)).fetchall())
        (makers,) = self.conn.execute("SELECT COUNT(DISTINCT maker) FROM indexer_intents WHERE expiry > ?",
                                      (now,)).fetchone()
        return {"intents": sum(by_side.values()), "sell": by_side.get(0, 0), "buy": by_side.get(1, 0),
                "makers": makers, "accepted": self.accepted, "refused": dict(self.refused),
                "uptime_s": round(self.clock() - self.started, 3), "chainId": self.domain.chain_id,
                "verifyingContract": to_checksum(self.domain.verifying_contract), "limits": asdict(self.config)}


class IndexerService:
    """JSON-RPC in front of an ``Indexer``; the client IP comes from the TCP peer
    (a reverse proxy's X-Forwarded-For is not trusted)."""

    def __init__(self, indexer: Indexer) -> None:
        self.indexer = indexer
        methods: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "indexer_setIntent": self.set_intent, "indexer_unsetIntent": self.unset_intent,
            "indexer_getIntents": self.get_intents, "indexer_status": self.status}
        self.rpc = JsonRpcServer(methods, max_body=indexer.config.max_body, max_batch=20)

    @staticmethod
    def _error(exc: IndexerRefused) -> RpcError:
        code = UNAVAILABLE if exc.reason in _UNAVAILABLE_REASONS else REJECTED
        return RpcError(code, exc.detail or exc.reason, {"reason": exc.reason})

    async def set_intent(self, params: Any) -> Any:
        intent, signature = params_of(params, 1, 2) + [None] * (2 - len(params or []))
        try:
            return self.indexer.set_intent(intent, signature, _REMOTE.get())
        except IndexerRefused as exc:
            raise self._error(exc) from None

    async def unset_intent(self, params: Any) -> Any:
        maker_s, nonce_v, signature = params_of(params, 2, 3) + [None] * (3 - len(params or []))
        try:
            maker = parse_address(maker_s)
            nonce = json_int(nonce_v, "nonce", True)
        except (ValueError, TypeError) as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        try:
            return self.indexer.unset_intent(maker, nonce, signature, _REMOTE.get())
        except IndexerRefused as exc:
            raise self._error(exc) from None

    async def get_intents(self, params: Any) -> Any:
        p = params_of(params, 3, 5)
        try:
            grid = hex_bytes(p[0], 32, "grid")
            side = p[1]
            if side not in SIDES:
                raise ValueError("side is 'sell' or 'buy'")
            start = json_int(p[2], "interval_start")
            min_wh = json_int(p[3], "min_wh") if len(p) > 3 else 0
            limit = json_int(p[4], "limit") if len(p) > 4 else 50
            if max(start, min_wh) > _I64_MAX:
                raise ValueError("interval_start and min_wh must fit in 63 bits")
        except (ValueError, TypeError) as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        return self.indexer.get_intents(grid, side, start, min_wh, limit)

    async def status(self, params: Any) -> Any:
        params_of(params, 0, 0)
        return self.indexer.status()

    def app(self) -> web.Application:
        @web.middleware
        async def remote(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
            _REMOTE.set(request.remote or "unknown")
            return await handler(request)

        app = web.Application(client_max_size=self.rpc.max_body, middlewares=[remote])
        app.router.add_post("/", self.rpc.handle)
        return app

    async def start(self, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
        """Serve on host:port (0 = a free port); returns the runner and the bound address."""
        return await serve(self.app(), host, port)
