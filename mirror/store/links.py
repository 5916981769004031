"""Which (upstream, repository) pairs a cached digest is known to belong to.

Content is stored once by digest, whatever repository brought it in. When access rules decide
who may pull which repository, that sharing must not become a side door: a client allowed to
pull `library/alpine` must not read a blob cached for a private `org/secret` by naming its
digest under `library/alpine`. Like distribution's repository links, a digest is served for a
repository only once the pair is linked: by a manifest pulled through that repository (its own
digest, its layers, its children), by a download made through it, or by the upstream
confirming with a HEAD that the repository holds the digest."""

from __future__ import annotations

from collections.abc import Iterable

from cachetools import LRUCache

from mirror.store.db import Database

LinkKey = tuple[str, str, str]


class RepoLinks:
    def __init__(self, db: Database, memory_entries: int = 200_000) -> None:
        self._db = db
        self._memory: LRUCache[LinkKey, bool] = LRUCache(maxsize=memory_entries)

    def has(self, upstream: str, repo: str, digest: str) -> bool:
        key = (upstream, repo, digest)
        if key in self._memory:
            return True
        row = self._db.query_one("SELECT 1 FROM links WHERE upstream=? AND repo=? AND digest=?",
                                 key)
        if row is not None:
            self._memory[key] = True
        return row is not None

    def add(self, upstream: str, repo: str, digests: Iterable[str]) -> None:
        for digest in digests:
            key = (upstream, repo, digest)
            if key in self._memory:
                continue
            self._memory[key] = True
            self._db.write("INSERT OR IGNORE INTO links (upstream, repo, digest) VALUES (?, ?, ?)",
                           key)
