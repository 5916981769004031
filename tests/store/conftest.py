"""Shared by the store contract suites: tiers on a temp directory, test blobs."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mirror.config import ObjectStoreConfig, Secret
from mirror.observe.metrics import Metrics
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.objectstore import ColdTier, build_store
from tests.support.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3

MiB = 1 << 20


def s3_tier(seaweed: SeaweedS3) -> ColdTier:
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(bucket)
    return ColdTier(build_store(ObjectStoreConfig(
        url=f"s3://{bucket}/some/prefix", endpoint=seaweed.endpoint, region=REGION,
        access_key_id=ACCESS_KEY, secret_access_key=Secret(SECRET_KEY))))


def blob(tmp_path: Path, size: int, seed: str = "x") -> tuple[Digest, Path, bytes]:
    data = hashlib.shake_256(seed.encode()).digest(size)
    path = tmp_path / f"src-{seed}-{size}"
    path.write_bytes(data)
    return Digest.of(data), path, data


async def commit_bytes(tier: DiskTier, digest: Digest, data: bytes,
                       expected_size: int | None = None) -> None:
    """What the fetcher does with a download: write into a temp file off the loop, commit."""
    temp = tier.new_temp(digest, expected_size)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, temp.write_sync, data)
    await tier.commit(temp)


async def until(what: str, check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll `check` on the loop (background tasks run meanwhile)."""
    try:
        async with asyncio.timeout(seconds):
            while not check():  # noqa: ASYNC110 - state other tasks change, no event to wait on
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
async def hot_db(tmp_path: Path) -> AsyncIterator[tuple[DiskTier, Database]]:
    db = Database(tmp_path / "hot" / "index.db")
    tier = DiskTier(tmp_path / "hot", db, 1 << 40, Metrics())
    tier.open_sync()
    await db.start()
    yield tier, db
    await db.close()
