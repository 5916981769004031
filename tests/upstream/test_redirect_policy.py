"""Upstream redirects and token realms name an address the upstream chose: the mirror refuses
link-local and metadata addresses, and loopback unless the upstream itself is on loopback
(issue #16). Configurable per upstream: redirect_blocklist, redirect_to_loopback."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.config import parse_config
from mirror.config.model import DEFAULT_REDIRECT_BLOCKLIST
from mirror.http.app import create_app
from mirror.oci.errors import ConfigError
from mirror.upstream.redirects import RedirectPolicy
from tests.support import FakeRegistry
from tests.support.images import synthetic_layer
from tests.support.mirror_proc import mirror_config

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


async def mirror_for(aiohttp_client: ClientFactory, fake: FakeRegistry, tmp_path: Path,
                     **upstream: Any) -> TestClient[Any, Any]:
    cfg = mirror_config({"docker.io": fake.url}, tmp_path / "cache", prefetch={"enabled": False})
    cfg["upstreams"]["docker.io"].update(upstream)
    return await aiohttp_client(create_app(parse_config(cfg, env={}, base=tmp_path)))


async def test_redirect_to_loopback_refused_when_configured(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        tmp_path: Path) -> None:
    fake = make_fake_registry(redirect_blobs=True)  # blob GETs: 307 to a "CDN" on 127.0.0.1
    img = fake.add_image("team/app", "1.0", [synthetic_layer("redirect", 4)])
    layer = img.layers[0]
    mirror = await mirror_for(aiohttp_client, fake, tmp_path, redirect_to_loopback=False)
    r = await mirror.get(f"/v2/team/app/blobs/{layer.digest}")
    assert r.status == 502, await r.text()
    err = (await r.json())["errors"][0]
    assert "127.0.0.1" in err["message"] and "does not fetch from" in err["message"]
    assert fake.count(kind="cdn") == 0  # never connected to the refused address
    status = await (await mirror.get("/status.json")).json()
    assert "refused" in str(status)


async def test_token_realm_on_a_refused_address_is_not_asked(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        tmp_path: Path) -> None:
    # The realm is named by the upstream too: credentials would go wherever it points.
    fake = make_fake_registry(auth="bearer", username="robot", password="pw")
    fake.add_image("team/app", "1.0", [synthetic_layer("realm", 4)])
    mirror = await mirror_for(aiohttp_client, fake, tmp_path, redirect_to_loopback=False,
                              username="robot", password_file=str(_password(tmp_path)))
    r = await mirror.get("/v2/team/app/manifests/1.0")
    assert r.status == 502, await r.text()
    assert "token realm to 127.0.0.1" in (await r.json())["errors"][0]["message"]
    assert fake.count(kind="token") == 0


def _password(tmp_path: Path) -> Path:
    f = tmp_path / "pw"
    f.write_text("pw\n")
    f.chmod(0o600)
    return f


async def test_redirect_to_loopback_followed_for_a_loopback_upstream(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        tmp_path: Path) -> None:
    fake = make_fake_registry(redirect_blobs=True)
    img = fake.add_image("team/app", "1.0", [synthetic_layer("redirect-ok", 4)])
    mirror = await mirror_for(aiohttp_client, fake, tmp_path)
    r = await mirror.get(f"/v2/team/app/blobs/{img.layers[0].digest}")
    assert r.status == 200
    assert "sha256:" + hashlib.sha256(await r.read()).hexdigest() == img.layers[0].digest
    assert fake.count(kind="cdn") == 1


# Decided before any connection: nothing here leaves the machine (literal addresses are never
# resolved, `localhost` resolves from /etc/hosts).
REMOTE = "https://registry.example.com"


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.1.1:8080/x",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://127.0.0.1:5000/v2/",
    "http://127.1.2.3/",
    "http://[::1]/",
    "http://localhost:5000/",
])
async def test_refused_targets_for_a_remote_upstream(target: str) -> None:
    policy = RedirectPolicy(REMOTE, DEFAULT_REDIRECT_BLOCKLIST, None)
    assert await policy.refused(target) is not None


@pytest.mark.parametrize("target", ["https://203.0.113.7/blob?sig=x", "http://[2001:db8::1]/",
                                    "http://10.1.2.3/"])
async def test_other_targets_are_followed(target: str) -> None:
    policy = RedirectPolicy(REMOTE, DEFAULT_REDIRECT_BLOCKLIST, None)
    assert await policy.refused(target) is None


async def test_loopback_and_blocklist_are_configurable() -> None:
    assert await RedirectPolicy("http://127.0.0.1:5000", DEFAULT_REDIRECT_BLOCKLIST,
                                None).refused("http://127.0.0.1:9000/") is None
    assert await RedirectPolicy("http://localhost:5000", (), False).refused(
        "http://[::1]:9000/") is not None
    assert await RedirectPolicy(REMOTE, (), True).refused("http://169.254.169.254/") is None
    assert await RedirectPolicy(REMOTE, ("10.0.0.0/8",), True).refused(
        "http://10.9.9.9/") is not None


def test_config_names_a_bad_network(tmp_path: Path) -> None:
    cfg = mirror_config({"docker.io": "http://127.0.0.1:1"}, tmp_path)
    cfg["upstreams"]["docker.io"]["redirect_blocklist"] = ["169.254.0.0/16", "not-a-net"]
    with pytest.raises(ConfigError) as exc:
        parse_config(cfg, env={}, base=tmp_path)
    assert any("upstreams.docker.io.redirect_blocklist" in p and "not-a-net" in p
               for p in exc.value.problems)
    ok = parse_config(mirror_config({"docker.io": "http://127.0.0.1:1"}, tmp_path), env={},
                      base=tmp_path)
    assert ok.upstreams["docker.io"].redirect_blocklist == DEFAULT_REDIRECT_BLOCKLIST
