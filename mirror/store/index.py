"""Tag records: tag -> digest with the time it was last confirmed upstream.

The freshness rules are pure functions; `TagIndex` keeps records in memory (cachetools LRU) in
front of the database, so a fresh tag is answered with no disk access and no upstream request."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from cachetools import LRUCache

from mirror.store.db import Database

NEGATIVE_TTL = 30.0  # "upstream has no such tag" is remembered briefly; tags appear at any time
# Negative records are kept in memory only, at most this many: their names are the clients'
# choice (any number of tags that do not exist), and they are worth NEGATIVE_TTL seconds.
NEGATIVE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class TagRecord:
    digest: str | None  # None: a negative entry (upstream said 404)
    media_type: str | None
    size: int | None
    checked_at: float  # wall-clock time the upstream last confirmed this record


class Freshness(Enum):
    FRESH = "fresh"  # answer without asking upstream
    STALE = "stale"  # revalidate (HEAD); serve it if upstream cannot be asked
    EXPIRED = "expired"  # too old even for stale-on-error (cache.max_stale)


def freshness(record: TagRecord, now: float, ttl: float, max_stale: float | None) -> Freshness:
    age = now - record.checked_at
    ttl = NEGATIVE_TTL if record.digest is None else ttl
    if age < ttl:
        return Freshness.FRESH
    if max_stale is not None and age > ttl + max_stale:
        return Freshness.EXPIRED
    return Freshness.STALE


TagKey = tuple[str, str, str]


class TagIndex:
    def __init__(self, db: Database, memory_entries: int = 100_000,
                 negative_entries: int = NEGATIVE_ENTRIES) -> None:
        self._db = db
        self._memory: LRUCache[TagKey, TagRecord] = LRUCache(maxsize=memory_entries)
        self._negative: LRUCache[TagKey, TagRecord] = LRUCache(maxsize=negative_entries)

    def get(self, upstream: str, repo: str, tag: str) -> TagRecord | None:
        key = (upstream, repo, tag)
        rec = self._negative.get(key) or self._memory.get(key)
        if rec is not None:
            return rec
        row = self._db.query_one(
            "SELECT digest, media_type, size, checked_at FROM tags "
            "WHERE upstream=? AND repo=? AND tag=?", key)
        if row is None:
            return None
        rec = TagRecord(row[0], row[1], row[2], row[3])
        self._memory[key] = rec
        return rec

    def reload(self, upstream: str, repo: str, tag: str) -> TagRecord | None:
        """The record as the database has it, when that is newer than memory's: with several
        worker processes, another one may have revalidated the tag (server.workers > 1)."""
        key = (upstream, repo, tag)
        rec = self._negative.get(key) or self._memory.get(key)
        row = self._db.query_one(
            "SELECT digest, media_type, size, checked_at FROM tags "
            "WHERE upstream=? AND repo=? AND tag=?", key)
        if row is not None and (rec is None or row[3] > rec.checked_at):
            rec = TagRecord(row[0], row[1], row[2], row[3])
            self._memory[key] = rec
            self._negative.pop(key, None)
        return rec

    def put(self, upstream: str, repo: str, tag: str, record: TagRecord) -> None:
        key = (upstream, repo, tag)
        if record.digest is None:  # bounded, in memory; a record it replaces is deleted
            self._negative[key] = record
            if self._memory.pop(key, None) is not None or self._db.query_one(
                    "SELECT 1 FROM tags WHERE upstream=? AND repo=? AND tag=?", key):
                self._db.write("DELETE FROM tags WHERE upstream=? AND repo=? AND tag=?", key)
            return
        self._negative.pop(key, None)
        self._memory[key] = record
        self._db.write(
            "INSERT OR REPLACE INTO tags (upstream, repo, tag, digest, media_type, size, checked_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (upstream, repo, tag, record.digest, record.media_type, record.size, record.checked_at))

    def confirm(self, upstream: str, repo: str, tag: str, record: TagRecord) -> TagRecord:
        fresh = TagRecord(record.digest, record.media_type, record.size, time.time())
        self.put(upstream, repo, tag, fresh)
        return fresh

    def delete(self, upstream: str, repo: str, tag: str) -> None:
        self._memory.pop((upstream, repo, tag), None)
        self._negative.pop((upstream, repo, tag), None)
        self._db.write("DELETE FROM tags WHERE upstream=? AND repo=? AND tag=?",
                       (upstream, repo, tag))

    def drop_negative(self) -> None:
        """Negative records an earlier version stored in the database."""
        self._db.write("DELETE FROM tags WHERE digest IS NULL")

    def tags_of(self, upstream: str, repo: str) -> list[str]:
        """The repository's known tags, sorted: a range of the primary key, never a scan of
        the table (this runs on the event loop, for the offline tag list)."""
        rows = self._db.query("SELECT tag FROM tags WHERE upstream=? AND repo=? AND digest IS "
                              "NOT NULL ORDER BY tag", (upstream, repo))
        return [r[0] for r in rows]

    def all(self) -> list[tuple[str, str, str, TagRecord]]:
        rows = self._db.query("SELECT upstream, repo, tag, digest, media_type, size, checked_at "
                              "FROM tags WHERE digest IS NOT NULL")
        return [(r[0], r[1], r[2], TagRecord(r[3], r[4], r[5], r[6])) for r in rows]
