"""The contract every storage tier keeps (one contract test suite runs against each).

A tier stores verified content by digest. It never decides whether bytes are right: callers hand
it only content whose digest was checked (`put_file` of a verified temp file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from mirror.oci.models import Digest

READ_CHUNK = 1024 * 1024


class BlobStore(Protocol):
    name: str

    async def stat(self, digest: Digest) -> int | None:
        """Size in bytes, or None when the tier does not hold the digest."""
        ...

    def read(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end] (inclusive end; None means to the last byte)."""
        ...

    async def put_file(self, digest: Digest, path: Path) -> None:
        """Store the (already verified) file at `path` under `digest`. Idempotent."""
        ...

    async def delete(self, digest: Digest) -> bool:
        ...

    def list(self) -> AsyncIterator[tuple[Digest, int]]:
        ...
