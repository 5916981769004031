"""The ColdStore contract (mirror/store/base.py), as the uploader and the tiered store call it:
store, stat, read with ranges, delete, list, idempotent and concurrent writers of one digest.
Run against a real S3 server (SeaweedFS on loopback) and file://."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from mirror.config import ObjectStoreConfig
from mirror.oci.models import Digest
from mirror.store.base import ColdStore
from mirror.store.objectstore import ColdTier, build_store
from tests.store.conftest import MiB, blob, s3_tier


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ColdStore:
    if request.param == "file":
        return ColdTier(build_store(ObjectStoreConfig(url=f"file://{tmp_path / 'cold'}")))
    return s3_tier(request.getfixturevalue("seaweed"))


async def read_all(store: ColdStore, d: Digest, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in store.read(d, start, end)])


async def test_store_stat_read(store: ColdStore, tmp_path: Path) -> None:
    d, path, data = blob(tmp_path, 3 * MiB + 17)
    assert await store.stat(d) is None
    await store.put_file(d, path)
    assert await store.stat(d) == len(data)
    assert await read_all(store, d) == data


@pytest.mark.parametrize(("start", "end"), [(0, 0), (5, 9), (MiB - 1, MiB + 1), (100, None),
                                            (2 * MiB, 2 * MiB + 99), (2 * MiB + 16, None)])
async def test_read_ranges(store: ColdStore, tmp_path: Path, start: int, end: int | None) -> None:
    d, path, data = blob(tmp_path, 2 * MiB + 17, "range")
    await store.put_file(d, path)
    want = data[start:] if end is None else data[start:end + 1]
    assert await read_all(store, d, start, end) == want


async def test_delete(store: ColdStore, tmp_path: Path) -> None:
    d, path, _ = blob(tmp_path, 1000, "del")
    await store.put_file(d, path)
    assert await store.delete(d) is True
    assert await store.stat(d) is None
    assert await store.delete(d) is False
    assert d not in {x async for x, _ in store.list()}


async def test_list(store: ColdStore, tmp_path: Path) -> None:
    want: dict[Digest, int] = {}
    for i in range(3):
        d, path, data = blob(tmp_path, 1000 + i, f"list{i}")
        await store.put_file(d, path)
        want[d] = len(data)
    got = {d: size async for d, size in store.list()}
    assert got == want


async def test_put_is_idempotent(store: ColdStore, tmp_path: Path) -> None:
    d, path, data = blob(tmp_path, 4096, "idem")
    await store.put_file(d, path)
    await store.put_file(d, path)
    assert await store.stat(d) == len(data)
    assert [x async for x, _ in store.list()] == [d]


async def test_concurrent_writers_of_one_digest(store: ColdStore, tmp_path: Path) -> None:
    """Nodes racing to store the same content: one object, whole and right."""
    d, path, data = blob(tmp_path, 6 * MiB + 5, "race")
    copies = []
    for i in range(6):  # each writer has its own source file, as separate downloads would
        p = tmp_path / f"copy{i}"
        os.link(path, p)
        copies.append(p)
    await asyncio.gather(*(store.put_file(d, p) for p in copies))
    assert await store.stat(d) == len(data)
    assert hashlib.sha256(await read_all(store, d)).hexdigest() == d.hex
    assert [x async for x, _ in store.list()] == [d]


async def test_read_missing_raises(store: ColdStore, tmp_path: Path) -> None:
    d, _, _ = blob(tmp_path, 10, "missing")
    with pytest.raises(FileNotFoundError):
        await read_all(store, d)
