"""The OCI pull API against a real CNCF distribution upstream, through a recording tap."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import Catalog, RecordingProxy, fetch
from tests.support.mirror_app import ALL_MANIFEST_TYPES, make_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ACCEPT_ALL = ", ".join(ALL_MANIFEST_TYPES)


@pytest.fixture
async def mirror(aiohttp_client: ClientFactory, registry_tap: RecordingProxy,
                 tmp_path: Path) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app({"docker.io": registry_tap.url}, tmp_path / "cache",
                                         prefetch={"enabled": False}))


def upstream_head(registry_tap: RecordingProxy, repo: str, ref: str) -> dict[str, str]:
    import urllib.request

    req = urllib.request.Request(f"{registry_tap.url}/v2/{repo}/manifests/{ref}", method="HEAD",
                                 headers={"Accept": ACCEPT_ALL})
    with urllib.request.urlopen(req) as r:
        return {k.lower(): v for k, v in r.headers.items()}


REFS = ["library/busybox:latest", "library/busybox:1.36", "library/alpine-ish:3.19",
        "library/alpine-ish:3.19-oci", "library/multiarch:latest", "org/team/app:1.0",
        "library/big:latest"]


@pytest.mark.parametrize("ref", REFS)
async def test_head_matches_upstream(mirror: TestClient[Any, Any], registry_tap: RecordingProxy,
                                     catalog: Catalog, ref: str) -> None:
    repo, tag = ref.split(":")
    want = upstream_head(registry_tap, repo, tag)
    r = await mirror.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT_ALL})
    assert r.status == 200
    assert r.headers["Docker-Content-Digest"] == want["docker-content-digest"] == catalog[ref].digest
    assert r.headers["Content-Type"] == want["content-type"]
    assert r.headers["Content-Length"] == want["content-length"]
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # the GET that follows is byte-identical to what was pushed
    r = await mirror.get(f"/v2/{repo}/manifests/{catalog[ref].digest}",
                         headers={"Accept": ACCEPT_ALL})
    assert r.status == 200
    assert await r.read() == catalog[ref].manifest


async def test_many_accept_lines_and_short_names(mirror: TestClient[Any, Any],
                                                 catalog: Catalog) -> None:
    # skopeo/dockerd send one Accept line per type; dockerd names Docker Hub images without library/
    r = await mirror.get("/v2/busybox/manifests/latest",
                         headers=[("Accept", mt) for mt in ALL_MANIFEST_TYPES])
    assert r.status == 200
    assert r.headers["Docker-Content-Digest"] == catalog["library/busybox:latest"].digest


async def test_client_without_index_support_gets_amd64(mirror: TestClient[Any, Any],
                                                       catalog: Catalog) -> None:
    r = await mirror.get("/v2/library/busybox/manifests/latest",
                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert r.status == 200
    amd64 = catalog["library/busybox:latest"].child("amd64")
    assert r.headers["Docker-Content-Digest"] == amd64.digest
    assert await r.read() == amd64.manifest


async def test_index_by_digest_is_never_rewritten(mirror: TestClient[Any, Any],
                                                  catalog: Catalog) -> None:
    # Distribution rewrites an index to its amd64 image only for a tag: a digest answers itself.
    index = catalog["library/busybox:latest"]
    for method in ("GET", "HEAD"):
        r = await mirror.request(method, f"/v2/library/busybox/manifests/{index.digest}",
                                 headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        assert r.status == 200
        assert r.headers["Docker-Content-Digest"] == index.digest
        if method == "GET":
            assert await r.read() == index.manifest


async def test_blob_get_head_and_ranges(mirror: TestClient[Any, Any], catalog: Catalog) -> None:
    img = catalog["library/alpine-ish:3.19"]
    layer = img.layers[0]
    url = f"/v2/{img.repo}/blobs/{layer.digest}"
    r = await mirror.head(url)  # cold HEAD: answered by the upstream's HEAD
    assert r.status == 200
    assert r.headers["Content-Length"] == str(layer.size)
    assert r.headers["Docker-Content-Digest"] == layer.digest
    r = await mirror.get(url)
    body = await r.read()
    assert r.status == 200 and r.headers["Accept-Ranges"] == "bytes"
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
    r = await mirror.get(url, headers={"Range": "bytes=100-199"})  # from the hot tier
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes 100-199/{layer.size}"
    assert await r.read() == body[100:200]
    r = await mirror.get(url, headers={"Range": "bytes=-10"})
    assert r.status == 206 and await r.read() == body[-10:]
    r = await mirror.get(url, headers={"Range": f"bytes={layer.size}-"})
    assert r.status == 416
    assert r.headers["Content-Range"] == f"bytes */{layer.size}"
    assert (await r.json())["errors"][0]["code"] == "RANGE_INVALID"


async def test_head_of_uncached_blob_is_an_upstream_head(mirror: TestClient[Any, Any],
                                                         registry_tap: RecordingProxy,
                                                         catalog: Catalog) -> None:
    # HEAD says whether and how big; it downloads nothing (a GET that follows does).
    img = catalog["org/team/app:1.0"]
    layer = img.layers[0]
    url = f"/v2/{img.repo}/blobs/{layer.digest}"
    r = await mirror.head(url)
    assert r.status == 200
    assert r.headers["Content-Length"] == str(layer.size)
    assert r.headers["Docker-Content-Digest"] == layer.digest
    await asyncio.to_thread(registry_tap.wait_idle)
    assert [q.method for q in registry_tap.filter(kind="blob")] == ["HEAD"], registry_tap.describe()
    r = await mirror.head(f"/v2/{img.repo}/blobs/sha256:{'1' * 64}")
    assert r.status == 404
    registry_tap.clear()
    r = await mirror.get(url)
    assert r.status == 200
    assert "sha256:" + hashlib.sha256(await r.read()).hexdigest() == layer.digest
    assert [q.method for q in registry_tap.filter(kind="blob")] == ["GET"]
    r = await mirror.head(url)  # cached now: no upstream request
    assert r.status == 200 and r.headers["Content-Length"] == str(layer.size)
    assert registry_tap.count(kind="blob") == 1


async def test_unknown_content_is_404_with_oci_body(mirror: TestClient[Any, Any],
                                                    catalog: Catalog) -> None:
    r = await mirror.get("/v2/library/busybox/manifests/no-such-tag")
    assert r.status == 404
    assert (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = await mirror.get("/v2/library/busybox/blobs/sha256:" + "0" * 64)
    assert r.status == 404
    assert (await r.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
    r = await mirror.get("/v2/library/nosuchrepo/manifests/latest")
    assert r.status == 404


BAD_REQUESTS = [
    ("GET", "/v2/UPPER/manifests/latest", "NAME_INVALID"),
    ("GET", "/v2/library/busybox/referrers/sha256:abc", "DIGEST_INVALID"),
    ("GET", "/v2/" + "a/" * 200 + "b/manifests/latest", "NAME_INVALID"),
    ("GET", "/v2/evil.example.com/library/busybox/manifests/latest", "NAME_UNKNOWN"),
    ("GET", "/v2/library/busybox/manifests/latest?ns=evil.example.com", "NAME_UNKNOWN"),
    ("GET", "/v2/library/%2e%2e/%2e%2e/etc/manifests/latest", "NAME_INVALID"),
    ("GET", "/v2/library/../../etc/passwd/manifests/latest", "NAME_INVALID"),
    ("GET", "/v2/library/busybox/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd", "NAME_INVALID"),
    ("GET", "/v2/library/busybox/manifests/..%2f..%2fx", "NAME_INVALID"),
    ("GET", "/v2/library/busybox/nothing/here", "NAME_INVALID"),
    ("PUT", "/v2/library/busybox/manifests/latest", "UNSUPPORTED"),
    ("POST", "/v2/library/busybox/blobs/uploads/", "UNSUPPORTED"),
    ("DELETE", "/v2/library/busybox/manifests/latest", "UNSUPPORTED"),
    ("PATCH", "/v2/library/busybox/blobs/uploads/x", "UNSUPPORTED"),
]


# References that name nothing: the spec's end-2 and end-3 fail only with 404 (distribution
# answers the conformance suite's `.INVALID_MANIFEST_NAME` so), never 400 TAG_INVALID.
CANNOT_EXIST = [
    ("/v2/library/busybox/manifests/.INVALID_MANIFEST_NAME", "MANIFEST_UNKNOWN"),
    ("/v2/library/busybox/manifests/bad:digest", "MANIFEST_UNKNOWN"),
    ("/v2/library/busybox/manifests/sha256:abc", "MANIFEST_UNKNOWN"),
    ("/v2/library/busybox/manifests/" + "t" * 200, "MANIFEST_UNKNOWN"),
    ("/v2/library/busybox/manifests/-tag", "MANIFEST_UNKNOWN"),
    ("/v2/library/busybox/blobs/md5:" + "0" * 32, "BLOB_UNKNOWN"),
    ("/v2/library/busybox/blobs/sha256:" + "Z" * 64, "BLOB_UNKNOWN"),
    ("/v2/library/busybox/blobs/sha256:not-a-digest", "BLOB_UNKNOWN"),
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("path", "code"), CANNOT_EXIST)
async def test_reference_that_cannot_exist_is_404_unknown(
        mirror: TestClient[Any, Any], registry_tap: RecordingProxy, method: str, path: str,
        code: str) -> None:
    reply = await asyncio.to_thread(fetch, str(mirror.make_url("/")).rstrip("/") + path, method)
    assert reply.status == 404, reply.body
    if method == "GET":
        assert json.loads(reply.body)["errors"][0]["code"] == code
    assert reply.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert registry_tap.count() == 0  # answered without asking the upstream


@pytest.mark.parametrize(("method", "path", "code"), BAD_REQUESTS)
async def test_bad_requests_get_4xx_oci_errors(mirror: TestClient[Any, Any],
                                               registry_tap: RecordingProxy, method: str,
                                               path: str, code: str) -> None:
    # A raw client: aiohttp's own would normalise "%2e%2e" away before sending.
    reply = await asyncio.to_thread(fetch, str(mirror.make_url("/")).rstrip("/") + path, method)
    assert reply.status is not None and 400 <= reply.status < 500, reply.body
    assert json.loads(reply.body)["errors"][0]["code"] == code
    assert registry_tap.count() == 0  # rejected before any upstream request


async def test_warm_pull_makes_no_upstream_request(mirror: TestClient[Any, Any],
                                                   registry_tap: RecordingProxy,
                                                   catalog: Catalog) -> None:
    async def pull(ref: str) -> None:
        repo, tag = ref.split(":")
        r = await mirror.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT_ALL})
        assert r.status == 200
        doc = json.loads(await r.read())
        for child in doc.get("manifests", []):
            r = await mirror.get(f"/v2/{repo}/manifests/{child['digest']}",
                                 headers={"Accept": ACCEPT_ALL})
            assert r.status == 200
            sub = json.loads(await r.read())
            for blob in [sub["config"], *sub["layers"]]:
                rb = await mirror.get(f"/v2/{repo}/blobs/{blob['digest']}")
                data = await rb.read()
                assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"]
        for blob in [doc["config"], *doc["layers"]] if "layers" in doc else []:
            rb = await mirror.get(f"/v2/{repo}/blobs/{blob['digest']}")
            data = await rb.read()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"]

    refs = ["library/busybox:latest", "library/multiarch:latest", "org/team/app:1.0"]
    for ref in refs:
        await pull(ref)
    cold = registry_tap.count()
    assert cold > 0
    registry_tap.clear()
    for ref in refs:
        await pull(ref)
    assert registry_tap.count() == 0, registry_tap.describe()


async def test_tag_revalidation_uses_head_not_get(aiohttp_client: ClientFactory,
                                                  registry_tap: RecordingProxy, catalog: Catalog,
                                                  tmp_path: Path) -> None:
    client = await aiohttp_client(make_app({"docker.io": registry_tap.url}, tmp_path / "c",
                                           cache={"tag_ttl": 0}, prefetch={"enabled": False}))
    url = "/v2/library/alpine-ish/manifests/3.19"
    assert (await client.get(url, headers={"Accept": ACCEPT_ALL})).status == 200
    registry_tap.clear()
    for _ in range(3):
        r = await client.get(url, headers={"Accept": ACCEPT_ALL})
        assert r.status == 200
        assert r.headers["Docker-Content-Digest"] == catalog["library/alpine-ish:3.19"].digest
    manifest_reqs = registry_tap.filter(kind="manifest")
    assert [m.method for m in manifest_reqs] == ["HEAD"] * 3, registry_tap.describe()


async def test_cache_survives_restart(aiohttp_client: ClientFactory, registry_tap: RecordingProxy,
                                      catalog: Catalog, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    app = make_app({"docker.io": registry_tap.url}, cache, prefetch={"enabled": False})
    first = await aiohttp_client(app)
    img = catalog["library/alpine-ish:3.19-oci"]
    assert (await first.get(f"/v2/{img.repo}/manifests/{img.tag}",
                            headers={"Accept": ACCEPT_ALL})).status == 200
    r = await first.get(f"/v2/{img.repo}/blobs/{img.layers[0].digest}")
    assert r.status == 200 and len(await r.read()) == img.layers[0].size
    await first.close()
    registry_tap.clear()
    second = await aiohttp_client(make_app({"docker.io": registry_tap.url}, cache,
                                           prefetch={"enabled": False}))
    r = await second.get(f"/v2/{img.repo}/manifests/{img.tag}", headers={"Accept": ACCEPT_ALL})
    assert r.status == 200 and r.headers["Docker-Content-Digest"] == img.digest
    r = await second.get(f"/v2/{img.repo}/blobs/{img.layers[0].digest}")
    assert r.status == 200 and len(await r.read()) == img.layers[0].size
    assert registry_tap.count() == 0, registry_tap.describe()


async def test_tags_list_and_referrers_pass_through(mirror: TestClient[Any, Any],
                                                    registry_tap: RecordingProxy,
                                                    catalog: Catalog) -> None:
    r = await mirror.get("/v2/library/busybox/tags/list")
    assert r.status == 200
    assert sorted((await r.json())["tags"]) == catalog.tags("library/busybox")
    r = await mirror.get("/v2/library/busybox/tags/list")  # briefly cached
    assert registry_tap.count(kind="tags") == 1
    digest = catalog["library/busybox:1.36"].digest
    r = await mirror.get(f"/v2/library/busybox/referrers/{digest}")
    up = registry_tap.filter(path_contains="/referrers/")
    assert len(up) == 1
    assert r.status == up[0].status  # distribution 2.8 has no referrers API: its 404 passes through


async def test_ns_is_echoed(mirror: TestClient[Any, Any], catalog: Catalog) -> None:
    r = await mirror.head("/v2/library/busybox/manifests/1.36?ns=docker.io",
                          headers={"Accept": ACCEPT_ALL})
    assert r.status == 200
    assert r.headers["OCI-Namespace"] == "docker.io"


async def test_v2_root(mirror: TestClient[Any, Any]) -> None:
    r = await mirror.get("/v2/")
    assert r.status == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
