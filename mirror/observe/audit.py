"""Audit trail: one JSON line per pull request, and the feed of the status page's history.

A line holds who (client address, authenticated user), what (upstream, repository, reference,
digest, type), how it went (status, cache result, bytes, duration) and the client's user agent.
Never a secret: no request headers other than User-Agent, and never the query string (tokens
ride there in some setups); only the path.

Writing must not stall the event loop. A write to a local file is usually fast, but it can
block on a full page cache, a slow or network disk, or stdout piped to a collector that stops
reading. So the loop only encodes the line and appends it to a buffer; one dedicated thread
writes whatever has gathered, in order, and flushes after each batch, so lines reach the file
within a moment of the request ending. If the sink falls more than MAX_PENDING bytes behind,
new lines are dropped and counted (mirror_audit_dropped_lines_total) rather than letting memory
grow without bound."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from aiohttp import web

from mirror.observe.metrics import Metrics
from mirror.observe.pullstats import PullStats
from mirror.observe.record import PULL_RECORD, PullRecord

log = logging.getLogger("mirror.observe.audit")
MAX_PENDING = 8 * 1024 * 1024
# Lines gathered this long before one write: at thousands of requests/s a write (a thread hop)
# per request cost more than the request itself; 20 ms is still "within a moment".
GATHER_SECONDS = 0.02
MAX_AGENT = 200
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLIENT_GONE = 499  # nginx's convention for "the client closed the connection first"


class AuditLog:
    def __init__(self, target: str, metrics: Metrics, max_pending: int = MAX_PENDING) -> None:
        self.target = target  # "-" for stdout, else a file path
        self._metrics = metrics
        self._max_pending = max_pending
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._file: IO[bytes] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed = False
        self._reopen = False

    def write(self, doc: dict[str, Any]) -> None:
        line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if self._pending_bytes + len(line) > self._max_pending:
            self._metrics.audit_dropped.inc()
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        self._wake.set()

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: open the sink, run the writer, flush everything at shutdown."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        loop = asyncio.get_running_loop()
        self._file = await loop.run_in_executor(self._executor, self._open_sync)
        self._task = asyncio.create_task(self._run(), name="audit writer")
        try:
            yield
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self._flush(loop)  # the last requests' lines
            await loop.run_in_executor(self._executor, self._close_sync)
            self._executor.shutdown(wait=True)

    def _open_sync(self) -> IO[bytes]:
        if self.target == "-":
            return sys.stdout.buffer
        return open(self.target, "ab")  # closed in _close_sync

    def _close_sync(self) -> None:
        if self._file is not None and self.target != "-":
            self._file.close()

    def reopen(self) -> None:
        """On SIGHUP (mirror/server.py RELOAD): after logrotate moved the file away, the
        lines that follow go to a new file at the configured path."""
        if self.target != "-":
            self._reopen = True
            self._wake.set()

    def _reopen_sync(self) -> None:
        new = self._open_sync()  # first: if this fails, lines keep going to the old file
        self._close_sync()
        self._file = new

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await asyncio.sleep(GATHER_SECONDS)
            self._wake.clear()
            if self._reopen:
                self._reopen = False
                assert self._executor is not None
                try:
                    await loop.run_in_executor(self._executor, self._reopen_sync)
                except OSError as e:
                    log.error("cannot reopen the audit log %s: %s", self.target, e)
            await self._flush(loop)

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._pending:
            data, self._pending, self._pending_bytes = b"".join(self._pending), [], 0
            assert self._executor is not None
            await loop.run_in_executor(self._executor, self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
            self._file.flush()
            self._failed = False
        except OSError as e:
            self._metrics.audit_dropped.inc(data.count(b"\n"))
            if not self._failed:  # once per outage, not once per line
                log.error("cannot write the audit log %s: %s", self.target, e)
            self._failed = True


def _error_of(resp: web.StreamResponse | None) -> tuple[str, str]:
    """(code, message) of an OCI error body the mirror wrote; its messages hold no secrets."""
    if not isinstance(resp, web.Response) or resp.status < 400:
        return "", ""
    body = resp.body
    if not isinstance(body, bytes) or len(body) > 65536:
        return "", ""
    try:
        first = json.loads(body)["errors"][0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _iso(t: float) -> str:
    # strftime per request showed in profiles; the seconds part changes once a second.
    return f"{_iso_second(int(t))}.{int(t % 1 * 1000):03d}Z"


def is_pull_path(path: str) -> bool:
    """Requests under /v2/<name>/...: the API version check `/v2/` is not a pull."""
    return path.startswith("/v2/") and len(path) > 4


def audit_middleware(stats: PullStats, audit: AuditLog | None) -> Any:
    """Outermost middleware: it sees the final status (after errors became OCI bodies) and
    the whole transfer time (handlers return once the body is sent)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_pull_path(request.path):
            return await handler(request)
        started, t0 = time.time(), time.monotonic()
        resp: web.StreamResponse | None = None
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        except (ConnectionError, asyncio.CancelledError):
            status = CLIENT_GONE
            raise
        finally:
            _observe(request, stats, audit, resp, status, started, time.monotonic() - t0)

    return middleware


def _observe(request: web.Request, stats: PullStats, audit: AuditLog | None,
             resp: web.StreamResponse | None, status: int, started: float,
             seconds: float) -> None:
    rec = request.get(PULL_RECORD) or PullRecord()
    code, message = _error_of(resp)
    result = rec.result or ("error" if status >= 400 else "")
    if rec.result == "error" and status < 400 and not code:
        code, message = "TRANSFER_CUT", "the upstream transfer failed while streaming"
    upstream = rec.route.upstream if rec.route else None
    repo = rec.route.repo if rec.route else None
    image = f"{upstream}/{repo}" if rec.route else None
    stats.observe(image=image, kind=rec.kind, method=request.method, path=request.path,
                  status=status, nbytes=rec.bytes, code=code, message=message, now=started)
    if audit is None:
        return
    audit.write({
        "time": _iso(started),
        "client": request.remote,
        "user": rec.user,
        "method": request.method,
        "path": request.path,  # never the query string
        "upstream": upstream,
        "repository": repo,
        "reference": rec.reference or None,
        "digest": rec.digest or None,
        "type": rec.kind or None,
        "status": status,
        "result": result or None,
        "bytes": rec.bytes,
        "duration_ms": round(seconds * 1000, 1),
        "agent": request.headers.get("User-Agent", "")[:MAX_AGENT] or None,
        "error": code or None,
    })
