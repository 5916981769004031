"""Fresh random blobs pushed to a registry, so every test starts cold."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
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
