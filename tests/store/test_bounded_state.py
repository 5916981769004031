"""The index database under faults and abuse (issue #16, items 14 and 15): a writer that outlives
a full disk (a real tmpfs), tables that stay bounded whatever names clients make up, a commit
that refuses a temp path naming another file (item 18)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.observe.metrics import Metrics
from mirror.oci.errors import CacheConflict
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.index import TagIndex, TagRecord
from mirror.store.links import RepoLinks
from mirror.store.xprocess import SharedPart
from tests.support.tmpfs import tmpfs
from tests.support.waiting import until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 2 MiB (tmpfs), to run out of space for real."""
    with tmpfs(tmp_path / "small", "2m") as mnt:
        yield mnt

def fill(path: Path) -> None:
    """Write to `path` until the file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC

def lost(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("mirror_index_writes_lost_total", {"reason": reason})
    return value or 0.0

async def test_index_writer_survives_a_full_disk(small_disk: Path) -> None:
    """SQLite rolls a transaction back by itself on SQLITE_FULL; the writer's own ROLLBACK then
    raised and ended the flusher, after which nothing more landed. The writer survives, counts
    the writes it lost, keeps its queue bounded, and writes again once there is room."""
    metrics = Metrics()
    db = Database(small_disk / "index.db", metrics, max_pending=500)
    await db.start()
    try:
        fill(small_disk / "filler")
        for i in range(400):  # more pages than the full disk has: the commit fails
            db.write("INSERT INTO tags (upstream, repo, tag, checked_at) VALUES (?, ?, ?, ?)",
                     ("u", "r" * 500, f"t{i}", 0.0))
        await until("the failed batch is counted", lambda: lost(metrics, "error") >= 400)
        for i in range(600):  # faster than any flush: the queue stays bounded
            db.write("INSERT INTO tags (upstream, repo, tag, checked_at) VALUES (?, ?, ?, ?)",
                     ("u", "q", f"o{i}", 0.0))
        assert lost(metrics, "overflow") == 100
        await until("the queue drained", lambda: db.backlog == 0)
        (small_disk / "filler").unlink()
        db.write("INSERT INTO tags (upstream, repo, tag, checked_at) VALUES (?, ?, ?, ?)",
                 ("u", "r", "after", 1.0))
        await until("a write lands after space came back", lambda: db.query_one(
            "SELECT checked_at FROM tags WHERE tag='after'") is not None)
    finally:
        await db.close()

async def test_commit_refuses_a_temp_path_that_names_another_file(tmp_path: Path) -> None:
    """The commit renames by path, and a download's .part name is fixed: if tmp/ was swept and
    another process made a new part at that name, the rename would publish bytes nobody
    verified. The commit checks that the path is still the file it hashed."""
    db = Database(tmp_path / "index.db")
    tier = DiskTier(tmp_path, db, 1 << 30, Metrics())
    tier.open_sync()
    data = b"verified bytes" * 1000
    digest = Digest.of(data)
    for replaced in (True, False):
        part = SharedPart(tier, digest, len(data))
        part.take_over_sync()
        part.write_sync(data)
        part.path.unlink()  # a sweep of tmp/ ...
        if replaced:  # ... and another process's new part of the same digest
            part.path.write_bytes(b"x" * len(data))
        with pytest.raises(CacheConflict):
            await tier.commit(part)
        assert not tier.path(digest).exists() and tier.entry(digest) is None
        part.path.unlink(missing_ok=True)
    db.close_sync()

async def test_negative_tag_records_are_bounded_and_replace_a_deleted_tag(
        tmp_path: Path) -> None:
    db = Database(tmp_path / "index.db")
    await db.start()
    try:
        tags = TagIndex(db, negative_entries=100)
        tags.put("u", "r", "gone", TagRecord("sha256:" + "a" * 64, "mt", 1, 1.0))
        for i in range(1000):
            tags.put("u", "r", f"no-{i}", TagRecord(None, None, None, 2.0))
        assert sum(tags.get("u", "r", f"no-{i}") is not None for i in range(1000)) == 100
        tags.put("u", "r", "gone", TagRecord(None, None, None, 3.0))  # deleted upstream
        assert tags.get("u", "r", "gone") == TagRecord(None, None, None, 3.0)
        await until("the deleted tag's row is gone", lambda: db.query_one(
            "SELECT 1 FROM tags WHERE tag='gone'") is None)
        assert db.query_one("SELECT COUNT(*) FROM tags") == (0,)
    finally:
        await db.close()

async def test_repository_links_are_bounded(tmp_path: Path) -> None:
    """Links come from repository names clients choose: the table keeps at most max_rows,
    dropping links of content no longer cached first."""
    db = Database(tmp_path / "index.db")
    await db.start()
    try:
        cached = str(Digest.of(b"cached"))
        db.write("INSERT INTO content (digest, size, last_access, stored_at) VALUES (?, 6, 0, 0)",
                 (cached,))
        links = RepoLinks(db, max_rows=100)
        for i in range(95):
            links.add("u", f"pulled/{i:04d}", [cached])
        for i in range(6):  # the 101st row: trimmed to 90, links of uncached content first
            links.add("u", f"made-up/{i:04d}", [str(Digest.of(str(i).encode()))])
        await until("the table is trimmed", lambda: db.backlog == 0 and db.query_one(
            "SELECT COUNT(*) FROM links") == (90,))
        assert db.query_one("SELECT COUNT(*) FROM links WHERE digest != ?", (cached,)) == (0,)
        for i in range(5000):  # however many names clients make up
            links.add("u", f"made-up/{i:04d}", [cached])
        await until("the queue drained", lambda: db.backlog == 0)
        count = db.query_one("SELECT COUNT(*) FROM links")
        assert count is not None and count[0] <= 100
    finally:
        await db.close()
