"""Tag list pagination along the client's own route (issue #16): the upstream's `Link` names
the repository as the upstream knows it, so passed through verbatim it sends a client that
named the registry by path prefix or `?ns=` to the default upstream. distribution 2.8 does
not paginate; the fake upstreams here do, as ghcr.io and Docker Hub do (n/last, lexical
order, Link rel="next")."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import FakeRegistry, Fault, RecordingProxy
from tests.support.images import synthetic_layer
from tests.support.mirror_app import make_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


def tagged(fake: FakeRegistry, repo: str, prefix: str, count: int) -> list[str]:
    img = fake.add_image(repo, None, [synthetic_layer(f"page-{prefix}", 1)])
    names = [f"{prefix}-{i:03d}" for i in range(count)]
    for name in names:
        fake.add_manifest(repo, name, img.manifest, img.media_type)
    return names


@pytest.fixture
def two_registries(make_fake_registry: Callable[..., FakeRegistry]) -> tuple[FakeRegistry,
                                                                             FakeRegistry]:
    return make_fake_registry(tags_page=10), make_fake_registry(tags_page=10)


async def follow(mirror: TestClient[Any, Any], path: str) -> tuple[list[str], list[str]]:
    """Every page from `path` on, following Link; (tags, the Links followed)."""
    tags: list[str] = []
    links: list[str] = []
    while path:
        r = await mirror.get(path)
        assert r.status == 200, await r.text()
        tags += (await r.json())["tags"]
        link = r.headers.get("Link")
        path = ""
        if link:
            m = NEXT.match(link)
            assert m, link
            links.append(m.group(1))
            path = m.group(1)
            assert len(links) < 20, links
    return tags, links


async def test_skopeo_list_tags_through_a_registry_prefix(
        aiohttp_client: ClientFactory, two_registries: tuple[FakeRegistry, FakeRegistry],
        tmp_path: Path) -> None:
    ghcr, hub = two_registries
    want = tagged(ghcr, "o/a", "ghcr", 25)
    tagged(hub, "o/a", "hub", 35)  # what the default upstream would add
    mirror = await aiohttp_client(make_app({"docker.io": hub.url, "ghcr.io": ghcr.url},
                                           tmp_path / "cache"))
    host = f"{mirror.host}:{mirror.port}"
    r = await asyncio.to_thread(
        subprocess.run, ["skopeo", "list-tags", "--tls-verify=false", f"docker://{host}/ghcr.io/o/a"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Tags"] == want
    assert ghcr.count(path_contains="/tags/list") == 3  # 10 + 10 + 5, all from ghcr.io
    assert hub.count(path_contains="/tags/list") == 0


@pytest.mark.parametrize("route", ["prefix", "ns"])
async def test_link_is_rebuilt_on_the_clients_route(
        aiohttp_client: ClientFactory, two_registries: tuple[FakeRegistry, FakeRegistry],
        tmp_path: Path, route: str) -> None:
    ghcr, hub = two_registries
    want = tagged(ghcr, "o/a", "ghcr", 25)
    tagged(hub, "o/a", "hub", 35)
    mirror = await aiohttp_client(make_app({"docker.io": hub.url, "ghcr.io": ghcr.url},
                                           tmp_path / "cache"))
    start = ("/v2/ghcr.io/o/a/tags/list?n=7" if route == "prefix"
             else "/v2/o/a/tags/list?n=7&ns=ghcr.io")
    tags, links = await follow(mirror, start)
    assert tags == want
    assert len(links) == 3  # 7 + 7 + 7 + 4
    for link in links:
        u = urlsplit(link)
        assert u.path == urlsplit(start).path
        query = dict(parse_qsl(u.query))
        assert query.pop("n") == "7"
        assert query.pop("last") in want
        assert query == ({"ns": "ghcr.io"} if route == "ns" else {})
    assert hub.count(path_contains="/tags/list") == 0


async def test_n_zero_is_an_empty_list_without_link(
        aiohttp_client: ClientFactory, two_registries: tuple[FakeRegistry, FakeRegistry],
        tmp_path: Path) -> None:
    ghcr, hub = two_registries
    tagged(ghcr, "o/a", "ghcr", 5)
    mirror = await aiohttp_client(make_app({"docker.io": hub.url, "ghcr.io": ghcr.url},
                                           tmp_path / "cache"))
    r = await mirror.get("/v2/ghcr.io/o/a/tags/list?n=0")
    assert r.status == 200 and (await r.json())["tags"] == []
    assert "Link" not in r.headers


async def test_tags_from_the_index_paginate_too(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        make_tap: Callable[[str], RecordingProxy], tmp_path: Path) -> None:
    # The upstream fails: the mirror answers from the tags it knows, with the same n/last rules.
    fake = make_fake_registry()
    names = tagged(fake, "o/a", "known", 5)
    tap = make_tap(fake.url)
    mirror = await aiohttp_client(make_app({"docker.io": fake.url, "ghcr.io": tap.url},
                                           tmp_path / "cache", prefetch={"enabled": False}))
    for name in names:
        assert (await mirror.get(f"/v2/ghcr.io/o/a/manifests/{name}")).status == 200
    tap.set_fault(Fault(mode="refuse", match="/tags/"))
    tags, links = await follow(mirror, "/v2/ghcr.io/o/a/tags/list?n=2")
    assert tags == names
    assert [urlsplit(link).path for link in links] == ["/v2/ghcr.io/o/a/tags/list"] * 2
