"""A download in progress: a file under tmp/, written and hashed as bytes arrive, read by
clients tailing it, moved into blobs/ by the tier's commit only once its digest matched."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from mirror.oci.models import Digest

IOV_BATCH = 512  # buffers per pwritev call (the kernel's IOV_MAX is 1024)


class TempBlob:
    """A download in progress: written and hashed in a worker thread, read by tailing readers."""

    def __init__(self, tmp_dir: Path, digest: Digest, expected_size: int | None) -> None:
        self.digest = digest
        self.expected_size = expected_size
        self.path = tmp_dir / f"{digest.hex[:16]}.{uuid.uuid4().hex}"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._hasher = digest.hasher()
        self.written = 0
        self.closed = False

    def write_sync(self, data: bytes) -> None:
        # pwrite at our own offset: readers share this file and must never move our position.
        view = memoryview(data)
        pos = self.written
        while view:
            n = os.pwrite(self.fd, view, pos)
            view = view[n:]
            pos += n
        self._hasher.update(data)  # hashlib releases the GIL on large buffers
        self.written += len(data)

    def write_many_sync(self, chunks: list[bytes]) -> int:
        """Append chunks as they came off the socket: one pwritev, no joining copy. Returns
        the bytes written."""
        total = sum(len(c) for c in chunks)
        pos, end = self.written, self.written + total
        views = [memoryview(c) for c in chunks if c]
        while views:
            n = os.pwritev(self.fd, views[:IOV_BATCH], pos)
            pos += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]
        assert pos == end
        for c in chunks:
            self._hasher.update(c)
        self.written = end
        return total

    def matches(self) -> bool:
        if self.expected_size is not None and self.written != self.expected_size:
            return False
        return bool(self._hasher.hexdigest() == self.digest.hex)

    def close_sync(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def abort_sync(self) -> None:
        self.close_sync()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
