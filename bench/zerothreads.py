"""A probe, not a cache: bench/zerocopy.py with the upstream's body read by a blocking thread.

    python -m bench.zerothreads PORT UPSTREAM_PORT DIR

The asyncio probe pays per read for the event loop (a select, a protocol callback) and per
buffer for two executor hand-offs (a self-pipe wake-up each). Here one thread owns the upstream
socket once the headers are in and fills 2 MiB page-aligned buffers with one blocking
`recv_into(MSG_WAITALL)` each; a second thread hashes and writes each buffer O_DIRECT; the event
loop only sends the buffers to the client. The last buffer waits for the digest as before.
Plain HTTP and Content-Length bodies only: it measures the floor of that shape, nothing else."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
import queue
import socket
import sys
import threading
from pathlib import Path

from bench.zerocopy import read_request

BUF = 2 * 1024 * 1024
NBUF = 4


def open_upstream(port: int, path: str) -> tuple[socket.socket, int, bytes]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("upstream closed in the headers")
        head += more
    end = head.index(b"\r\n\r\n")
    lines = head[:end].decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if lines[0].split()[1] != "200" or "content-length" not in fields:
        raise ConnectionError(f"upstream answered {lines[0]!r}")
    return sock, int(fields["content-length"]), head[end + 4:]


class Body:
    def __init__(self, sock: socket.socket, length: int, rest: bytes, temp: Path) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock, self.length, self.rest = sock, length, rest
        self.fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.direct_fd = os.open(temp, os.O_WRONLY | os.O_DIRECT)
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(NBUF):
            self.free.put(mmap.mmap(-1, BUF))
        self.hashq: queue.SimpleQueue[tuple[mmap.mmap, int, int] | None] = queue.SimpleQueue()
        self.writeq: queue.SimpleQueue[tuple[mmap.mmap, int, int] | None] = queue.SimpleQueue()
        self.sendq: asyncio.Queue[tuple[mmap.mmap, int] | None] = asyncio.Queue()
        self.sha = hashlib.sha256()
        self.refs: dict[int, int] = {}
        self.lock = threading.Lock()
        self.held: tuple[mmap.mmap, int] | None = None
        self.hashed: asyncio.Future[None] = self.loop.create_future()
        self.written: asyncio.Future[None] = self.loop.create_future()
        self.error: BaseException | None = None

    def release(self, buf: mmap.mmap) -> None:
        with self.lock:
            self.refs[id(buf)] -= 1
            if self.refs[id(buf)]:
                return
        self.free.put(buf)

    def receive(self) -> None:
        """The reading thread: fill a buffer, hand it to the hash lane and to the loop."""
        got = offset = 0
        try:
            while got < self.length:
                buf = self.free.get()
                view = memoryview(buf)
                want = min(BUF, self.length - got)
                pos = 0
                if self.rest:
                    pos = min(len(self.rest), want)
                    view[:pos] = self.rest[:pos]
                    self.rest = self.rest[pos:]
                while pos < want:
                    n = self.sock.recv_into(view[pos:want], want - pos, socket.MSG_WAITALL)
                    if not n:
                        raise ConnectionError("upstream closed before the body's end")
                    pos += n
                view.release()
                got += pos
                last = got == self.length
                with self.lock:
                    self.refs[id(buf)] = 2 if last else 3
                self.hashq.put((buf, pos, offset))
                self.writeq.put((buf, pos, offset))
                offset += pos
                if last:
                    self.held = (buf, pos)
                else:
                    self.loop.call_soon_threadsafe(self.sendq.put_nowait, (buf, pos))
        except BaseException as e:  # handed to the loop
            self.error = e
            self.hashq.put(None)
            self.writeq.put(None)
        self.loop.call_soon_threadsafe(self.sendq.put_nowait, None)

    def digest_lane(self) -> None:
        """The hash thread."""
        while (item := self.hashq.get()) is not None:
            buf, n, offset = item
            with memoryview(buf)[:n] as data:
                self.sha.update(data)
            self.release(buf)
            if offset + n == self.length:
                break
        self.loop.call_soon_threadsafe(self._hashed)

    def write_lane(self) -> None:
        """The write thread."""
        while (item := self.writeq.get()) is not None:
            buf, n, offset = item
            with memoryview(buf)[:n] as data:
                if n == BUF:
                    os.pwrite(self.direct_fd, data, offset)
                else:
                    os.pwrite(self.fd, bytes(data), offset)
            self.release(buf)
            if offset + n == self.length:
                break
        self.loop.call_soon_threadsafe(self._written)

    def _written(self) -> None:
        if not self.written.done():
            self.written.set_result(None)

    def _hashed(self) -> None:
        if not self.hashed.done():
            self.hashed.set_result(None)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.direct_fd)
        self.sock.close()


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream_port: int,
                    store: Path) -> None:
    path, digest = await read_request(reader)
    temp = store / f"{digest}.part"
    loop = asyncio.get_running_loop()
    try:
        sock, length, rest = await loop.run_in_executor(None, open_upstream, upstream_port, path)
        body = Body(sock, length, rest, temp)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n"
                     "Connection: close\r\n\r\n".encode())
        threading.Thread(target=body.receive, daemon=True).start()
        threading.Thread(target=body.digest_lane, daemon=True).start()
        threading.Thread(target=body.write_lane, daemon=True).start()
        while (item := await body.sendq.get()) is not None:
            buf, n = item
            writer.write(memoryview(buf)[:n])  # 3.11 copies what the socket does not take
            await writer.drain()
            body.release(buf)
        if body.error is None:
            await body.hashed
            await body.written
            if "sha256:" + body.sha.hexdigest() == digest and body.held is not None:
                os.fsync(body.fd)
                os.rename(temp, store / digest)
                writer.write(memoryview(body.held[0])[:body.held[1]])
                await writer.drain()
        body.close()
    finally:
        writer.close()


async def main(port: int, upstream_port: int, store: Path) -> None:
    store.mkdir(parents=True, exist_ok=True)
    server = await asyncio.start_server(
        lambda r, w: serve_one(r, w, upstream_port, store), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
