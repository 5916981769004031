"""A probe, not a cache: how fast a cold layer could go through this machine if the body never
passed through Python objects. `bench.cold --only mirror zerocopy distribution` runs it beside
the others.

    python -m bench.zerocopy PORT UPSTREAM_PORT DIR

One GET at a time per connection, plain HTTP, Content-Length bodies only, no coalescing, no
metrics, no Range, no resume: it keeps only what the mirror's guarantees cost on the path.
The upstream's body is received straight into page-aligned 2 MiB buffers (a BufferedProtocol:
no bytes object per read, no HTTP parser copy); each full buffer is hashed on one thread and
written O_DIRECT from the same memory on another (no copy into a staging buffer), and sent to
the client from it; the last buffer is held until SHA-256 matches the digest, then the file is
fsynced and renamed into DIR. Four buffers: reading pauses when all are in use.

What it showed (bench/README.md, issue 17 session 7): 922 MB/s at 1.14 CPU-s per GB against
the mirror's 680 at 1.56 in the same interleaved rounds, about distribution's relay: the
copies and per-read objects of aiohttp's receive path are the part of the cold path left to
win, and even without them 1.2x distribution is not reached on two shared cores."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BUF = 2 * 1024 * 1024
NBUF = 4


class Body:
    """One body's buffers, lanes and verdict."""

    def __init__(self, client: asyncio.WriteTransport, temp: Path, digest: str,
                 lanes: tuple[ThreadPoolExecutor, ThreadPoolExecutor]) -> None:
        self.loop = asyncio.get_running_loop()
        self.client, self.digest, self.lanes = client, digest, lanes
        self.fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.direct_fd = os.open(temp, os.O_WRONLY | os.O_DIRECT)
        self.free = [mmap.mmap(-1, BUF) for _ in range(NBUF)]
        self.cur: mmap.mmap | None = self.free.pop()
        self.pos = self.got = self.offset = self.pending = 0
        self.length: int | None = None
        self.sha = hashlib.sha256()
        self.held: memoryview | None = None
        self.headers: asyncio.Future[None] = self.loop.create_future()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.upstream: asyncio.Transport | None = None

    def view(self) -> memoryview:
        assert self.cur is not None
        return memoryview(self.cur)[self.pos:]

    def filled(self, n: int) -> None:
        self.pos += n
        self.got += n
        if self.pos == BUF or self.got == self.length:
            self._hand_on()

    def _hand_on(self) -> None:
        buf, n, offset = self.cur, self.pos, self.offset
        assert buf is not None
        self.offset += n
        data = memoryview(buf)[:n]
        if self.got == self.length:
            self.held = data  # the last bytes wait for the digest
        else:
            self.client.write(data)  # asyncio copies what the socket does not take at once
        self.pending += 1
        hashed = self.loop.run_in_executor(self.lanes[0], self.sha.update, data)
        if n == BUF:
            written = self.loop.run_in_executor(self.lanes[1], os.pwrite, self.direct_fd, data,
                                                offset)
        else:  # an unaligned tail: through the page cache
            written = self.loop.run_in_executor(self.lanes[1], os.pwrite, self.fd, bytes(data),
                                                offset)
        asyncio.gather(hashed, written).add_done_callback(lambda _: self._release(buf))
        self.pos = 0
        self.cur = self.free.pop() if self.free else None
        if self.cur is None and self.upstream is not None:
            self.upstream.pause_reading()

    def _release(self, buf: mmap.mmap) -> None:
        self.pending -= 1
        if self.cur is None:
            self.cur = buf
            if self.upstream is not None:
                self.upstream.resume_reading()
        else:
            self.free.append(buf)
        if self.got == self.length and not self.pending and not self.done.done():
            self.done.set_result(None)

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        if not self.headers.done():
            self.headers.set_exception(error)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.direct_fd)


class Upstream(asyncio.BufferedProtocol):
    """Status line and headers into a small buffer, then the body into Body's buffers."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self.head = bytearray()
        self.scratch = bytearray(65536)
        self.in_body = False

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.body.view() if self.in_body else memoryview(self.scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self.in_body:
            self.body.filled(nbytes)
            return
        self.head += self.scratch[:nbytes]
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if lines[0].split()[1] != "200" or "content-length" not in fields:
            self.body.fail(ConnectionError(f"upstream answered {lines[0]!r}"))
            return
        self.body.length = int(fields["content-length"])
        self.in_body = True
        self.body.headers.set_result(None)
        rest = bytes(self.head[end + 4:])
        while rest:
            view = self.body.view()
            n = min(len(view), len(rest))
            view[:n] = rest[:n]
            rest = rest[n:]
            self.body.filled(n)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.body.length is None or self.body.got < self.body.length:
            self.body.fail(ConnectionError("upstream closed before the body's end"))


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """A client's GET of a blob: its path and the digest the path ends with."""
    request = await reader.readline()
    while await reader.readline() not in (b"\r\n", b""):
        pass
    path = request.split()[1].decode()
    return path, path.rsplit("/", 1)[1]


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream_port: int,
                    store: Path, lanes: tuple[ThreadPoolExecutor, ThreadPoolExecutor]) -> None:
    path, digest = await read_request(reader)
    temp = store / f"{digest}.part"
    transport = writer.transport
    assert isinstance(transport, asyncio.WriteTransport)
    body = Body(transport, temp, digest, lanes)
    loop = asyncio.get_running_loop()
    try:
        up, _ = await loop.create_connection(lambda: Upstream(body), "127.0.0.1", upstream_port)
        body.upstream = up
        up.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await body.headers
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {body.length}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await body.done
        if "sha256:" + body.sha.hexdigest() == digest and body.held is not None:
            os.fsync(body.fd)
            os.rename(temp, store / digest)
            writer.write(body.held)
            await writer.drain()
        up.close()
    finally:
        body.close()
        writer.close()


async def main(port: int, upstream_port: int, store: Path) -> None:
    store.mkdir(parents=True, exist_ok=True)
    lanes = (ThreadPoolExecutor(1), ThreadPoolExecutor(1))
    server = await asyncio.start_server(
        lambda r, w: serve_one(r, w, upstream_port, store, lanes), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
