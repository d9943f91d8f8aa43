"""The Peer: a maker household's RFQ endpoint (AirSwap's RFQ shape, adapted to energy).

JSON-RPC 2.0 over HTTP (``gateway.jsonrpc``), ``POST /``. Every method takes
one positional param, an object (the shared dispatcher takes arrays only)::

    {"jsonrpc": "2.0", "id": 1, "method": "getSenderSideOrder",
     "params": [{"grid": "gangnam-1", "intervalStart": 1767225600, "wh": 500,
                 "taker": "0x0", "chainId": 31337, "verifyingContract": "0x5fbd..."}]}

- ``getSenderSideOrder``: the taker names the Wh it wants (the maker's,
  "signer", side); the maker answers with a signed order and the NOIA price.
- ``getSignerSideOrder``: the taker names the NOIA it pays (its own, "sender",
  side), optionally with the Wh it wants for it; the maker answers with a
  signed order for the Wh that buys at its price.
- ``getMaxQuote``: the most Wh the maker will sell for the interval right now,
  and its price (unsigned, commits nothing).

A signed answer is the full EIP-712 order (``gateway.validator.order``) and its
signature, which ``order_signer`` recovers to the maker. Nonces come from
``NonceStore`` (never repeated across restarts); expiry is ``ttl_s`` (60 s),
never past the interval's start. The maker never signs more Wh for an
interval than its ``Inventory`` allows minus its outstanding unexpired
quotes (``Outstanding``). Errors carry ``data.reason`` (``REASONS``); see
docs/peer.md for the whole protocol.
"""

from __future__ import annotations

import contextvars
import logging
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.jsonrpc import INVALID_PARAMS, INVALID_REQUEST, JsonRpcServer, Method, RpcError, params_of, serve
from gateway.validator.crypto import ZERO_ADDRESS, parse_address, to_checksum
from gateway.validator.order import U64_MAX, U256_MAX, Domain, Order, SignedOrder, grid_id

from .commitments import Commitment, Outstanding
from .nonces import NonceStore
from .quote import FixedInventory, FixedPricer, Inventory, KeySigner, OrderSigner, Pricer, SignerRefused
from .ratelimit import RateLimiter

__all__ = ["PeerConfig", "Peer", "PeerError", "REASONS", "OrderSigner", "Pricer", "Inventory", "KeySigner",
           "FixedPricer", "FixedInventory", "SignerRefused", "order_json"]

log = logging.getLogger(__name__)

# reason -> JSON-RPC error code (the dispatcher's own: -32700 parse, -32600 request, -32601 method)
BAD_PARAMS = "bad_params"
INTERVAL_PAST, INTERVAL_TOO_FAR, INTERVAL_MISALIGNED = "interval_past", "interval_too_far", "interval_misaligned"
WH_OUT_OF_RANGE, UNDERPRICED, OVER_COMMIT = "wh_out_of_range", "underpriced", "over_commit"
WRONG_DOMAIN, WRONG_GRID = "wrong_domain", "wrong_grid"
RATE_LIMITED, OVERSIZED, SIGNER_REFUSED = "rate_limited", "oversized", "signer_refused"
REASONS: dict[str, int] = {
    BAD_PARAMS: INVALID_PARAMS,
    INTERVAL_PAST: -32010, INTERVAL_TOO_FAR: -32010, INTERVAL_MISALIGNED: -32010,
    WH_OUT_OF_RANGE: -32011,
    UNDERPRICED: -32012,
    OVER_COMMIT: -32013,
    WRONG_DOMAIN: -32014, WRONG_GRID: -32014,
    RATE_LIMITED: -32015,
    SIGNER_REFUSED: -32016,
    OVERSIZED: INVALID_REQUEST,
}

_REMOTE: contextvars.ContextVar[str] = contextvars.ContextVar("peer_remote", default="?")
_KEYS = frozenset({"grid", "intervalStart", "wh", "noia", "taker", "chainId", "verifyingContract"})


class PeerError(RpcError):
    """A refused request: ``reason`` (a key of ``REASONS``) and a human message; ``data`` = {"reason", ...}."""

    def __init__(self, reason: str, message: str, **extra: Any) -> None:
        super().__init__(REASONS[reason], message, {"reason": reason, **extra})
        self.reason = reason


