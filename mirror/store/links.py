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
# Rows kept at most. Repository names are the clients' choice: each pair an upstream confirms
# adds a row, so without a bound the table grows for ever. A link dropped costs one HEAD to
# the upstream when the pair is asked for again (offline: the pair is refused until then).
MAX_LINKS = 2_000_000


class RepoLinks:
    def __init__(self, db: Database, memory_entries: int = 200_000,
                 max_rows: int = MAX_LINKS) -> None:
        self._db = db
        self._memory: LRUCache[LinkKey, bool] = LRUCache(maxsize=memory_entries)
        self.max_rows = max_rows
        # Rows in the table, counted once and then kept up to date by add(); an upper bound
        # (a pair already linked by another worker is counted again), which only makes the
        # trim come early.
        self._rows = int((db.query_one("SELECT COUNT(*) FROM links") or (0,))[0])

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
            self._rows += 1
        if self._rows > self.max_rows:
            self._trim()

    def _trim(self) -> None:
        """Down to 90% of max_rows, on the writer thread: first the links of content that is
        no longer cached (no use until it is fetched again), then the rest in key order."""
        keep = self.max_rows * 9 // 10
        self._db.write("DELETE FROM links WHERE digest NOT IN (SELECT digest FROM content)")
        self._db.write("DELETE FROM links WHERE (upstream, repo, digest) IN (SELECT upstream, "
                       "repo, digest FROM links LIMIT max(0, (SELECT COUNT(*) FROM links) - ?))",
                       (keep,))
        self._rows = keep
        self._memory.clear()  # what stays is found in the table again
