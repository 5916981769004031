"""What a blob request gets back from the fetcher: where the bytes come from and how they are
served (a committed file, a download in progress, or an uncached verified stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from mirror.fetch.coalesce import BlobFetch
from mirror.oci.models import Digest

Source = Literal["hot", "cold", "peer", "upstream"]


@dataclass(slots=True)
class CommittedFile:
    """A verified file in the hot tier, pinned until released. It is opened at once, while we
    know it exists (another worker may evict the path, an operator delete it); the response
    takes `file`."""

    path: Path
    file: IO[bytes] | None = None


@dataclass(slots=True)
class Download:
    """A download in progress: `fd` is this client's own descriptor on its growing temp file
    (the response takes it; None once taken or closed)."""

    fetch: BlobFetch
    fd: int | None


@dataclass(slots=True)
class Uncached:
    """A verified stream straight from the upstream, for when the hot tier cannot take it."""

    stream: AsyncIterator[bytes]


@dataclass(slots=True)
class BlobHandle:
    """What a handler needs to answer a blob request; `body` says how the bytes are served."""

    digest: Digest
    size: int | None
    source: Source
    result: Literal["hit", "miss", "coalesced"]
    body: CommittedFile | Download | Uncached
