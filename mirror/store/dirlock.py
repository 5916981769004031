"""Who may work on a cache directory: running servers together, or one maintenance tool alone.

`mirror serve` (every process of it: the supervisor and each worker) holds a shared flock on
<cache.dir>/mirror.lock for as long as it runs; `mirror gc`, `import` and `seed` (which sweep
tmp/, evict, and write behind a server's in-memory accounting) take it exclusively, without
waiting. So a tool run against a live cache stops with one clear line instead of deleting the
downloads, part files and lock files the server is using, and a server does not start under a
tool. The kernel drops the lock when its process exits, however it exits."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "mirror.lock"


class CacheDirBusy(Exception):
    """The cache directory is held by what the message names."""


class CacheDirLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def shared(cls, cache_dir: Path) -> CacheDirLock:
        """For a server process; raises CacheDirBusy while a maintenance tool holds it."""
        try:
            return cls._take(cache_dir, fcntl.LOCK_SH)
        except BlockingIOError:
            raise CacheDirBusy(f"cache.dir {cache_dir} is in use by a maintenance command "
                               "(mirror gc, import or seed); start the server when it is "
                               "done") from None

    @classmethod
    def exclusive(cls, cache_dir: Path, tool: str, alternative: str = "") -> CacheDirLock:
        """For a maintenance tool; raises CacheDirBusy while a server (or another tool)
        holds it. `alternative`: what to do instead, for the message."""
        try:
            return cls._take(cache_dir, fcntl.LOCK_EX)
        except BlockingIOError:
            raise CacheDirBusy(f"cache.dir {cache_dir} is in use by a running mirror serve "
                               f"(or another maintenance command): stop it before {tool}"
                               f"{alternative}") from None

    @classmethod
    def _take(cls, cache_dir: Path, mode: int) -> CacheDirLock:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        # The file stays: removing it would let a newcomer lock a fresh file while an old
        # holder still holds the removed one.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CacheDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
