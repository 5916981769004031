"""Wrong upstream credentials (issue #16): the cause shows where operators look. The client's
error says the mirror's credentials were refused (skopeo prints it), the status page and
`mirror stats` show the upstream as failing authentication, a metric says so, and one log
line is written per change, not per request. The password shows up nowhere."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.config import parse_config
from mirror.http.app import create_app
from tests.support import FakeRegistry
from tests.support.images import synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES
from tests.support.mirror_proc import mirror_config
from tests.support.promtext import parse

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
USER = "mirror-robot"
WRONG = "wr0ng-Pa55w0rd-never-shown"
ACCEPT = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mirror.upstream" and "were refused" in r.getMessage()]


@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_refused_credentials_are_visible_where_operators_look(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        tmp_path: Path, caplog: pytest.LogCaptureFixture, auth: str) -> None:
    caplog.set_level(logging.INFO)
    fake = make_fake_registry(auth=auth, username=USER, password="the-right-one")
    img = fake.add_image("team/app", "1.0", [synthetic_layer("auth-failing", 4)])
    cfg = mirror_config({"docker.io": fake.url}, tmp_path / "cache", prefetch={"enabled": False})
    cfg["upstreams"]["docker.io"].update(username=USER, password_env="UPSTREAM_PASSWORD")
    mirror = await aiohttp_client(create_app(parse_config(cfg, env={"UPSTREAM_PASSWORD": WRONG},
                                                          base=tmp_path)))
    base = f"http://{mirror.host}:{mirror.port}"

    # the client: a 4xx whose body names the cause (containers/image prints only 5xx status lines)
    r = await asyncio.to_thread(
        subprocess.run, ["skopeo", "inspect", "--raw", "--tls-verify=false",
                         f"docker://{mirror.host}:{mirror.port}/team/app:1.0"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "credentials for upstream docker.io" in r.stderr and "refused" in r.stderr, r.stderr
    for _ in range(3):
        resp = await mirror.get("/v2/team/app/manifests/1.0", headers=ACCEPT)
        assert resp.status == 403
        err = (await resp.json())["errors"][0]
        assert err["code"] == "DENIED"
        assert "the mirror's credentials for upstream docker.io" in err["message"]

    # the status page, /status.json and the metric
    status = await (await mirror.get("/status.json")).json()
    up = status["upstreams"][0]
    assert up["state"] == "auth-failed" and "were refused" in up["auth_error"]
    page = await (await mirror.get("/")).text()
    assert "auth-failed" in page and "were refused" in page
    metrics = await (await mirror.get("/metrics")).text()
    assert parse(metrics).sum("mirror_upstream_auth_failing", upstream="docker.io") == 1
    # `mirror stats`, as an operator runs it
    stats = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mirror", "stats", "--url", base],
        capture_output=True, text=True, timeout=60, env={**os.environ})
    assert stats.returncode == 0, stats.stderr
    assert "auth-failed" in stats.stdout and "authentication failing" in stats.stdout
    # one log line for the change, however many requests were refused
    assert len(refusals(caplog)) == 1, refusals(caplog)
    for text in (r.stderr, json.dumps(status), page, metrics, stats.stdout, caplog.text):
        assert WRONG not in text

    # the registry accepts the mirror's password again: the state clears, once
    fake.password = WRONG
    resp = await mirror.get("/v2/team/app/manifests/1.0", headers=ACCEPT)
    assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == img.digest
    status = await (await mirror.get("/status.json")).json()
    assert status["upstreams"][0]["state"] == "up" and status["upstreams"][0]["auth_error"] is None
    metrics = await (await mirror.get("/metrics")).text()
    assert parse(metrics).sum("mirror_upstream_auth_failing", upstream="docker.io") == 0
    assert sum("accepted again" in r.getMessage() for r in caplog.records) == 1
    assert len(refusals(caplog)) == 1


async def test_no_credentials_for_an_upstream_that_wants_them(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        tmp_path: Path) -> None:
    fake = make_fake_registry(auth="basic", username=USER, password="the-right-one")
    fake.add_image("team/app", "1.0", [synthetic_layer("auth-none", 4)])
    cfg = mirror_config({"docker.io": fake.url}, tmp_path / "cache", prefetch={"enabled": False})
    mirror = await aiohttp_client(create_app(parse_config(cfg, env={}, base=tmp_path)))
    resp = await mirror.get("/v2/team/app/manifests/1.0", headers=ACCEPT)
    assert resp.status == 403
    assert "requires credentials and the mirror has none" in (await resp.json())["errors"][0][
        "message"]
    status = await (await mirror.get("/status.json")).json()
    assert status["upstreams"][0]["state"] == "auth-failed"
