"""One download per digest across processes that share a hot tier (server.workers > 1).

For a digest D these files live under the tier's tmp/ directory:

    D.lock   flock(LOCK_EX) by the process downloading D; the kernel drops it when that process
             exits, however it exits
    D.part   the bytes so far, written strictly in order by the lock holder
    D.meta   JSON, replaced atomically by the holder: the part's inode, the blob's size once the
             upstream answered, the holder's pid; or the error that ended the download

A process that wants D takes the lock if it can and downloads into D.part; the commit renames
D.part to the final path (after the digest verified), which keeps its inode. A process that
finds the lock taken tails D.part instead: the holder's writes are in the same page cache, so
`fstat().st_size` is how far it may read; the download is complete when the final file exists
with the part's inode, and failed when D.meta carries an error for that inode.

A holder killed mid-download leaves D.part and D.meta. The next process to take the lock
resumes that same file: it hashes every byte already in it again (nothing the dead process
computed is trusted) and continues from there with a Range request. Readers that were tailing
keep their descriptors, and the final digest check covers exactly the bytes they sent. A part
without usable meta (its holder died before the upstream answered: no reader can have started
on it) is discarded."""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.oci.errors import (
    BlobUnknown,
    DiskFull,
    MirrorError,
    UpstreamUnavailable,
    VerificationError,
)
from mirror.oci.models import Digest
from mirror.store.base import READ_CHUNK
from mirror.store.temp import TempBlob

if TYPE_CHECKING:
    from mirror.store.disk import DiskTier

REHASH_CHUNK = 4 * READ_CHUNK


@dataclass(frozen=True, slots=True)
class PartFiles:
    lock: Path
    part: Path
    meta: Path

    @classmethod
    def of(cls, tmp_dir: Path, digest: Digest) -> PartFiles:
        stem = tmp_dir / f"{digest.algorithm}-{digest.hex}"
        return cls(stem.with_suffix(".lock"), stem.with_suffix(".part"), stem.with_suffix(".meta"))


@dataclass(frozen=True, slots=True)
class PartMeta:
    ino: int  # inode of the part file this describes
    started: bool  # the upstream answered: size is what it said (None: it sent no length)
    size: int | None
    pid: int
    error: dict[str, Any] | None = None  # {"kind", "message"} of a failed download
    written_at: float = 0.0


def read_meta(path: Path) -> PartMeta | None:
    try:
        raw = json.loads(path.read_bytes())
        return PartMeta(int(raw["ino"]), bool(raw["started"]), raw.get("size"), int(raw["pid"]),
                        raw.get("error"), float(raw.get("written_at", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or written by something else: treated as no meta


def write_meta(path: Path, meta: PartMeta) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"ino": meta.ino, "started": meta.started, "size": meta.size,
                               "pid": meta.pid, "error": meta.error,
                               "written_at": time.time()}))
    os.replace(tmp, path)


