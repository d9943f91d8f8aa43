"""What stands between the pages and a hostile request: CSRF and Origin checks,
brute-force limits, security headers, and the counters operators read.

- CSRF: every state-changing request (POST) carries the session's synchronizer
  token in the form field ``csrf``, compared in constant time; a request whose
  ``Origin`` (or, without one, ``Sec-Fetch-Site``) says it comes from another
  site is refused before the token is even looked at.
- Limits: token buckets per login and per client address for sign-in, per
  account and per device for claim codes, per account for TOTP and recovery
  codes. Every attempt takes a token. Buckets and counters are kept in the
  gateway's database (``throttle.py``): a restart gives no fresh attempts.
- Headers: a CSP without inline scripts or styles, no framing, the referrer only to ourselves
  (the pairing URL carries a claim code), and ``no-store`` on every page.
- Access log: method, path without the query (which may hold a claim code),
  status; uvicorn's own access log is turned off.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

from gateway.web.config import Limits
from gateway.web.throttle import Bucket, PersistentBuckets, PersistentCounters

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.web.access")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # never to another site (a pairing URL holds a claim code); no-referrer would make browsers send "Origin: null" on our own forms
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class Refused(Exception):
    """A request refused for a security reason: ``status`` and a counter ``reason``."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class Guard:
    """The limits and counters of one web application, persistent in the gateway's database
    (``conn``: this thread's connection, tables made by ``throttle.ensure_throttle_schema``)."""

    limits: Limits
    origin: str
    conn: Callable[[], sqlite3.Connection]
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._buckets = PersistentBuckets({f.name: Bucket(*getattr(self.limits, f.name)) for f in fields(self.limits)},
                                          self.conn)
        self._counters = PersistentCounters(self.conn)

    @property
    def counters(self) -> Counter[str]:
        """Every security event so far, by reason (read from the database)."""
        return self._counters.snapshot()

    def count(self, reason: str) -> None:
        self._counters.add(reason)
        log.warning("web security event: %s", reason)

    def purge(self) -> int:
        """Forget buckets that are full again."""
        return self._buckets.purge(self.clock())

    def limit(self, name: str, key: str, what: str) -> None:
        """Take a token from bucket ``name`` for ``key`` or refuse with 429 (counted as ``<what>_rate_limited``)."""
        verdict = self._buckets.take(name, key, self.clock())
        if not verdict.allowed:
            self.count(f"{what}_rate_limited")
            wait = max(1.0, verdict.retry_after)
            raise Refused(429, f"{what}_rate_limited", f"Too many attempts. Try again in {int(wait) + 1} s.",
                          retry_after=wait)

    def check_origin(self, headers: Any) -> None:
        origin = headers.get("origin")
        if origin is not None:
            if origin.lower() != self.origin:
                self.count("csrf_bad_origin")
                raise Refused(403, "csrf_bad_origin", "This form was sent from another site.")
        elif headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
            self.count("csrf_bad_origin")
            raise Refused(403, "csrf_bad_origin", "This form was sent from another site.")

    def check_csrf(self, expected: str | None, presented: object) -> None:
        if not isinstance(presented, str) or not presented:
            self.count("csrf_missing")
            raise Refused(403, "csrf_missing", "The form has expired. Reload the page and try again.")
        if expected is None or not hmac.compare_digest(expected.encode(), presented.encode()):
            self.count("csrf_mismatch")
            raise Refused(403, "csrf_mismatch", "The form has expired. Reload the page and try again.")


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, ``no-store`` except on
    /static, HSTS on https, and the query-free access log."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        started = time.monotonic()
        status = [0]

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                           or path.startswith("/static/")]
                for k, v in SECURITY_HEADERS.items():
                    headers.append((k.encode(), v.encode()))
                if not path.startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                if self.https:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message = dict(message, headers=headers)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            access_log.info("%s %s %s %.0fms", scope.get("method"), path, status[0],
                            (time.monotonic() - started) * 1000)
