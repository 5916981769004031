"""RecordingProxy: a streaming reverse proxy that records requests and injects faults.

Put it between the mirror and an upstream (or between a client and the mirror) to see
exactly what crossed the wire, and to make the upstream misbehave on demand.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._loop import LoopThread
from .recording import RecordedRequest, Recorder, classify

FaultMode = Literal["reset", "truncate", "corrupt", "stall", "slow", "status", "refuse"]
BODY_MODES = frozenset({"reset", "truncate", "corrupt", "stall", "slow"})

# RFC 9110 7.6.1: these describe one connection, so a proxy must not forward them.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CHUNK = 64 * 1024


@dataclass
class Fault:
    """What to break, and for which requests.

    mode:
      reset     send `offset` body bytes, then close the connection with a TCP RST
      truncate  send the upstream's Content-Length but only `offset` body bytes, then FIN
      corrupt   flip (xor 0xff) the body byte at `offset`; length unchanged
      stall     send `offset` bytes, pause `seconds`, then send the rest
      slow      send the body at `rate` bytes/s
      status    answer `status` with `headers` and `body` (default empty), upstream untouched
      refuse    close the connection (FIN) without any response, upstream untouched
    match:  substring the request path must contain (e.g. "/blobs/"); None = every path
    method: only this method (e.g. "GET"); None = any. Body modes never apply to HEAD.
    count:  only the first `count` matching requests; None = all of them
    """

    mode: FaultMode
    offset: int = 0
    seconds: float = 0.0
    rate: int = 1 << 20
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    match: str | None = None
    method: str | None = None
    count: int | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.match is not None and self.match not in path:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return not (self.mode in BODY_MODES and method == "HEAD")


def forwardable(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Copy of `headers` without hop-by-hop ones (also those named in Connection)."""
    named = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in HOP_BY_HOP and k.lower() not in named:
            out.add(k, v)
    return out


class RecordingProxy(Recorder):
    """Reverse proxy from http://127.0.0.1:<port> to `target` ("http://host:port").

    Runs on its own thread and loop, so it works from sync tests, async tests and for
    subprocesses. Bodies are streamed in 64 KiB pieces both ways; status and headers pass
    through unchanged except hop-by-hop headers. Host is forwarded as the client sent it,
    so a registry builds upload Locations that point back at the tap. Redirects are passed
    to the client, never followed, and bodies are never decompressed.
    """

    def __init__(self, target: str, *, name: str = "tap") -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self._fault: Fault | None = None
        self._fault_lock = threading.Lock()
        self.fault_hits = 0  # how many requests a fault was applied to since set_fault
        self._session: aiohttp.ClientSession | None = None
        self._thread = LoopThread(f"{name}-{self.target}")
        self.port = self._thread.call(self._start())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,  # pass gzip bodies through byte for byte
            # Only forward what the client sent: no default UA/Accept/Content-Type added.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0),
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return await self._thread.serve(app)

    # -- faults --------------------------------------------------------------------------

    def set_fault(self, fault: Fault) -> None:
        with self._fault_lock:
            self._fault = replace(fault)  # private copy: count is decremented as it fires
            self.fault_hits = 0

    def clear_fault(self) -> None:
        with self._fault_lock:
            self._fault = None

    def _claim_fault(self, method: str, path: str) -> Fault | None:
        with self._fault_lock:
            f = self._fault
            if f is None or not f.matches(method, path):
                return None
            if f.count is not None:
                if f.count <= 0:
                    return None
                f.count -= 1
            self.fault_hits += 1
            return f

    # -- proxying ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=tuple(request.headers.items()),
                kind=classify(request.path),
            )
        )
        try:
            return await self._proxy(request, rec)
        finally:
            rec.finished = time.monotonic()
            rec.done = True

    async def _proxy(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        fault = self._claim_fault(request.method, request.path)
        if fault is not None:
            rec.fault = fault.mode
        if fault is not None and fault.mode == "refuse":
            _close(request, rst=False)
            return web.Response()  # never sent: the transport is gone
        if fault is not None and fault.mode == "status":
            rec.status = fault.status
            rec.bytes_sent = len(fault.body)
            return web.Response(status=fault.status, body=fault.body, headers=fault.headers)

        headers = forwardable(request.headers)
        url = URL(self.target + request.raw_path, encoded=True)
        assert self._session is not None
        try:
            up = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except aiohttp.ClientError as e:
            rec.status, rec.error = 502, f"upstream: {e!r}"
            return web.Response(status=502, text=f"tap: upstream unreachable: {e}\n")
        async with up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            resp.headers.extend(forwardable(up.headers))
            rec.status = up.status
            await resp.prepare(request)
            try:
                async for chunk in up.content.iter_chunked(CHUNK):
                    if not await self._send(request, resp, rec, chunk, fault):
                        return resp
            except (ConnectionError, aiohttp.ClientError) as e:
                rec.error = repr(e)  # client went away, or the upstream broke off
                _close(request, rst=False)
                return resp
        return resp

    async def _send(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        rec: RecordedRequest,
        chunk: bytes,
        fault: Fault | None,
    ) -> bool:
        """Write one chunk, applying the fault. False once the connection has been closed."""
        start = rec.bytes_sent
        mode = fault.mode if fault else None
        if fault is not None and mode == "corrupt" and start <= fault.offset < start + len(chunk):
            i = fault.offset - start
            chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
        if fault is not None and mode in ("reset", "truncate", "stall"):
            cut = fault.offset - start
            if 0 <= cut < len(chunk):
                await self._write(resp, rec, chunk[:cut])
                if mode == "stall":
                    await asyncio.sleep(fault.seconds)
                    await self._write(resp, rec, chunk[cut:])
                    return True
                _close(request, rst=mode == "reset")
                return False
        if fault is not None and mode == "slow":
            step = max(1, fault.rate // 20)  # ~20 small writes per second, each then a pause
            for off in range(0, len(chunk), step):
                piece = chunk[off : off + step]
                await self._write(resp, rec, piece)
                await asyncio.sleep(len(piece) / fault.rate)
            return True
        await self._write(resp, rec, chunk)
        return True

    @staticmethod
    async def _write(resp: web.StreamResponse, rec: RecordedRequest, data: bytes) -> None:
        if data:
            # Count before the write: once the client has the bytes, the log already has them.
            rec.bytes_sent += len(data)
            await resp.write(data)

    def stop(self) -> None:
        async def close_session() -> None:
            if self._session is not None:
                await self._session.close()

        self._thread.close(close_session())

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _close(request: web.Request, *, rst: bool) -> None:
    """Close the client connection: RST (SO_LINGER 0) for resets, else a FIN after the
    bytes already written are flushed."""
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()
