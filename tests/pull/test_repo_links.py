"""With access rules, shared content-addressed storage is no side door between repositories:
a digest cached for one repository is served for another only once it is known to belong
there (mirror/links.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import Catalog, RecordingProxy
from tests.support.certs import write_htpasswd
from tests.support.mirror_app import ALL_MANIFEST_TYPES, make_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ACCEPT = ", ".join(ALL_MANIFEST_TYPES)
RULES = [
    {"allow": True, "users": ["alice"], "repositories": ["library/**"]},
    {"allow": True, "users": ["bob"]},
]


@pytest.fixture
async def mirror(aiohttp_client: ClientFactory, registry_tap: RecordingProxy,
                 tmp_path: Path) -> TestClient[Any, Any]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "alice-pw-1234",
                                                     "bob": "bob-pw-1234"})
    return await aiohttp_client(make_app(
        {"docker.io": registry_tap.url}, tmp_path / "cache", prefetch={"enabled": False},
        auth={"htpasswd": str(htpasswd), "rules": RULES}))


def creds(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{user}-pw-1234".encode()).decode()
    return {"Authorization": f"Basic {token}", "Accept": ACCEPT}


async def test_cached_digest_is_not_served_through_another_repository(
        mirror: TestClient[Any, Any], registry_tap: RecordingProxy, catalog: Catalog) -> None:
    private = catalog["org/team/app:1.0"]
    public = catalog["library/alpine-ish:3.19"]
    public_blobs = {b.digest for b in public.blobs}
    own = next(b for b in private.layers if b.digest not in public_blobs)
    shared = next(b for b in private.layers if b.digest in public_blobs)

    # bob pulls the private image: everything it names is now cached
    r = await mirror.get(f"/v2/{private.repo}/manifests/{private.tag}", headers=creds("bob"))
    assert r.status == 200
    for b in private.blobs:
        r = await mirror.get(f"/v2/{private.repo}/blobs/{b.digest}", headers=creds("bob"))
        assert r.status == 200 and len(await r.read()) == b.size

    # alice may pull library/** only; naming the private digests under a public repository
    # must not hand them over, though they sit in the cache
    registry_tap.clear()
    r = await mirror.get(f"/v2/{public.repo}/blobs/{own.digest}", headers=creds("alice"))
    assert r.status == 404
    assert json.loads(await r.read())["errors"][0]["code"] == "BLOB_UNKNOWN"
    r = await mirror.get(f"/v2/{public.repo}/manifests/{private.digest}", headers=creds("alice"))
    assert r.status == 404
    assert [(q.method, q.kind) for q in registry_tap.requests] == [("HEAD", "blob"),
                                                                  ("HEAD", "manifest")]

    # her own image, whose base layer bob's pull cached, is served from the cache: the
    # manifest pulled through her repository links its layers, no HEAD needed
    registry_tap.clear()
    r = await mirror.get(f"/v2/{public.repo}/manifests/{public.tag}", headers=creds("alice"))
    assert r.status == 200
    r = await mirror.get(f"/v2/{public.repo}/blobs/{shared.digest}", headers=creds("alice"))
    assert r.status == 200 and len(await r.read()) == shared.size
    assert registry_tap.count(kind="blob") == 0, registry_tap.describe()

    # and bob's warm pull asks the upstream nothing
    registry_tap.clear()
    for b in private.blobs:
        r = await mirror.get(f"/v2/{private.repo}/blobs/{b.digest}", headers=creds("bob"))
        assert r.status == 200
    assert registry_tap.count() == 0, registry_tap.describe()


async def test_a_digest_the_upstream_confirms_is_linked_once(
        mirror: TestClient[Any, Any], registry_tap: RecordingProxy, catalog: Catalog) -> None:
    img = catalog["library/alpine-ish:3.19-oci"]
    layer = img.layers[0]
    # by digest, never through a tag: the first request asks the upstream (HEAD, then GET)
    for _ in range(3):
        r = await mirror.get(f"/v2/{img.repo}/blobs/{layer.digest}", headers=creds("bob"))
        assert r.status == 200 and len(await r.read()) == layer.size
    assert registry_tap.count(method="HEAD", kind="blob") == 1, registry_tap.describe()
    assert registry_tap.count(method="GET", kind="blob") == 1
