"""The storage interfaces, as the real path calls them; one contract suite per interface
(tests/store/) runs against every implementation.

- ContentStore: the hot tier, as the fetcher, the pull service and the importers use it. It
  never decides whether bytes are right: a temp file is committed only if it hashed to its
  digest (commit raises VerificationError and leaves nothing otherwise).
- ColdStore: the cold tier, as the uploader and the tiered store use it: whole verified
  files by digest, ranged reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from mirror.oci.models import Digest
from mirror.store.temp import TempBlob

READ_CHUNK = 1024 * 1024


class Entry(Protocol):
    size: int
    media_type: str | None
    is_manifest: bool
    last_access: float


class ContentStore(Protocol):
    name: str
    root: Path
    used: int
    max_size: int

    def entry(self, digest: Digest) -> Entry | None:
        """What the tier holds under `digest` (no I/O), or None."""
        ...

    def path(self, digest: Digest) -> Path:
        """The file of a held digest: served from a mapping, read by the uploader."""
        ...

    def touch(self, digest: Digest) -> None:
        """A use: eviction goes by last use."""
        ...

    def pin(self, digest: Digest) -> None:
        """Being read or written: not evicted until unpinned (counted)."""
        ...

    def unpin(self, digest: Digest) -> None:
        ...

    def new_temp(self, digest: Digest, expected_size: int | None) -> TempBlob:
        """A download in progress, hashed as it is written, visible to nobody."""
        ...

    async def commit(self, temp: TempBlob, media_type: str | None = None,
                     is_manifest: bool = False) -> None:
        """Verify, make durable, move into place; never waits for eviction or the cold tier."""
        ...

    async def put_bytes(self, digest: Digest, data: bytes, media_type: str | None = None,
                        is_manifest: bool = False) -> None:
        """A small verified object (a manifest): the same checks as commit."""
        ...

    def read_bytes_sync(self, digest: Digest) -> bytes | None:
        ...

    def has_room(self, nbytes: int) -> bool:
        """Admission: whether the file system can take `nbytes` more."""
        ...

    def request_eviction(self, force: bool = False) -> None:
        ...


class ColdStore(Protocol):
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
