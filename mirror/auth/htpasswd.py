"""htpasswd files with bcrypt entries (`htpasswd -B`): parsed by mirror/config/htpasswd.py, checked here.

Only bcrypt is accepted: the other htpasswd formats (apr1 MD5, SHA1, crypt, plain text) are too
cheap to brute-force if the file leaks. Passwords are compared with bcrypt, which is slow on
purpose, so `HtpasswdFile.check` runs it in a thread and remembers recent successes under a
keyed hash of the credentials (never the password itself): skopeo and podman send credentials
on every request of a pull over a fresh connection.

bcrypt runs on threads of its own, few of them and with a short queue: on the default executor
a flood of wrong passwords queued ahead of the cache's writes and commits and starved every
pull. When the queue is full a check fails at once (429): clients retry, cache I/O goes on."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
from cachetools import TTLCache

from mirror.config.htpasswd import parse_htpasswd
from mirror.oci.errors import TooManyRequests

log = logging.getLogger("mirror.auth")

SUCCESS_CACHE_SECONDS = 60.0
BCRYPT_THREADS = 2  # a bcrypt check takes a core for its whole duration
BCRYPT_QUEUE = 16  # checks running or waiting; beyond that a check is refused, not queued


def _bcrypt_ok(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), hashed)
    except ValueError:
        return False


class HtpasswdFile:
    """The users of one htpasswd file; `reload()` re-reads it (on SIGHUP); `close()` stops its
    threads."""

    def __init__(self, path: Path, threads: int = BCRYPT_THREADS,
                 queue: int = BCRYPT_QUEUE) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mirror-bcrypt")
        self._queue = max(queue, threads)
        self._checking = 0
        self._users = parse_htpasswd(path.read_text())
        self._key = secrets.token_bytes(32)  # per process: cache keys mean nothing elsewhere
        self._ok: TTLCache[bytes, str] = TTLCache(maxsize=4096, ttl=SUCCESS_CACHE_SECONDS)
        # Checked when the user does not exist, so that an unknown user costs the same time as a
        # wrong password and user names cannot be probed by timing.
        cost = int(next(iter(self._users.values()))[4:6]) if self._users else 10
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(cost))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._users)

    def reload(self) -> None:
        """Re-read the file; on any problem keep the users we have and say why."""
        try:
            users = parse_htpasswd(self.path.read_text())
        except (OSError, ValueError) as e:
            log.error("htpasswd %s not reloaded: %s", self.path, getattr(e, "strerror", None) or e)
            return
        self._users = users
        self._ok.clear()  # a removed user or changed password must stop working now
        log.info("htpasswd %s reloaded: %d users", self.path, len(users))

    async def check(self, user: str, password: str) -> bool:
        hashed = self._users.get(user)
        tag = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        if hashed is not None and self._ok.get(tag) == user:
            return True
        if self._checking >= self._queue:
            raise TooManyRequests("too many password checks at once; retry shortly")
        self._checking += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._pool, _bcrypt_ok, password, hashed or self._dummy)
        finally:
            self._checking -= 1
        if ok and hashed is not None and self._users.get(user) == hashed:
            self._ok[tag] = user
            return True
        return False
