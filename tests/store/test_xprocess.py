"""The cross-process download files (mirror/cache/xprocess.py) and the server.workers key:
locks that die with their process, parts resumed only when their meta describes them, errors
relayed by kind. The end-to-end behaviour is in tests/e2e/test_workers.py."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.config import parse_config
from mirror.observe.metrics import Metrics
from mirror.oci.errors import BlobUnknown, ConfigError, DiskFull, UpstreamUnavailable, VerificationError
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.xprocess import (
    DigestLock,
    PartFiles,
    PartLost,
    PartMeta,
    SharedPart,
    read_meta,
    relayed_error,
    write_meta,
)

DATA = hashlib.shake_256(b"xprocess").digest(3 * 1024 * 1024 + 5)
DIGEST = Digest.of(DATA)


@pytest.fixture
async def tier(tmp_path: Path) -> AsyncIterator[DiskTier]:
    db = Database(tmp_path / "index.db")
    t = DiskTier(tmp_path, db, 1 << 30, Metrics())
    t.open_sync()
    yield t
    db.close_sync()


def test_lock_is_exclusive_and_removed_on_release(tmp_path: Path) -> None:
    path = tmp_path / "d.lock"
    a, b = DigestLock(path), DigestLock(path)
    assert a.try_acquire()
    assert path.read_text().strip() == str(os.getpid())  # who holds it
    assert not b.try_acquire()  # flock: another open file description, even in this process
    a.release()
    assert not path.exists()
    assert b.try_acquire()
    b.release()


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    path = tmp_path / "d.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from pathlib import Path\n"
         "from mirror.store.xprocess import DigestLock\n"
         f"assert DigestLock(Path({str(path)!r})).try_acquire()\n"
         "print('held', flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        lock = DigestLock(path)
        assert not lock.try_acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 5
        while not lock.try_acquire():
            assert time.monotonic() < deadline, "the kernel should drop a dead holder's lock"
            time.sleep(0.01)
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


async def test_a_dead_holders_part_is_resumed_and_rehashed(tier: DiskTier) -> None:
    files = PartFiles.of(tier.tmp_dir, DIGEST)
    files.part.write_bytes(DATA[:1_000_000])
    write_meta(files.meta, PartMeta(files.part.stat().st_ino, True, len(DATA), 1))
    part = SharedPart(tier, DIGEST, len(DATA))
    resumed = part.take_over_sync()
    assert resumed is not None and resumed.size == len(DATA)
    assert part.written == part.resumed_from == 1_000_000
    assert read_meta(files.meta).pid == os.getpid()  # type: ignore[union-attr]
    rest = [DATA[1_000_000:2_000_000], DATA[2_000_000:]]
    part.hash_sync(rest)
    part.append_sync(rest)
    assert part.matches()  # the re-hashed prefix plus the new bytes: the whole digest
    await tier.commit(part)
    part.committed_sync()
    assert tier.path(DIGEST).read_bytes() == DATA
    assert not files.meta.exists() and not files.part.exists()


@pytest.mark.parametrize("meta", ["none", "not-started", "other-inode", "error"])
def test_a_part_without_usable_meta_is_discarded(tier: DiskTier, meta: str) -> None:
    files = PartFiles.of(tier.tmp_dir, DIGEST)
    files.part.write_bytes(b"left by a holder that died early")
    ino = files.part.stat().st_ino
    if meta == "not-started":
        write_meta(files.meta, PartMeta(ino, False, None, 1))
    elif meta == "other-inode":
        write_meta(files.meta, PartMeta(ino + 1, True, len(DATA), 1))
    elif meta == "error":
        write_meta(files.meta, PartMeta(ino, True, None, 1, {"kind": "BlobUnknown"}))
    part = SharedPart(tier, DIGEST, None)
    assert part.take_over_sync() is None
    assert part.written == 0 and files.part.stat().st_size == 0
    assert files.part.stat().st_ino == part.ino
    assert read_meta(files.meta) == PartMeta(part.ino, False, None, os.getpid(),
                                             written_at=read_meta(files.meta).written_at)  # type: ignore[union-attr]
    part.abort_sync()


def test_a_tailed_part_that_was_replaced_is_lost(tier: DiskTier) -> None:
    files = PartFiles.of(tier.tmp_dir, DIGEST)
    files.part.write_bytes(DATA[:100])
    write_meta(files.meta, PartMeta(files.part.stat().st_ino, True, len(DATA), 1))
    tail = SharedPart(tier, DIGEST, None)
    meta = read_meta(files.meta)
    assert meta is not None and tail.open_tail(meta)
    assert tail.tail_size() == 100
    files.part.unlink()  # restarted from scratch by another process
    files.part.write_bytes(b"")
    write_meta(files.meta, PartMeta(files.part.stat().st_ino, False, None, 1))
    with pytest.raises(PartLost):
        tail.take_over_sync()
    tail.abort_sync()
    assert files.part.exists()  # a tail never deletes a part


def test_a_failed_holder_deletes_only_its_own_part(tier: DiskTier) -> None:
    files = PartFiles.of(tier.tmp_dir, DIGEST)
    part = SharedPart(tier, DIGEST, None)
    assert part.take_over_sync() is None
    part.publish_error(VerificationError("bad bytes"))
    part.discard_sync()
    assert not files.part.exists()
    meta = read_meta(files.meta)
    assert meta is not None and meta.ino == part.ino and meta.error is not None
    assert isinstance(relayed_error(meta.error), VerificationError)
    part.abort_sync()


def test_relayed_errors_keep_their_kind() -> None:
    for exc in (BlobUnknown("gone"), DiskFull("full"), VerificationError("bad")):
        assert type(relayed_error({"kind": type(exc).__name__, "message": "m"})) is type(exc)
    assert type(relayed_error({"kind": "SomethingElse"})) is UpstreamUnavailable


def test_server_workers_key() -> None:
    base = {"offline": True}
    assert parse_config(base).server.workers == 1
    assert parse_config({**base, "server": {"workers": 3}}).server.workers == 3
    assert parse_config({**base, "server": {"workers": "auto"}}).server.workers == (
        os.cpu_count() or 1)
    for bad in (0, -1, 65, "two", True, 1.5):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "server": {"workers": bad}})
        assert e.value.problems[0].startswith("server.workers: ")
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "server": {"threads": 2}})
    assert e.value.problems == ["server.threads: unknown key"]


async def test_a_worker_learns_what_another_one_evicted(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tiers on one directory and index, as two workers: what the evicting one deletes,
    the other forgets at its next catch-up (the eviction log), unless the file came back."""
    from mirror.fetch.shared import SharedDownloads

    dbs = [Database(tmp_path / "index.db") for _ in range(2)]
    primary, other = (DiskTier(tmp_path, db, 1 << 30, Metrics()) for db in dbs)
    shared = SharedDownloads(other, dbs[1])  # before open_sync, as build_services does
    for t in (primary, other):
        t.open_sync(sweep=False)
    blobs = [hashlib.shake_256(f"evict{i}".encode()).digest(1000 + i) for i in range(3)]
    digests = [Digest.of(b) for b in blobs]
    for d, b in zip(digests, blobs, strict=True):
        await primary.put_bytes(d, b)
    await dbs[0].flush()
    shared.learn_from_index()
    assert other.used == primary.used == 3003

    await primary.delete(digests[0])  # evicted for good
    await primary.delete(digests[1])
    await primary.put_bytes(digests[1], blobs[1])  # evicted, then stored again
    await dbs[0].flush()
    shared.learn_from_index()
    assert other.entry(digests[0]) is None and other.entry(digests[1]) is not None
    assert other.used == primary.used == 2003

    # Older rows are pruned as new ones are written (here: all rows older than this one).
    monkeypatch.setattr("mirror.store.evictlog.KEEP", 0.0)
    await primary.delete(digests[2])
    await dbs[0].flush()
    assert dbs[0].query("SELECT digest FROM evictions") == [(str(digests[2]),)]
    shared.learn_from_index()
    assert other.entry(digests[2]) is None
    await primary.delete(digests[1])  # numbered after everything before, pruned or not
    await dbs[0].flush()
    shared.learn_from_index()
    assert other.entry(digests[1]) is None and other.used == primary.used == 0
    for db in dbs:
        db.close_sync()