@dataclass(frozen=True)
class PeerConfig:
    grid: str                     # the grid's name; orders carry grid_id(grid)
    domain: Domain                # chain id + verifying contract the orders are signed for
    interval_s: int = 900         # delivery interval length; intervalStart must be a multiple
    horizon_s: int = 86_400       # how far ahead an interval may start
    ttl_s: int = 60               # order lifetime (capped at the interval's start)
    min_wh: int = 1               # smallest quote
    max_wh: int = 1_000_000       # largest single quote (1 MWh)
    expiry_grace_s: float = 5.0   # an outstanding quote counts until expiry + grace
    ip_rate: float = 20.0         # quote requests per second per client IP (0: no limit)
    ip_burst: int = 40
    taker_rate: float = 5.0       # per taker address (0x0 takers: the IP limit only)
    taker_burst: int = 10
    max_body: int = 4096          # bytes per HTTP request
    max_batch: int = 4            # requests per JSON-RPC batch (each is rate limited)

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.horizon_s <= 0 or self.ttl_s <= 0 or not 1 <= self.min_wh <= self.max_wh:
            raise ValueError("interval_s, horizon_s, ttl_s > 0 and 1 <= min_wh <= max_wh")


@dataclass(frozen=True)
class _Req:
    interval_start: int
    taker: bytes
    wh: int | None
    noia: int | None


def order_json(signed: SignedOrder, domain: Domain) -> dict[str, Any]:
    """The answer's order part: every EIP-712 field (uint256 as decimal strings), signature, domain."""
    o, sig = signed.order, signed.signature
    return {
        "order": {"nonce": str(o.nonce), "expiry": o.expiry, "maker": to_checksum(o.maker),
                  "taker": to_checksum(o.taker), "wh": o.wh, "intervalStart": o.interval_start,
                  "noia": str(o.noia), "grid": "0x" + o.grid.hex()},
        "signature": {"r": "0x" + sig[:32].hex(), "s": "0x" + sig[32:64].hex(), "v": sig[64]},
        "domain": domain.typed_data_domain(),
        "encoded": "0x" + signed.encode().hex(),
    }


def _uint(v: Any, name: str, hi: int) -> int:
    """A JSON integer or a decimal string of one, in 0..hi."""
    if isinstance(v, bool):
        raise PeerError(BAD_PARAMS, f"{name} must be an integer")
    if isinstance(v, str):
        if not (0 < len(v) <= 78 and v.isascii() and v.isdigit()):
            raise PeerError(BAD_PARAMS, f"{name} must be a decimal integer")
        v = int(v)
    if not isinstance(v, int):
        raise PeerError(BAD_PARAMS, f"{name} must be an integer")
    if not 0 <= v <= hi:
        raise PeerError(BAD_PARAMS, f"{name} out of range")
    return v


def _address(v: Any, name: str) -> bytes:
    if v == "0x0":
        return ZERO_ADDRESS
    try:
        return parse_address(v)
    except ValueError:
        raise PeerError(BAD_PARAMS, f"{name} must be 0x + 40 hex digits (EIP-55 if mixed case)") from None


