"""htpasswd files with bcrypt entries (`htpasswd -B`): parsing is pure, checking runs bcrypt.

Only bcrypt is accepted: the other htpasswd formats (apr1 MD5, SHA1, crypt, plain text) are too
cheap to brute-force if the file leaks. Passwords are compared with bcrypt, which is slow on
purpose, so `HtpasswdFile.check` runs it in a thread and remembers recent successes under a
keyed hash of the credentials (never the password itself): skopeo and podman send credentials
on every request of a pull over a fresh connection."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from pathlib import Path

import bcrypt
from cachetools import TTLCache

log = logging.getLogger("mirror.auth")

# $2a$, $2b$ and $2y$ (Apache's spelling) are the same algorithm for our purpose.
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_USER_RE = re.compile(r"^[^\s:]{1,256}$")
RESERVED_USERS = frozenset({"anonymous", "*"})  # names the access rules give a meaning to
SUCCESS_CACHE_SECONDS = 60.0


def parse_htpasswd(text: str) -> dict[str, bytes]:
    """user -> bcrypt hash. Raises ValueError naming the line of the first bad entry."""
    users: dict[str, bytes] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not _USER_RE.match(user):
            raise ValueError(f"line {n}: expected user:bcrypt-hash")
        if user in RESERVED_USERS:
            raise ValueError(f"line {n}: {user!r} is reserved for access rules")
        if not _BCRYPT_RE.match(hashed):
            # Never echo the hash (or a plain-text password someone put there by mistake).
            raise ValueError(f"line {n}: user {user}: not a bcrypt hash (create it with htpasswd -B)")
        if user in users:
            raise ValueError(f"line {n}: user {user} appears twice")
        users[user] = hashed.encode()
    return users


def _bcrypt_ok(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), hashed)
    except ValueError:
        return False


class HtpasswdFile:
    """The users of one htpasswd file; `reload()` re-reads it (on SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users = parse_htpasswd(path.read_text())
        self._key = secrets.token_bytes(32)  # per process: cache keys mean nothing elsewhere
        self._ok: TTLCache[bytes, str] = TTLCache(maxsize=4096, ttl=SUCCESS_CACHE_SECONDS)
        # Checked when the user does not exist, so that an unknown user costs the same time as a
        # wrong password and user names cannot be probed by timing.
        cost = int(next(iter(self._users.values()))[4:6]) if self._users else 10
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(cost))

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
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, _bcrypt_ok, password, hashed or self._dummy)
        if ok and hashed is not None and self._users.get(user) == hashed:
            self._ok[tag] = user
            return True
        return False
