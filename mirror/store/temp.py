"""A download in progress: a file under tmp/, written and hashed as bytes arrive, read by
clients tailing it, moved into blobs/ by the tier's commit only once its digest matched.

Large downloads can be written with O_DIRECT (`use_direct`): their bytes are gathered in one
page-aligned buffer and written from it straight to the device, bypassing the page cache (a
whole aligned buffer as received, fetch/receive.py, is written from where it is). A
cold layer then costs no page-cache allocation and no dirty-page writeback (the commit's fsync
has nothing left to flush), and a multi-GiB layer does not push the hot small content out of
memory; nginx's `directio` makes the same trade for large files. Measured on this project's
machine: buffered writes of fresh data ran at 400-500 MB/s and took most of a core, O_DIRECT
wrote 2.1-2.6 GB/s for 0.04 CPU-s per 512 MiB (bench/README.md, issue 17)."""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

from mirror.oci.models import Digest

IOV_BATCH = 512  # buffers per pwritev call (the kernel's IOV_MAX is 1024)
DIRECT_BUFFER = 2 * 1024 * 1024  # bytes per O_DIRECT write (a multiple of any block size)
# Bytes as a download hands them on: an mmap is a whole page-aligned buffer (fetch.receive).
Chunk: TypeAlias = bytes | memoryview | mmap.mmap


class TempBlob:
    """A download in progress: written and hashed in worker threads, read by tailing readers.

    `written` counts the bytes in the file, `hashed` the bytes the digest has seen, `staged`
    the bytes waiting in the direct-write buffer. Writes and hashing may run at once on two
    threads (each in order); `flush_sync` puts staged bytes into the file."""

    def __init__(self, tmp_dir: Path, digest: Digest, expected_size: int | None) -> None:
        self.digest = digest
        self.expected_size = expected_size
        self.path = tmp_dir / f"{digest.hex[:16]}.{uuid.uuid4().hex}"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._hasher = digest.hasher()
        self.written = 0
        self.hashed = 0
        self.closed = False
        self._direct_fd = -1
        self._buffer: mmap.mmap | None = None
        self.staged = 0

    @property
    def direct(self) -> bool:  # appends go through the O_DIRECT buffer
        return self._buffer is not None

    def use_direct(self) -> bool:
        """Write from now on through O_DIRECT, if the file system takes it and the file ends
        on a block boundary. False (and buffered writes as before) otherwise."""
        if self._buffer is not None:
            return True
        if self.written % DIRECT_BUFFER:
            return False
        try:
            # A second open file description: the flag must not change how others use fd.
            fd = os.open(f"/proc/self/fd/{self.fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except (OSError, AttributeError):  # tmpfs on older kernels, no O_DIRECT here
            return False
        self._direct_fd = fd
        self._buffer = mmap.mmap(-1, DIRECT_BUFFER)  # page-aligned, as O_DIRECT needs
        return True

    def write_sync(self, data: bytes) -> None:
        self.hash_sync([data])
        self.append_sync([data])
        self.flush_sync()

    def hash_sync(self, chunks: Sequence[Chunk]) -> None:
        for c in chunks:
            self._hasher.update(c)  # hashlib releases the GIL on large buffers
            self.hashed += len(c)

    def append_sync(self, chunks: Sequence[Chunk]) -> int:
        """Append chunks as they came off the socket; returns the bytes that reached the
        file (staged bytes count once a full buffer of them is written)."""
        if self._buffer is not None:
            return self._stage(chunks)
        total = sum(len(c) for c in chunks)
        # pwrite at our own offset: readers share this file and must never move our position.
        pos, end = self.written, self.written + total
        views = [memoryview(c) for c in chunks if c]
        while views:  # one pwritev per IOV_BATCH chunks, no joining copy
            n = os.pwritev(self.fd, views[:IOV_BATCH], pos)
            pos += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]
        self.written = end
        return total

    def _stage(self, chunks: Sequence[Chunk]) -> int:
        buf = self._buffer
        assert buf is not None
        before = self.written
        for c in chunks:
            if not self.staged and isinstance(c, mmap.mmap) and len(c) == DIRECT_BUFFER:
                # A whole page-aligned buffer at a block boundary: written from where it
                # was received, no copy into ours.
                _write_all(self._direct_fd, memoryview(c), self.written)
                self.written += DIRECT_BUFFER
                continue
            view = memoryview(c)
            while view:
                n = min(len(view), DIRECT_BUFFER - self.staged)
                buf[self.staged:self.staged + n] = view[:n]
                self.staged += n
                view = view[n:]
                if self.staged == DIRECT_BUFFER:
                    _write_all(self._direct_fd, memoryview(buf), self.written)
                    self.written += DIRECT_BUFFER
                    self.staged = 0
        return self.written - before

    def flush_sync(self) -> int:
        """Write what is staged (an unaligned tail: through the buffered descriptor); later
        writes are buffered too, since the file no longer ends on a block boundary."""
        buf, staged = self._buffer, self.staged
        if buf is None or not staged:
            return 0
        _write_all(self.fd, memoryview(buf)[:staged], self.written)
        self.written += staged
        self.staged = 0
        self._end_direct()
        return staged

    def _end_direct(self) -> None:
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None

    def matches(self) -> bool:
        if self.expected_size is not None and self.written != self.expected_size:
            return False
        return self.hashed == self.written and self._hasher.hexdigest() == self.digest.hex

    def close_sync(self) -> None:
        if not self.closed:
            self.closed = True
            self._end_direct()
            os.close(self.fd)

    def abort_sync(self) -> None:
        self.close_sync()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _write_all(fd: int, view: memoryview, pos: int) -> None:
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n
