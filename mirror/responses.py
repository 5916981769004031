"""HTTP responses for content: sendfile for verified files, tailing streams for downloads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from mirror.coalesce import BlobFetch

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


class SendfileResponse(web.StreamResponse):
    """Bytes [offset, offset+count) of an open file, sent with the kernel's sendfile: the hot
    path for cache hits never copies blob bytes through Python."""

    def __init__(self, fobj: IO[bytes], offset: int, count: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fobj = fobj
        self._offset = offset
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:  # aiohttp prepares a returned response again: already sent
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            if request.method == "HEAD" or self.content_length == 0:
                return writer
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client went away")
            loop = asyncio.get_running_loop()
            assert self.content_length is not None
            try:
                n = await loop.sendfile(transport, self._fobj, self._offset, self.content_length)
                if n != self.content_length:
                    transport.abort()  # a short body must look broken, not complete
                    return writer
            except NotImplementedError:  # e.g. TLS transports: plain copies, one chunk at a time
                pos, end = self._offset, self._offset + self.content_length
                while pos < end:
                    chunk = await loop.run_in_executor(None, os.pread, self._fobj.fileno(),
                                                       min(1 << 20, end - pos), pos)
                    if not chunk:
                        raise ConnectionResetError("file shrank while sending") from None
                    await self.write(chunk)
                    pos += len(chunk)
            await super().write_eof()
            return writer
        finally:
            self._fobj.close()


def open_for_sendfile(path: Path) -> IO[bytes]:
    return open(path, "rb")


async def stream_fetch(request: web.Request, resp: web.StreamResponse, fetch: BlobFetch, fd: int,
                       start: int, end: int) -> int:
    """Send bytes [start, end] of a download in progress; returns bytes sent.

    Bytes already in the temp file go out with sendfile (no copy through Python), so twenty
    readers of one download cost little more CPU than one. If the download fails, the
    connection is cut: the client must see a broken transfer, never a clean end."""
    sent = 0
    loop = asyncio.get_running_loop()
    fobj = open(fd, "rb", closefd=False)  # noqa: SIM115 - fd closed by close_reader below
    try:
        await resp.prepare(request)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        async for offset, count in fetch.windows(start, end):
            try:
                n = await loop.sendfile(transport, fobj, offset, count)
                if n != count:  # the file was shorter than we believed: never pretend
                    raise ConnectionResetError(f"sent {n} of {count} bytes")
            except NotImplementedError:  # TLS: copy through Python instead
                pos, stop = offset, offset + count
                while pos < stop:
                    chunk = await loop.run_in_executor(None, os.pread, fd,
                                                       min(1 << 20, stop - pos), pos)
                    await resp.write(chunk)
                    pos += len(chunk)
            sent += count
    except BaseException:
        if request.transport is not None:
            request.transport.abort()
        raise
    finally:
        fobj.close()
        fetch.close_reader(fd)
    await resp.write_eof()
    return sent


async def stream_body(request: web.Request, resp: web.StreamResponse, body: AsyncIterator[bytes],
                      start: int, end: int) -> int:
    """Send bytes [start, end] of a stream that verifies itself as it ends (end < 0: to the
    end). The last piece waits until the whole body was read, i.e. verified, even for a short
    range; a failure cuts the connection."""
    sent = pos = 0
    held = b""
    try:
        await resp.prepare(request)
        async for chunk in body:
            lo, hi = pos, pos + len(chunk)
            pos = hi
            piece = chunk[max(0, start - lo):(end + 1 - lo) if end >= 0 else None] if hi > start else b""
            if piece:
                if held:
                    await resp.write(held)
                    sent += len(held)
                held = piece
        if held:
            await resp.write(held)
            sent += len(held)
    except BaseException:
        if request.transport is not None:
            request.transport.abort()
        raise
    finally:
        await body.aclose()  # type: ignore[attr-defined]
    await resp.write_eof()
    return sent
