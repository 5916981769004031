"""The ContentStore contract (mirror/store/base.py) on the hot tier, through the operations the
fetcher, the service and the importers call: temp file, commit (verified or nothing), entries,
pins, accounting rebuilt from disk; and the budget kept by the background evictor, which a
commit only signals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mirror.observe.metrics import Metrics
from mirror.oci.errors import VerificationError
from mirror.oci.models import MT_OCI_MANIFEST, Digest
from mirror.store.base import ContentStore
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.eviction import Evictor
from tests.store.conftest import MiB, blob, commit_bytes, until


async def test_commit_makes_verified_content_visible(hot_db: tuple[DiskTier, Database],
                                                     tmp_path: Path) -> None:
    tier, _ = hot_db
    store: ContentStore = tier
    d, _, data = blob(tmp_path, 2 * MiB + 3, "commit")
    assert store.entry(d) is None
    await commit_bytes(tier, d, data, len(data))
    entry = store.entry(d)
    assert entry is not None and entry.size == len(data) and not entry.is_manifest
    assert store.path(d).read_bytes() == data
    assert store.read_bytes_sync(d) == data
    assert store.used == len(data)
    assert list((tier.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("case", ["wrong bytes", "short", "size differs"])
async def test_commit_of_unverified_content_leaves_nothing(hot_db: tuple[DiskTier, Database],
                                                           tmp_path: Path, case: str) -> None:
    tier, _ = hot_db
    d, _, data = blob(tmp_path, 4096, "bad")
    body, expected = {"wrong bytes": (b"\0" + data[1:], None), "short": (data[:-1], None),
                      "size differs": (data, len(data) + 1)}[case]
    with pytest.raises(VerificationError):
        await commit_bytes(tier, d, body, expected)
    assert tier.entry(d) is None
    assert not tier.path(d).exists()
    assert tier.used == 0
    assert list((tier.root / "tmp").iterdir()) == []  # the temp file is gone too


async def test_put_bytes_keeps_a_manifest_with_its_media_type(
        hot_db: tuple[DiskTier, Database]) -> None:
    tier, _ = hot_db
    body = b'{"schemaVersion":2}'
    d = Digest.of(body)
    await tier.put_bytes(d, body, MT_OCI_MANIFEST, is_manifest=True)
    entry = tier.entry(d)
    assert entry is not None and entry.is_manifest and entry.media_type == MT_OCI_MANIFEST
    with pytest.raises(VerificationError):
        await tier.put_bytes(Digest.of(b"other"), body)


async def test_concurrent_commits_of_one_digest(hot_db: tuple[DiskTier, Database],
                                                tmp_path: Path) -> None:
    """Two downloads of the same content racing to commit: one entry, counted once."""
    tier, _ = hot_db
    d, _, data = blob(tmp_path, 3 * MiB, "race")
    await asyncio.gather(*(commit_bytes(tier, d, data) for _ in range(4)))
    assert tier.path(d).read_bytes() == data
    assert tier.used == len(data) and tier.objects == 1


async def test_commit_signals_and_never_waits_for_eviction(tmp_path: Path) -> None:
    """Past the high watermark a commit returns at once; the evictor (a background task) then
    brings usage to the low watermark, least recently used first, skipping pinned content, and
    takes content whose cold copy is pending last, after its guard."""
    db = Database(tmp_path / "index.db")
    tier = DiskTier(tmp_path, db, 10 * MiB, Metrics(), 0.9, 0.5)
    tier.open_sync()
    await db.start()
    release = asyncio.Event()
    guarded: list[str] = []

    async def slow_guard(key: str, _timeout: float) -> bool:
        guarded.append(key)
        await release.wait()  # an object store that does not answer
        pending.discard(key)  # the upload finished
        return True

    pending: set[str] = set()
    evictor = Evictor(tier, Metrics(), guard=slow_guard, pending=pending.__contains__,
                      interval=0.05)
    task = asyncio.create_task(evictor.run())
    blobs = [blob(tmp_path, 2 * MiB, f"lru{i}") for i in range(5)]
    for d, _, data in blobs[:4]:
        await commit_bytes(tier, d, data)
        await asyncio.sleep(0.01)  # distinct last-use times
    digests = [d for d, _, _ in blobs]
    for d in (digests[0], digests[3]):
        tier.pin(d)  # being read
    pending.update({str(digests[1]), str(digests[2])})  # not yet copied to the cold tier
    last_d, _, last_data = blobs[4]
    await asyncio.wait_for(commit_bytes(tier, last_d, last_data), 5)  # 10 MiB: over 9 MiB
    assert tier.used == 10 * MiB  # the commit did not evict anything itself
    # The evictor frees what it can without waiting: the one neither read nor pending.
    await until("eviction of the unguarded victim", lambda: tier.entry(last_d) is None)
    await until("the guards are asked", lambda: sorted(guarded) == sorted(map(str, digests[1:3])))
    await asyncio.sleep(0.2)  # several evictor rounds: nothing more goes while guards wait
    assert all(tier.entry(d) is not None for d in digests[:4])
    assert len(guarded) == 2  # one guard per victim, not one per round
    release.set()
    await until("usage at the low watermark", lambda: tier.used <= 5 * MiB)
    assert tier.entry(digests[1]) is None and tier.entry(digests[2]) is None
    assert tier.entry(digests[0]) is not None and tier.entry(digests[3]) is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await db.close()


async def test_callbacks_hear_every_commit_and_use(tmp_path: Path) -> None:
    committed: list[tuple[str, bool]] = []
    touched: list[str] = []
    db = Database(tmp_path / "index.db")
    tier = DiskTier(tmp_path, db, 1 << 30, Metrics(),
                    on_commit=lambda d, m: committed.append((str(d), m)),
                    on_touch=lambda d: touched.append(str(d)))
    tier.open_sync()
    await db.start()
    d, _, data = blob(tmp_path, 1000, "cb")
    await commit_bytes(tier, d, data)
    body = b"{}"
    await tier.put_bytes(Digest.of(body), body, is_manifest=True)
    tier.touch(d)
    assert committed == [(str(d), False), (str(Digest.of(body)), True)]
    assert touched == [str(d)]
    await db.close()


async def test_accounting_is_rebuilt_from_disk(tmp_path: Path) -> None:
    """After a crash or a lost index, start-up counts what is really on disk: files removed
    behind its back are forgotten, files it never recorded are adopted, temp files swept."""
    root = tmp_path / "hot"
    db = Database(root / "index.db")
    tier = DiskTier(root, db, 1 << 40, Metrics())
    tier.open_sync()
    await db.start()
    blobs = [blob(tmp_path, 1000 * (i + 1), f"acct{i}") for i in range(3)]
    for d, _, data in blobs:
        await commit_bytes(tier, d, data)
    assert tier.used == 6000
    await db.close()

    tier.path(blobs[0][0]).unlink()  # deleted while the mirror was stopped
    (root / "index.db").unlink()  # and the index lost as well
    for extra in root.glob("index.db-*"):
        extra.unlink()
    (root / "tmp" / "half-done").write_bytes(b"x" * 500)

    db = Database(root / "index.db")
    metrics = Metrics()
    tier = DiskTier(root, db, 1 << 40, metrics)
    tier.open_sync()
    assert tier.used == 5000
    assert tier.entry(blobs[0][0]) is None
    assert all(tier.entry(d) is not None for d, _, _ in blobs[1:])
    assert list((root / "tmp").iterdir()) == []
    assert metrics.cache_bytes.labels("hot")._value.get() == 5000
    assert db.query("SELECT COUNT(*) FROM content") == [(2,)]
    db.close_sync()
