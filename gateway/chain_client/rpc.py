"""A JSON-RPC 2.0 client over HTTP (aiohttp), with errors mapped to errors.py.

Transport failures (connection refused or reset, timeouts, HTTP 5xx without a
JSON-RPC body, an unparseable answer) raise ``ChainUnavailable``: the caller
may retry. A JSON-RPC error object raises the most specific ``RpcError``
subclass for its code and ``data.reason``. A response whose id does not match
the request is a ``ChainUnavailable(bad_response)`` too (a confused proxy is
not a reason to believe an answer).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

import aiohttp

from .errors import BAD_RESPONSE, TIMEOUT, UNAVAILABLE, ChainUnavailable, rpc_error

log = logging.getLogger(__name__)


class JsonRpcClient:
    """One HTTP endpoint. Use as an async context manager or call ``aclose``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> JsonRpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=32, force_close=False))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        req_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": list(params)}
        session = self._get_session()
        try:
            kw: dict[str, Any] = {}
            if timeout is not None:
                kw["timeout"] = aiohttp.ClientTimeout(total=timeout)
            async with session.post(self.url, json=body, **kw) as resp:
                text = await resp.text()
                status = resp.status
        except asyncio.TimeoutError:
            raise ChainUnavailable(TIMEOUT, f"{method}: no answer from {self.url}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ChainUnavailable(UNAVAILABLE, f"{method}: {type(exc).__name__}: {exc}") from None
        try:
            doc = json.loads(text)
        except ValueError:
            if status >= 500:
                raise ChainUnavailable(UNAVAILABLE, f"{method}: HTTP {status}") from None
            raise ChainUnavailable(BAD_RESPONSE, f"{method}: HTTP {status}, not JSON: {text[:200]!r}") from None
        if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0":
            raise ChainUnavailable(BAD_RESPONSE, f"{method}: not a JSON-RPC 2.0 response: {text[:200]!r}")
        if "error" in doc and doc["error"] is not None:
            err = doc["error"]
            if not isinstance(err, dict) or not isinstance(err.get("code"), int):
                raise ChainUnavailable(BAD_RESPONSE, f"{method}: malformed error object {err!r}")
            raise rpc_error(err["code"], str(err.get("message", "")), err.get("data"))
        if doc.get("id") != req_id:
            raise ChainUnavailable(BAD_RESPONSE, f"{method}: response id {doc.get('id')!r} != {req_id}")
        if "result" not in doc:
            raise ChainUnavailable(BAD_RESPONSE, f"{method}: neither result nor error")
        return doc["result"]
