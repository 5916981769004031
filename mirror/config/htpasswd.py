"""The htpasswd file format (bcrypt entries only, `htpasswd -B`): parsing, pure. Checking a
password is auth's business (mirror/auth/htpasswd.py); the config reads the file only to report
a bad one by its line when the config is loaded."""

from __future__ import annotations

import re

# $2a$, $2b$ and $2y$ (Apache's spelling) are the same algorithm for our purpose.
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_USER_RE = re.compile(r"^[^\s:]{1,256}$")
RESERVED_USERS = frozenset({"anonymous", "*"})  # names the access rules give a meaning to


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


