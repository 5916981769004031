"""HTTP responses for content: sendfile for verified files, tailing streams for downloads."""

from __future__ import annotations

import asyncio
import os
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
                await loop.sendfile(transport, self._fobj, self._offset, self.content_length)
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
    """Send bytes [start, end] of a download in progress; returns bytes sent. If the download
    fails, the connection is cut: the client must see a broken transfer, not a clean end."""
    sent = 0
    chunks = fetch.stream(fd, start, end)  # owns fd from its first step on
    try:
        await resp.prepare(request)
    except BaseException:
        fetch.close_reader(fd)
        raise
    try:
        async for chunk in chunks:
            await resp.write(chunk)
            sent += len(chunk)
    except BaseException:
        if request.transport is not None:
            request.transport.abort()
        raise
    await resp.write_eof()
    return sent