class DigestLock:
    """A non-blocking exclusive lock on D.lock. The holder removes the file when it is done, so
    holding a lock on a file that is no longer at the path means nothing: every acquisition
    checks that the path still names the locked file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def try_acquire(self) -> bool:
        if self.fd is not None:
            return True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # removed or replaced by its last holder meanwhile: take the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for people and tests
            self.fd = fd
            return True

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: nobody can be holding the file we remove
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


class SharedPart(TempBlob):
    """The TempBlob of a shared download: at D.part, opened as holder or as tail.

    `fd` is -1 until the part is opened; readers open their descriptors only after the fetch
    has started, by which time it is set."""

    def __init__(self, tier: DiskTier, digest: Digest, expected_size: int | None) -> None:
        # No super().__init__(): that creates a uniquely named file right away.
        self.tier = tier
        self.digest = digest
        self.expected_size = expected_size
        self.files = PartFiles.of(tier.tmp_dir, digest)
        self.path = self.files.part
        self.fd = -1
        self._hasher = digest.hasher()
        self.written = self.hashed = self.staged = 0
        self._direct_fd = -1
        self._buffer = None
        self.closed = False
        self.ino = 0
        self.holding = False  # this process writes the part (and may delete it)
        self.resumed_from = 0

    # -- tail ---------------------------------------------------------------------------------

    def open_tail(self, meta: PartMeta) -> bool:
        """Open the part `meta` describes; False when the path holds another file by now."""
        try:
            fd = os.open(self.files.part, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        if os.fstat(fd).st_ino != meta.ino:
            os.close(fd)
            return False
        self.fd, self.ino = fd, meta.ino
        return True

    def tail_size(self) -> int:
        return os.fstat(self.fd).st_size

    def final_ino(self) -> int | None:
        try:
            return os.stat(self.tier.path(self.digest)).st_ino
        except FileNotFoundError:
            return None

    # -- holder ---------------------------------------------------------------------------------

    def take_over_sync(self) -> PartMeta | None:
        """With the lock held: continue the part a dead holder left (hashing its bytes again),
        or start a new one. Returns the meta of a resumed part, None for a new one. Raises
        PartLost when this process was tailing a part that cannot be continued."""
        meta = read_meta(self.files.meta)
        usable = meta is not None and meta.error is None and meta.started
        try:
            on_disk = os.stat(self.files.part).st_ino
        except FileNotFoundError:
            on_disk = None
        if self.fd >= 0 and not (usable and meta is not None and meta.ino == self.ino == on_disk):
            raise PartLost(f"the download of {self.digest} restarted in another process")
        if self.fd < 0 and usable and meta is not None and meta.ino == on_disk:
            try:
                fd = os.open(self.files.part, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = -1
            if fd >= 0 and os.fstat(fd).st_ino == meta.ino:
                self.fd, self.ino = fd, meta.ino
            elif fd >= 0:
                os.close(fd)
        if self.fd >= 0:
            assert meta is not None
            self._rehash()
            self.holding = True
            write_meta(self.files.meta, PartMeta(self.ino, True, meta.size, os.getpid()))
            return meta
        for stale in (self.files.part, self.files.meta):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        self.fd = os.open(self.files.part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                          0o644)
        self.ino = os.fstat(self.fd).st_ino
        self.holding = True
        write_meta(self.files.meta, PartMeta(self.ino, False, None, os.getpid()))
        return None

    def _rehash(self) -> None:
        size = os.fstat(self.fd).st_size
        hasher = self.digest.hasher()
        pos = 0
        while pos < size:
            chunk = os.pread(self.fd, min(REHASH_CHUNK, size - pos), pos)
            if not chunk:
                break
            hasher.update(chunk)
            pos += len(chunk)
        self._hasher, self.written, self.hashed, self.resumed_from = hasher, pos, pos, pos

    def publish_start(self, size: int | None) -> None:
        """The upstream answered: tails may start serving."""
        write_meta(self.files.meta, PartMeta(self.ino, True, size, os.getpid()))

    def publish_error(self, exc: BaseException) -> None:
        kind = type(exc).__name__ if type(exc) in _RELAYED else "UpstreamUnavailable"
        message = exc.message if isinstance(exc, MirrorError) else f"download failed: {kind}"
        write_meta(self.files.meta, PartMeta(self.ino, True, None, os.getpid(),
                                             {"kind": kind, "message": message}))

    def discard_sync(self) -> None:
        """Delete the part if it is still ours (a successor may have replaced it)."""
        if self.holding and self.ino:
            try:
                if os.stat(self.files.part).st_ino == self.ino:
                    os.unlink(self.files.part)
            except FileNotFoundError:
                pass
        self.holding = False

    def committed_sync(self) -> None:
        """After the rename into the tier: the meta has nothing left to say."""
        try:
            os.unlink(self.files.meta)
        except FileNotFoundError:
            pass
        self.holding = False

    # -- TempBlob ---------------------------------------------------------------------------------

    def close_sync(self) -> None:
        if not self.closed:
            self.closed = True
            if self.fd >= 0:
                os.close(self.fd)

    def abort_sync(self) -> None:
        """Close; the part itself is deleted only by a holder that failed (discard_sync), never
        by a tail, and not by a holder that was cancelled: another process may resume it."""
        self.close_sync()


class PartLost(UpstreamUnavailable):
    """A tailed download was restarted from scratch elsewhere: its readers must start over."""


_RELAYED: dict[type[MirrorError], type[MirrorError]] = {
    BlobUnknown: BlobUnknown, VerificationError: VerificationError, DiskFull: DiskFull,
    UpstreamUnavailable: UpstreamUnavailable, PartLost: PartLost}


def relayed_error(error: dict[str, Any]) -> MirrorError:
    """The error another process's download ended with, as this process raises it."""
    by_name = {cls.__name__: cls for cls in _RELAYED}
    cls = by_name.get(str(error.get("kind")), UpstreamUnavailable)
    return cls(str(error.get("message", "download failed in another worker")))
