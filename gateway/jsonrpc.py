"""JSON-RPC 2.0 over HTTP (aiohttp), defined once for every gateway service.

The validator's chain API, the market's Peer, Indexer and Oracle all speak it:
``POST /`` with one request object or a batch array; positional params (an
array) or none. A service supplies ``{method name: async fn(params)}``; the
dispatcher does the envelope, the error objects and the limits, and never
lets one bad request take the service down.

Errors: -32700 parse error, -32600 invalid request, -32601 unknown method,
-32602 bad params, -32603 internal; services add their own codes in the
-32000..-32099 range, with the specific reason in ``data.reason``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL = -32700, -32600, -32601, -32602, -32603

Method = Callable[[Any], Awaitable[Any]]


class RpcError(Exception):
    """An error object for the response: code, message, optional data (e.g. {"reason": ...})."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def params_of(params: Any, n_min: int, n_max: int) -> list[Any]:
    """Positional params with an arity check (INVALID_PARAMS otherwise)."""
    p = [] if params is None else params
    if not isinstance(p, list) or not n_min <= len(p) <= n_max:
        want = f"{n_min}" if n_min == n_max else f"{n_min}..{n_max}"
        raise RpcError(INVALID_PARAMS, f"expected {want} positional params")
    return p


class JsonRpcServer:
    """Dispatches JSON-RPC 2.0 requests to ``methods``; ``on_error(code)`` counts errors."""

    def __init__(self, methods: dict[str, Method], *, max_body: int = 1 << 20, max_batch: int = 100,
                 on_error: Callable[[int], None] | None = None) -> None:
        self.methods = methods
        self.max_body = max_body
        self.max_batch = max_batch
        self.on_error = on_error or (lambda _code: None)

    async def call(self, req: Any) -> dict[str, Any] | None:
        rid = req.get("id") if isinstance(req, dict) else None
        if isinstance(rid, (dict, list, float, bool)):
            rid = None
        try:
            if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str) \
                    or ("id" in req and isinstance(req["id"], (dict, list, bool))):
                raise RpcError(INVALID_REQUEST, "not a JSON-RPC 2.0 request")
            fn = self.methods.get(req["method"])
            if fn is None:
                raise RpcError(METHOD_NOT_FOUND, f"unknown method {req['method']!r}")
            params = req.get("params")
            if params is not None and not isinstance(params, list):
                raise RpcError(INVALID_PARAMS, "params must be an array")
            result = await fn(params)
            if "id" not in req:
                return None  # a notification
            return {"jsonrpc": "2.0", "id": rid, "result": result}
        except RpcError as exc:
            err: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                err["data"] = exc.data
            self.on_error(exc.code)
            return {"jsonrpc": "2.0", "id": rid, "error": err}
        except Exception as exc:  # never crash the service on one request
            log.exception("rpc %r failed", req.get("method") if isinstance(req, dict) else req)
            self.on_error(INTERNAL)
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL, "message": f"internal error: {exc}"}}

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.on_error(INVALID_REQUEST)
            return _json({"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST,
                                                                  "message": "body too large"}}, 413)
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.on_error(PARSE_ERROR)
            return _json({"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "parse error"}})
        if isinstance(req, list):
            if not req or len(req) > self.max_batch:
                self.on_error(INVALID_REQUEST)
                return _json({"jsonrpc": "2.0", "id": None, "error": {
                    "code": INVALID_REQUEST, "message": f"a batch holds 1..{self.max_batch} requests"}})
            out = [r for r in [await self.call(x) for x in req] if r is not None]
            return _json(out) if out else web.Response(status=204)
        res = await self.call(req)
        return _json(res) if res is not None else web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post("/", self.handle)
        return app

    async def start(self, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
        """Serve on host:port (0 = a free port); returns the runner (``await runner.cleanup()``) and the address."""
        return await serve(self.app(), host, port)


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    """Serve ``app`` on host:port (0 = a free port): the runner (``await runner.cleanup()``) and the bound address."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    addr = sock.getsockname()[:2]
    return runner, (addr[0], addr[1])


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")
