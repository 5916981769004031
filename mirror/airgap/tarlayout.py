"""A bundle's tar stream, laid out before a byte is written.

Every header is built up front (fixed mtime, fixed order), so the stream is a pure function of
the export plan: its length, its identity (a digest over the layout) and the offset of every
blob are known in advance. That is what makes an export resumable: a run that stopped at byte N
(disk full, Ctrl-C, power) starts again at byte N of the same stream, and what it writes joins
what the first run wrote into exactly the bundle an uninterrupted run would have made.

The stream is a plain POSIX tar (ustar, PAX headers only where ustar cannot say it), ended by
two zero blocks: every tar reader, skopeo and containerd read it."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mirror.oci.models import Digest

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
COPY_BUFFER = 1024 * 1024
ENTRY_MTIME = 0  # fixed: the same content makes the same bundle


class LayoutError(Exception):
    """A cached blob that changed or rotted while the bundle was written."""


@dataclass(frozen=True, slots=True)
class BlobPiece:
    digest: Digest
    size: int


Piece = bytes | BlobPiece


def entry_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, ENTRY_MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


class Layout:
    """The stream as a list of pieces: literal bytes (headers, small files, padding) and blobs
    read from the cache when written."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.total = 0

    def _add(self, piece: Piece) -> None:
        if isinstance(piece, bytes) and self.pieces and isinstance(self.pieces[-1], bytes):
            self.pieces[-1] += piece  # fewer, larger pieces: padding joins the next header
        elif not isinstance(piece, bytes) or piece:
            self.pieces.append(piece)
        self.total += len(piece) if isinstance(piece, bytes) else piece.size

    def add_file(self, name: str, data: bytes) -> None:
        self._add(entry_header(name, len(data)) + data + _padding(len(data)))

    def add_dir(self, name: str) -> None:
        self._add(entry_header(name, 0, tarfile.DIRTYPE))

    def add_blob(self, digest: Digest, size: int) -> None:
        self._add(entry_header(f"blobs/{digest.algorithm}/{digest.hex}", size))
        self._add(BlobPiece(digest, size))
        self._add(_padding(size))

    def close(self) -> None:
        self._add(END_OF_ARCHIVE)

    def identity(self) -> str:
        """Names this exact stream: parts of one bundle carry it, and an interrupted export
        resumes only into the same stream."""
        h = hashlib.sha256()
        for piece in self.pieces:
            if isinstance(piece, bytes):
                h.update(b"B%d:" % len(piece) + piece)
            else:
                h.update(f"D{piece.size}:{piece.digest}".encode())
        return h.hexdigest()


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def checkpoint(self, offset: int) -> None: ...


def write_layout(layout: Layout, blob_path: Callable[[Digest], Path], sink: Sink,
                 start: int = 0, progress: Callable[[int], None] | None = None) -> None:
    """Write the stream from byte `start` on. Every blob is hashed as it is copied (a blob cut
    at `start` is hashed from its beginning, read but not written again), so a file that rotted
    on disk stops the export. `sink.checkpoint(offset)` is called after every piece and every
    copied buffer: everything before `offset` has been handed to the sink, which decides how
    often to make that durable."""
    offset = 0
    for piece in layout.pieces:
        length = len(piece) if isinstance(piece, bytes) else piece.size
        end = offset + length
        if end <= start:
            offset = end
            continue
        if isinstance(piece, bytes):
            sink.write(piece[max(0, start - offset):])
        else:
            _copy_blob(piece, blob_path(piece.digest), sink, max(0, start - offset), offset,
                       progress)
        offset = end
        sink.checkpoint(offset)


def _copy_blob(piece: BlobPiece, path: Path, sink: Sink, skip: int, base: int,
               progress: Callable[[int], None] | None) -> None:
    hasher = piece.digest.hasher()
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the error names the blob
    except OSError as e:
        raise LayoutError(f"cached blob {piece.digest} is gone ({e.strerror}); it was evicted "
                          f"or deleted since the export began: run the export again") from None
    with f:
        if os.fstat(f.fileno()).st_size != piece.size:
            raise LayoutError(f"cached blob {piece.digest} ({path}) changed size on disk")
        done = 0
        while done < skip:  # written by the interrupted run: hash it, do not write it again
            chunk = f.read(min(COPY_BUFFER, skip - done))
            if not chunk:
                break
            hasher.update(chunk)
            done += len(chunk)
        while chunk := f.read(COPY_BUFFER):
            hasher.update(chunk)
            sink.write(chunk)
            done += len(chunk)
            sink.checkpoint(base + done)
            if progress is not None:
                progress(len(chunk))
    if done != piece.size or hasher.hexdigest() != piece.digest.hex:
        raise LayoutError(f"cached blob {piece.digest} ({path}) is corrupt on disk; delete that "
                          f"file and seed again")
