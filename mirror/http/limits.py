"""Limits that protect the mirror from its clients (config `limits`).

- Request heads: `max_header_size` bytes per request line or header field and `max_headers`
  fields, enforced by aiohttp's parser (`server_handler_args`); too much is a 400 with an OCI
  JSON body that, unlike aiohttp's own, never echoes the offending header (`QuietRequestHandler`).
- Slow clients: a connection must deliver a complete request head within `client_timeout` of
  connecting or of the previous response (aiohttp's keep-alive timer closes a connection whose
  handler is still waiting for a request), and the TLS handshake must finish in that time too.
  A slow *reader* of a large blob is not cut: that is a slow network, not an attack. A client
  that stops reading is: once the response waits on it (the transport paused writing) and no
  byte leaves for `send_timeout`, the connection is aborted, and with it the response's file
  descriptors, mappings and pins (`QuietRequestHandler`).
- Connections: at most `max_connections` open at once, and `max_connections_per_client` from
  one address (`ConnectionGate`); one more is answered 503 and closed right away, so a client
  sees a clear error instead of a hang, and one address cannot take every connection.
- Requests: optionally a token bucket per client address (`RateLimiter`): `rate` per second,
  `burst` at once; beyond it 429 TOOMANYREQUESTS with Retry-After. Health probes are exempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from cachetools import LRUCache
from prometheus_client import CollectorRegistry, Counter

from mirror.config import LimitsConfig, RateLimitConfig
from mirror.oci.apipath import API_VERSION_HEADER
from mirror.oci.errors import TooManyRequests

log = logging.getLogger("mirror.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
MAX_TRACKED_CLIENTS = 65536


def server_handler_args(limits: LimitsConfig) -> dict[str, Any]:
    """Arguments for aiohttp's per-connection RequestHandler (web.Application handler_args)."""
    return {
        "max_line_size": limits.max_header_size,
        "max_field_size": limits.max_header_size,
        "max_headers": limits.max_headers,
        "keepalive_timeout": limits.client_timeout,
    }


class TokenBucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now


