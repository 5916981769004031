"""Stale after HEAD: the HEAD says the tag moved, the GET that follows fails; the client gets
the image the mirror has (within cache.max_stale), counted as a stale answer (issue #16)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.config import parse_config
from mirror.http.app import create_app
from tests.support import FakeRegistry, Fault, RecordingProxy
from tests.support.images import synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES
from tests.support.mirror_proc import mirror_config
from tests.support.promtext import parse

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ACCEPT = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}

GET_FAILS = {
    "429": Fault(mode="status", status=429, headers={"Retry-After": "1"}, method="GET",
                 match="/manifests/"),
    "503": Fault(mode="status", status=503, method="GET", match="/manifests/"),
    "timeout": Fault(mode="stall", seconds=3.0, method="GET", match="/manifests/"),
}


@pytest.mark.parametrize("fails", list(GET_FAILS))
async def test_moved_tag_whose_get_fails_is_served_stale(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        make_tap: Callable[[str], RecordingProxy], tmp_path: Path, fails: str) -> None:
    fake = make_fake_registry()
    tap = make_tap(fake.url)
    old = fake.add_image("team/app", "1.0", [synthetic_layer("stale-old", 4)])
    cfg = mirror_config({"docker.io": tap.url}, tmp_path / "cache", prefetch={"enabled": False},
                        cache={"tag_ttl": "0s"})
    cfg["upstreams"]["docker.io"]["read_timeout"] = "0.5s"
    mirror = await aiohttp_client(create_app(parse_config(cfg, env={}, base=tmp_path)))
    url = "/v2/team/app/manifests/1.0"
    r = await mirror.get(url, headers=ACCEPT)
    assert r.status == 200 and r.headers["Docker-Content-Digest"] == old.digest

    new = fake.add_image("team/app", "1.0", [synthetic_layer("stale-new", 4)])  # the tag moves
    tap.set_fault(GET_FAILS[fails])
    tap.clear()
    r = await mirror.get(url, headers=ACCEPT)
    assert r.status == 200, await r.text()
    assert r.headers["Docker-Content-Digest"] == old.digest
    assert await r.read() == old.manifest
    # the HEAD saw the move; the GET for the new digest failed
    assert [q.method for q in tap.filter(kind="manifest")] == ["HEAD", "GET"], tap.describe()
    scrape = parse(await (await mirror.get("/metrics")).text())
    assert scrape.sum("mirror_stale_answers_total") == 1
    assert scrape.sum("mirror_requests_total", type="tag", result="stale") == 1

    tap.clear_fault()
    r = await _until_moved(mirror, url, new.digest)  # after a 429, once its Retry-After passed
    assert await r.read() == new.manifest


async def _until_moved(mirror: TestClient[Any, Any], url: str, digest: str) -> Any:
    deadline = time.monotonic() + 10
    while True:
        r = await mirror.get(url, headers=ACCEPT)
        if r.status == 200 and r.headers["Docker-Content-Digest"] == digest:
            return r
        assert time.monotonic() < deadline, (r.status, r.headers.get("Docker-Content-Digest"))
        await asyncio.sleep(0.1)
