"""Storage faults a mirror meets in operation (issue #16, items 15-18): files deleted behind its
back, upstreams that lie about lengths, a full disk under the index database, maintenance tools
run on a live cache directory."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import Catalog, RecordingProxy
from tests.support.mirror_app import make_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def blob_file(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest[7:9] / digest[7:]


async def test_a_hit_whose_file_was_deleted_is_fetched_again(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    """Single process: an operator deleted a cached file (or a delete raced a re-commit). The
    entry is forgotten and the blob fetched again, as the worker path does; never a 500."""
    cache = tmp_path / "cache"
    mirror = await aiohttp_client(make_app({"docker.io": registry_tap.url}, cache,
                                           prefetch={"enabled": False}))
    layer = catalog["library/alpine-ish:3.19"].layers[0]
    url = f"/v2/library/alpine-ish/blobs/{layer.digest}"
    r = await mirror.get(url)
    assert r.status == 200 and "sha256:" + hashlib.sha256(await r.read()).hexdigest() == layer.digest
    blob_file(cache, layer.digest).unlink()
    registry_tap.clear()
    for _ in range(2):
        r = await mirror.get(url)
        body = await r.read()
        assert r.status == 200, body[:300]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
    assert registry_tap.count(method="GET", kind="blob") == 1, registry_tap.describe()
    assert blob_file(cache, layer.digest).exists()  # cached again
    r = await mirror.head(url)
    assert r.status == 200 and r.headers["Content-Length"] == str(layer.size)
