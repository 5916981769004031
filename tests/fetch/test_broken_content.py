"""Content that is not what it claims (issue #16, items 16 and 17): a cached file deleted behind
the mirror's back, an upstream that answers Content-Length 0 for a non-empty digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import Catalog, Fault, RecordingProxy
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

async def test_zero_content_length_for_a_non_empty_digest_never_completes(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    """An upstream that answers 200 with Content-Length 0 for a non-empty digest: no GET, Range
    GET or HEAD may complete (a zero-length body has no last byte to hold back until the
    digest verified); each gets the OCI error of a body that did not verify."""
    cache = tmp_path / "cache"
    mirror = await aiohttp_client(make_app({"docker.io": registry_tap.url}, cache,
                                           prefetch={"enabled": False}))
    layer = catalog["library/alpine-ish:3.19"].layers[0]
    registry_tap.set_fault(Fault("status", status=200, body=b"", match=f"/blobs/{layer.digest}"))
    url = f"/v2/library/alpine-ish/blobs/{layer.digest}"
    for method, headers in (("GET", {"Range": "bytes=0-99"}), ("GET", {}), ("HEAD", {})):
        r = await mirror.request(method, url, headers=headers)
        body = await r.read()
        assert r.status == 502, (method, headers, r.status, r.headers)
        if method == "GET":
            assert json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
    assert registry_tap.fault_hits >= 3
    assert not blob_file(cache, layer.digest).exists()
    registry_tap.clear_fault()  # the upstream recovers: the real bytes are served and cached
    r = await mirror.get(url)
    assert r.status == 200
    assert "sha256:" + hashlib.sha256(await r.read()).hexdigest() == layer.digest
