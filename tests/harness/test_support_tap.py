"""RecordingProxy: recording, transparent pass-through, and every fault mode."""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Callable

import aiohttp
import pytest

from tests.support import (
    Catalog,
    FakeRegistry,
    Fault,
    ImagePusher,
    RecordingProxy,
    fetch,
    free_port,
    layer_bytes,
)
from tests.support.images import MT_DOCKER_LIST, MT_OCI_INDEX

Tap = Callable[[str], RecordingProxy]


def _blob_url(tap: RecordingProxy, catalog: Catalog) -> tuple[str, bytes]:
    """URL (through the tap) and content of the ~1 MiB alpine-ish base layer."""
    img = catalog["library/alpine-ish:3.19"]
    layer = img.layers[0]
    direct = fetch(f"{catalog.registry_url}/v2/{img.repo}/blobs/{layer.digest}")
    return f"{tap.url}/v2/{img.repo}/blobs/{layer.digest}", direct.body


def test_records_requests_by_kind(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    img = catalog["library/busybox:latest"]
    assert fetch(registry_tap.url + "/v2/").status == 200
    head = fetch(
        f"{registry_tap.url}/v2/library/busybox/manifests/latest?ns=docker.io",
        "HEAD",
        [("Accept", MT_DOCKER_LIST), ("Accept", MT_OCI_INDEX)],  # two separate header lines
    )
    assert head.header("Docker-Content-Digest") == img.digest
    blob = img.child("amd64").layers[0]
    got = fetch(f"{registry_tap.url}/v2/library/busybox/blobs/{blob.digest}")
    assert len(got.body) == blob.size
    assert fetch(f"{registry_tap.url}/v2/library/busybox/tags/list").status == 200

    v2, manifest, layer, tags = registry_tap.requests
    assert (v2.kind, manifest.kind, layer.kind, tags.kind) == ("v2", "manifest", "blob", "tags")
    assert manifest.method == "HEAD" and manifest.query == "ns=docker.io"
    assert manifest.header_values("accept") == [MT_DOCKER_LIST, MT_OCI_INDEX]
    assert manifest.repo == "library/busybox" and manifest.status == 200
    assert registry_tap.count(kind="blob") == 1
    assert registry_tap.count(method="HEAD", path_contains="/manifests/") == 1
    assert registry_tap.bytes_sent(kind="blob") == blob.size
    assert registry_tap.bytes_sent(kind="manifest") == 0  # HEAD
    registry_tap.clear()
    assert registry_tap.requests == []


def test_passes_headers_redirects_and_challenges_unchanged(
    make_tap: Tap, make_fake_registry: Callable[..., FakeRegistry]
) -> None:
    fake = make_fake_registry(redirect_blobs=True)
    digest = fake.add_blob(b"blob content")
    tap = make_tap(fake.url)
    r = fetch(
        f"{tap.url}/v2/x/blobs/{digest}",
        headers=[("Accept", "a"), ("Accept", "b"), ("X-Custom", "1"), ("Proxy-Authorization", "p")],
    )
    assert r.status == 307  # not followed
    location = r.header("Location")
    assert location is not None and location.startswith(fake.cdn_url)
    seen = fake.requests[-1]
    assert seen.header_values("Accept") == ["a", "b"] and seen.header("X-Custom") == "1"
    assert seen.header("Proxy-Authorization") is None  # hop-by-hop: not forwarded
    assert fake.count(kind="cdn") == 0

    bearer = make_fake_registry(auth="bearer")
    tap2 = make_tap(bearer.url)
    r = fetch(tap2.url + "/v2/")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == f'Bearer realm="{bearer.token_url}",service="fake-registry"'


async def test_streams_big_blob_from_async_test(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    (layer,) = catalog["library/big:latest"].layers
    sha = hashlib.sha256()
    url = f"{registry_tap.url}/v2/library/big/blobs/{layer.digest}"
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.get(url) as resp:
        assert resp.status == 200 and resp.content_length == layer.size
        async for piece in resp.content.iter_chunked(1 << 20):
            sha.update(piece)
    assert "sha256:" + sha.hexdigest() == layer.digest
    registry_tap.wait_idle()
    assert registry_tap.bytes_sent(kind="blob") == layer.size


def test_fault_reset(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, body = _blob_url(registry_tap, catalog)
    registry_tap.set_fault(Fault("reset", offset=200_000, match="/blobs/", count=1))
    r = fetch(url)
    assert r.status == 200 and r.error is not None
    assert len(r.body) <= 200_000 < len(body)
    (rec,) = registry_tap.requests
    assert (rec.fault, rec.bytes_sent) == ("reset", 200_000)
    assert fetch(url).body == body  # count=1: the next request is clean


def test_fault_truncate(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, body = _blob_url(registry_tap, catalog)
    registry_tap.set_fault(Fault("truncate", offset=300_000))
    r = fetch(url)
    assert r.header("Content-Length") == str(len(body))  # full length announced...
    assert isinstance(r.error, http.client.IncompleteRead)
    assert r.body == body[:300_000]  # ...but only the first bytes sent, then a clean close


def test_fault_corrupt(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, body = _blob_url(registry_tap, catalog)
    registry_tap.set_fault(Fault("corrupt", offset=1000, match="/blobs/"))
    r = fetch(url)
    assert r.error is None and len(r.body) == len(body)
    assert [i for i in range(len(body)) if r.body[i] != body[i]] == [1000]


def test_fault_stall(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, body = _blob_url(registry_tap, catalog)
    registry_tap.set_fault(Fault("stall", offset=5000, seconds=0.6))
    r = fetch(url)
    assert r.body == body and r.seconds >= 0.6


def test_fault_stall_trips_a_read_timeout(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, _ = _blob_url(registry_tap, catalog)
    registry_tap.set_fault(Fault("stall", offset=5000, seconds=3))
    r = fetch(url, timeout=0.5)
    assert isinstance(r.error, TimeoutError) and len(r.body) == 5000


def test_fault_slow(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, body = _blob_url(registry_tap, catalog)
    rate = 2 * len(body)  # about half a second for the whole body
    registry_tap.set_fault(Fault("slow", rate=rate))
    r = fetch(url)
    assert r.body == body
    assert 0.4 <= r.seconds < 3


def test_fault_status(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, body = _blob_url(registry_tap, catalog)
    registry_tap.set_fault(Fault("status", status=429, headers={"Retry-After": "2"}, count=2))
    for _ in range(2):
        r = fetch(url)
        assert (r.status, r.header("Retry-After"), r.body) == (429, "2", b"")
    assert fetch(url).body == body
    assert registry_tap.fault_hits == 2
    registry_tap.set_fault(Fault("status", status=401, match="/manifests/"))
    assert fetch(f"{registry_tap.url}/v2/library/busybox/manifests/latest", "HEAD").status == 401
    assert fetch(url).status == 200  # match: blobs are untouched
    registry_tap.clear_fault()
    assert fetch(f"{registry_tap.url}/v2/library/busybox/manifests/latest", "HEAD").status == 200


def test_fault_refuse(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, _ = _blob_url(registry_tap, catalog)
    registry_tap.set_fault(Fault("refuse", method="GET"))
    r = fetch(url)
    assert r.status is None and isinstance(r.error, http.client.RemoteDisconnected)
    assert fetch(url, "HEAD").status == 200  # method filter


def test_body_faults_skip_head(registry_tap: RecordingProxy, catalog: Catalog) -> None:
    url, body = _blob_url(registry_tap, catalog)
    registry_tap.set_fault(Fault("truncate", offset=10, count=1))
    assert fetch(url, "HEAD").header("Content-Length") == str(len(body))
    assert registry_tap.fault_hits == 0  # the HEAD did not use up the single fault
    assert fetch(url).error is not None


async def test_fault_seen_by_aiohttp_client(
    make_tap: Tap, make_fake_registry: Callable[..., FakeRegistry]
) -> None:
    fake = make_fake_registry()
    layer = layer_bytes({"f": b"x" * 100_000}, gzip_level=0)
    digest = fake.add_blob(layer.read_bytes())
    tap = make_tap(fake.url)
    tap.set_fault(Fault("truncate", offset=1234))
    url = f"{tap.url}/v2/r/blobs/{digest}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


def test_push_through_tap_streams_request_bodies(registry_tap: RecordingProxy) -> None:
    pusher = ImagePusher(registry_tap.url, chunk_size=64 * 1024)
    layer = layer_bytes({"blob": hashlib.shake_256(b"via tap").digest(200_000)}, gzip_level=0)
    img = pusher.push_image("custom/via-tap", "1", [layer])
    assert pusher.stats["chunked"] == 1
    # Config (POST, PUT), then the layer in 64 KiB PATCHes. Host was forwarded, so the
    # registry's upload Locations led back through the tap.
    methods = [r.method for r in registry_tap.filter(kind="upload")]
    assert methods == ["POST", "PUT", "POST", "PATCH", "PATCH", "PATCH", "PATCH", "PUT"]
    assert registry_tap.count(method="PUT", kind="manifest") == 1
    assert fetch(f"{registry_tap.url}/v2/custom/via-tap/manifests/1", "HEAD").status == 200
    assert img.layers[0].size == layer.size


def test_dead_upstream_gives_502(make_tap: Tap) -> None:
    tap = make_tap(f"http://127.0.0.1:{free_port()}")
    r = fetch(tap.url + "/v2/")
    assert r.status == 502
    (rec,) = tap.requests
    assert rec.status == 502 and rec.error is not None and rec.done