class Peer:
    """One maker's quoting endpoint. ``app()``/``start()`` serve it; the methods are plain coroutines too."""

    def __init__(self, config: PeerConfig, signer: OrderSigner, pricer: Pricer, inventory: Inventory,
                 nonces: NonceStore, *, clock: Callable[[], float] = time.time) -> None:
        if nonces.maker != signer.maker:
            raise ValueError("the nonce store belongs to another maker")
        self.config = config
        self.signer = signer
        self.pricer = pricer
        self.inventory = inventory
        self.nonces = nonces
        self.clock = clock
        self.maker = signer.maker
        self.maker_hex = to_checksum(signer.maker)
        self.grid = grid_id(config.grid)
        self.grid_hex = "0x" + self.grid.hex()
        self.outstanding = Outstanding(config.expiry_grace_s)
        self.ip_limit = RateLimiter(config.ip_rate, config.ip_burst)
        self.taker_limit = RateLimiter(config.taker_rate, config.taker_burst)
        self.errors: Counter[str] = Counter()  # refusals by reason
        self.rpc_errors: Counter[int] = Counter()  # every error response by JSON-RPC code (the dispatcher's too)
        self.quotes = 0
        self._service = array("d", bytes(8 * 65_536))  # seconds per HTTP request handled, the last 65,536
        self._served = 0

    # -- the protocol -------------------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        return {"getSenderSideOrder": self.get_sender_side_order, "getSignerSideOrder": self.get_signer_side_order,
                "getMaxQuote": self.get_max_quote}

    async def get_sender_side_order(self, params: Any) -> dict[str, Any]:
        """The taker wants ``wh``: sign an order for it at the maker's price."""
        now = self.clock()
        req = self._request(params, now, need="wh")
        wh = self._wh_in_range(req.wh)
        price = self._price(req.interval_start, wh)
        return self._sign(req, wh, wh * price, price, now)

    async def get_signer_side_order(self, params: Any) -> dict[str, Any]:
        """The taker pays ``noia`` (for ``wh`` if given): sign an order for the Wh that buys."""
        now = self.clock()
        req = self._request(params, now, need="noia")
        noia = req.noia
        assert noia is not None
        price = self._price(req.interval_start, req.wh)
        if req.wh is None:
            wh = noia // price
            if wh < self.config.min_wh:
                raise self._fail(PeerError(UNDERPRICED, "the offer buys less than the smallest quote",
                                           pricePerWh=str(price), minNoia=str(self.config.min_wh * price)))
            wh = self._wh_in_range(wh)
        else:
            wh = self._wh_in_range(req.wh)
            if noia < wh * price:
                raise self._fail(PeerError(UNDERPRICED, "the offer is below the maker's price",
                                           pricePerWh=str(price), minNoia=str(wh * price)))
        return self._sign(req, wh, noia, price, now)

    async def get_max_quote(self, params: Any) -> dict[str, Any]:
        """The most Wh on offer for the interval now, and its price (unsigned; commits nothing)."""
        now = self.clock()
        req = self._request(params, now, need=None)
        available = max(0, self.inventory.available_wh(req.interval_start)
                        - self.outstanding.committed(req.interval_start, now))
        wh = min(available, self.config.max_wh)
        if wh < self.config.min_wh:
            wh = 0
        price = self._price(req.interval_start, wh or None)
        return {"maker": self.maker_hex, "grid": self.grid_hex, "intervalStart": req.interval_start,
                "wh": wh, "noia": str(wh * price), "pricePerWh": str(price), "minWh": self.config.min_wh,
                "maxWh": self.config.max_wh}

    # -- checks -------------------------------------------------------------------------------

    def _fail(self, err: PeerError) -> PeerError:
        self.errors[err.reason] += 1
        log.debug("refused %s from %s: %s", err.reason, _REMOTE.get(), err.message)
        return err

    def _request(self, params: Any, now: float, need: str | None) -> _Req:
        cfg = self.config
        ip = _REMOTE.get()
        if not self.ip_limit.allow(ip, now):
            raise self._fail(PeerError(RATE_LIMITED, "too many requests from this address",
                                       retryAfter=round(self.ip_limit.retry_after(ip), 3)))
        try:
            (p,) = params_of(params, 1, 1)
        except RpcError as exc:
            raise self._fail(PeerError(BAD_PARAMS, exc.message + " (one object)")) from None
        if not isinstance(p, dict):
            raise self._fail(PeerError(BAD_PARAMS, "params[0] must be an object"))
        unknown = p.keys() - _KEYS
        if unknown:
            raise self._fail(PeerError(BAD_PARAMS, f"unknown param(s): {', '.join(sorted(map(str, unknown)))}"))
        try:
            for key in ("grid", "intervalStart", "chainId", "verifyingContract") + ((need,) if need else ()):
                if key not in p:
                    raise PeerError(BAD_PARAMS, f"missing param {key!r}")
            if need is None and ("wh" in p or "noia" in p):
                raise PeerError(BAD_PARAMS, "getMaxQuote takes no amount")
            if need == "wh" and "noia" in p:
                raise PeerError(BAD_PARAMS, "getSenderSideOrder takes wh, not noia")
            chain_id = _uint(p["chainId"], "chainId", U256_MAX)
            contract = _address(p["verifyingContract"], "verifyingContract")
            grid = p["grid"]
            if not isinstance(grid, str) or not 0 < len(grid) <= 256:
                raise PeerError(BAD_PARAMS, "grid must be the grid's name or its 0x bytes32 id")
            start = _uint(p["intervalStart"], "intervalStart", U64_MAX)
            taker = _address(p["taker"], "taker") if "taker" in p else None
            if taker is None and need is not None:
                raise PeerError(BAD_PARAMS, "missing param 'taker' (0x0 for anyone)")
            wh = _uint(p["wh"], "wh", U256_MAX) if "wh" in p else None
            noia = _uint(p["noia"], "noia", U256_MAX) if "noia" in p else None
            if noia == 0:
                raise PeerError(BAD_PARAMS, "noia must be > 0")
            if chain_id != cfg.domain.chain_id or contract != cfg.domain.verifying_contract:
                raise PeerError(WRONG_DOMAIN, "this maker signs for another chain or contract",
                                chainId=cfg.domain.chain_id,
                                verifyingContract=to_checksum(cfg.domain.verifying_contract))
            if grid != cfg.grid and grid.lower() != self.grid_hex:
                raise PeerError(WRONG_GRID, "this maker trades on another grid", grid=cfg.grid)
            if start % cfg.interval_s:
                raise PeerError(INTERVAL_MISALIGNED, f"intervalStart must be a multiple of {cfg.interval_s}")
            if start <= now:
                raise PeerError(INTERVAL_PAST, "the interval has started or is over")
            if start > now + cfg.horizon_s:
                raise PeerError(INTERVAL_TOO_FAR, f"the interval starts more than {cfg.horizon_s} s ahead")
        except PeerError as err:
            raise self._fail(err) from None
        if taker is not None and taker != ZERO_ADDRESS:
            key = taker.hex()
            if not self.taker_limit.allow(key, now):
                raise self._fail(PeerError(RATE_LIMITED, "too many requests for this taker",
                                           retryAfter=round(self.taker_limit.retry_after(key), 3)))
        return _Req(start, taker if taker is not None else ZERO_ADDRESS, wh, noia)

    def _wh_in_range(self, wh: int | None) -> int:
        assert wh is not None
        if not self.config.min_wh <= wh <= self.config.max_wh:
            raise self._fail(PeerError(WH_OUT_OF_RANGE, f"wh must be in {self.config.min_wh}..{self.config.max_wh}",
                                       minWh=self.config.min_wh, maxWh=self.config.max_wh))
        return wh

    def _price(self, interval_start: int, wh: int | None) -> int:
        price = self.pricer.price("sell", interval_start, wh)
        if not 0 < price <= U256_MAX:
            raise RuntimeError(f"pricer returned {price!r}")
        return price

    def _sign(self, req: _Req, wh: int, noia: int, price: int, now: float) -> dict[str, Any]:
        if noia > U256_MAX:
            raise self._fail(PeerError(WH_OUT_OF_RANGE, "the price of this many Wh overflows uint256"))
        committed = self.outstanding.committed(req.interval_start, now)
        available = self.inventory.available_wh(req.interval_start) - committed
        if wh > available:
            raise self._fail(PeerError(OVER_COMMIT, "more Wh than the maker can still commit for the interval",
                                       availableWh=max(0, available)))
        expiry = min(int(now) + self.config.ttl_s, req.interval_start)
        order = Order(nonce=self.nonces.next(), expiry=expiry, maker=self.maker, taker=req.taker, wh=wh,
                      interval_start=req.interval_start, noia=noia, grid=self.grid)
        try:
            sig = self.signer.sign(order, self.config.domain)
        except SignerRefused as exc:
            raise self._fail(PeerError(SIGNER_REFUSED, f"the maker's signer refused: {exc.reason}",
                                       signerReason=exc.reason)) from None
        self.outstanding.add(Commitment(order.nonce, order.interval_start, wh, expiry))
        self.quotes += 1
        out = order_json(SignedOrder(order, sig), self.config.domain)
        out["pricePerWh"] = str(price)
        return out

    def stats(self) -> dict[str, Any]:
        """Counters and the service time (body read to answer built, in this process) of recent requests."""
        n = min(self._served, len(self._service))
        times = sorted(self._service[:n])

        def pick(q: float) -> float:
            return round(times[min(n - 1, int(q * (n - 1)))] * 1000.0, 3) if n else 0.0
        return {"quotes": self.quotes, "outstanding": len(self.outstanding), "requests": self._served,
                "refused": dict(self.errors), "errorCodes": {str(k): v for k, v in self.rpc_errors.items()},
                "serviceMs": {"p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)}}

    def release(self, nonce: int) -> bool:
        """The maker agent saw this quote filled (and lowered the inventory) or cancelled."""
        return self.outstanding.release(nonce)

    # -- HTTP ---------------------------------------------------------------------------------

    def _on_rpc_error(self, code: int) -> None:
        self.rpc_errors[code] += 1

    def app(self) -> web.Application:
        cfg = self.config
        server = JsonRpcServer(self.methods(), max_body=cfg.max_body, max_batch=cfg.max_batch,
                               on_error=self._on_rpc_error)

        async def handle(request: web.Request) -> web.Response:
            if request.content_length is not None and request.content_length > cfg.max_body:
                self.errors[OVERSIZED] += 1
                return web.json_response({"jsonrpc": "2.0", "id": None, "error": {
                    "code": INVALID_REQUEST, "message": f"body over {cfg.max_body} bytes",
                    "data": {"reason": OVERSIZED}}}, status=413)
            token = _REMOTE.set(request.remote or "?")
            t0 = time.perf_counter()
            try:
                return await server.handle(request)
            finally:
                _REMOTE.reset(token)
                self._service[self._served % len(self._service)] = time.perf_counter() - t0
                self._served += 1

        app = web.Application(client_max_size=cfg.max_body)
        app.router.add_post("/", handle)
        return app

    async def start(self, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
        """Serve on host:port (0: a free port); returns the runner (``await runner.cleanup()``) and the address."""
        runner, addr = await serve(self.app(), host, port)
        log.info("peer for maker %s on %s:%d (grid %s, chain %d)", self.maker_hex, addr[0], addr[1],
                 self.config.grid, self.config.domain.chain_id)
        return runner, (addr[0], addr[1])
