"""Fresh random blobs pushed to a registry, so every test starts cold."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .images import RegistryClient

MiB = 1024 * 1024


@dataclass(frozen=True)
class PushedBlob:
    repo: str
    digest: str
    size: int
    path: Path  # the content, on disk

    def chunks(self, size: int = MiB) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while chunk := f.read(size):
                yield chunk

    def slice(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start + 1)


def push_random_blob(registry_url: str, repo: str, size: int, workdir: Path) -> PushedBlob:
    """os.urandom content (a new digest every call), written to disk and pushed in chunks."""
    h = hashlib.sha256()
    path = workdir / f"blob-{os.urandom(4).hex()}"
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(MiB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    blob = PushedBlob(repo, "sha256:" + h.hexdigest(), size, path)
    RegistryClient(registry_url).push_blob(repo, blob.digest, size, blob.chunks)
    return blob


def concurrently(n: int, fn: Callable[[int], object]) -> tuple[float, list[object]]:
    """Run fn(0..n-1) in n threads released together; returns (wall seconds, results)."""
    results: list[object] = [None] * n
    barrier = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(600)
    return time.perf_counter() - t0, results