class RateLimiter:
    """One token bucket per client key. Pure apart from the clock, which tests may pass."""

    def __init__(self, config: RateLimitConfig, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = config.rate
        self.burst = float(config.burst)
        self._clock = clock
        # Bounded: an address not seen for a while is forgotten, i.e. starts with a full bucket.
        self._buckets: LRUCache[str, TokenBucket] = LRUCache(MAX_TRACKED_CLIENTS)
        self.limited = Counter("mirror_rate_limited", "Requests refused by the per-client rate "
                               "limit", registry=registry)

    def take(self, key: str) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def rate_limit_middleware(limiter: RateLimiter) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in EXEMPT_PATHS:
            wait = limiter.take(request.remote or "unknown")
            if wait > 0:
                limiter.limited.inc()
                err = TooManyRequests("too many requests from this address; slow down")
                headers = {**API_VERSION_HEADER, "Retry-After": str(max(1, math.ceil(wait)))}
                return web.json_response(err.body(), status=err.status, headers=headers)
        return await handler(request)

    return middleware


_OVERLOADED_BODY = json.dumps({"errors": [{"code": "UNAVAILABLE",
                                           "message": "too many connections; retry shortly"}]})
OVERLOADED_RESPONSE = (
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json\r\n"
    "Docker-Distribution-API-Version: registry/2.0\r\n"
    "Retry-After: 1\r\n"
    "Connection: close\r\n"
    f"Content-Length: {len(_OVERLOADED_BODY)}\r\n\r\n{_OVERLOADED_BODY}"
).encode()


class _Overloaded(asyncio.Protocol):
    """Answers 503 at once and closes: the connection is over the limit."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(OVERLOADED_RESPONSE)
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer is the same whatever it is


class QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, minus one leak: for a request it cannot parse (a header
    too long, a bad character) aiohttp writes the offending bytes into its log line and into the
    400 body, and those bytes may be an Authorization header. Here the client gets an OCI JSON
    400 and the log gets the error's class name only.

    Plus two limits from the gate: the connection is refused (503) when its address has too many
    open already, and aborted when a response waits on a client that takes no bytes for
    `send_timeout` (writing paused, and the transport's buffer not shrinking)."""

    def __init__(self, gate: ConnectionGate, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate
        self._peer: str | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._unsent = 0  # bytes in the transport's buffer at the last look
        self._progress_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._gate.admit(self._peer):
            self._peer = None
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(OVERLOADED_RESPONSE)
            transport.close()
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._peer is not None:
            self._gate.leave(self._peer)
            self._peer = None
        self._stop_watch()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._progress_at = self._loop.time()
        self._unsent = self._buffered()
        self._stall_timer = self._loop.call_later(self._gate.check_interval, self._check_stall)

    def resume_writing(self) -> None:
        self._stop_watch()
        super().resume_writing()

    def _buffered(self) -> int:
        t = self.transport
        return t.get_write_buffer_size() if t is not None and not t.is_closing() else 0

    def _stop_watch(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _check_stall(self) -> None:
        # Writing is paused, so nothing is added to the buffer meanwhile: any shrink is bytes
        # the client took.
        now, unsent = self._loop.time(), self._buffered()
        if unsent < self._unsent:
            self._unsent, self._progress_at = unsent, now
        elif now - self._progress_at >= self._gate.send_timeout:
            self._stall_timer = None
            self._gate.send_timeouts.inc()
            log.info("aborting a response to %s: no byte taken for %.0fs", self._peer or "a client",
                     now - self._progress_at)
            if self.transport is not None:
                self.transport.abort()  # the writer's drain fails; its handler cleans up
            return
        self._stall_timer = self._loop.call_later(self._gate.check_interval, self._check_stall)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        log.info("unparsable request from %s: %s", request.remote, type(exc).__name__)
        text = ("request head too large" if isinstance(exc, LineTooLong)
                else "malformed HTTP request")
        resp = web.json_response({"errors": [{"code": "UNKNOWN", "message": text}]},
                                 status=status, headers=API_VERSION_HEADER)
        resp.force_close()
        return resp


class ConnectionGate:
    """Protocol factory in front of aiohttp's server: makes QuietRequestHandlers and, with a
    limit, counts open connections with the server's own bookkeeping. Connections still in
    their TLS handshake are not counted yet; `client_timeout` bounds how long they can stay in
    that state."""

    def __init__(self, server: web.Server, limits: LimitsConfig,
                 registry: CollectorRegistry) -> None:
        self._server = server
        self.max_connections = limits.max_connections
        self.per_client = limits.max_connections_per_client
        self.send_timeout = limits.send_timeout
        self.check_interval = max(0.05, limits.send_timeout / 4)
        self._open: dict[str, int] = {}  # client address -> connections open
        self.rejected = Counter("mirror_connections_rejected", "Connections refused because "
                                "limits.max_connections (or max_connections_per_client from "
                                "one address) were open", registry=registry)
        self.send_timeouts = Counter("mirror_send_timeouts", "Responses aborted because the "
                                     "client took no bytes for limits.send_timeout",
                                     registry=registry)

    def __call__(self) -> asyncio.BaseProtocol:
        if self.max_connections is not None and len(self._server.connections) >= self.max_connections:
            self.rejected.inc()
            return _Overloaded()
        # The same arguments aiohttp's Server.__call__ passes (handler_args included).
        return QuietRequestHandler(self, self._server, loop=asyncio.get_running_loop(),
                                   **self._server._kwargs)

    def admit(self, address: str) -> bool:
        """Count a connection from `address` as it starts, or refuse it (False): its address
        has enough, or every slot is taken. The second look at the total is exact where the one
        in __call__ is not: the loop accepts a burst of connections (calling the factory for
        each) before any of them starts and is counted."""
        n = self._open.get(address, 0)
        full = (self.max_connections is not None
                and len(self._server.connections) >= self.max_connections)
        if full or (self.per_client is not None and n >= self.per_client):
            self.rejected.inc()
            return False
        self._open[address] = n + 1
        return True

    def leave(self, address: str) -> None:
        n = self._open.get(address, 0) - 1
        if n > 0:
            self._open[address] = n
        else:
            self._open.pop(address, None)
