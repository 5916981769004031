"""Per-upstream credentials against a FakeRegistry that keeps a log: Bearer tokens (with the
configured user's password from an environment variable or a file, or anonymous), Basic auth,
a token cache per scope, re-authentication after a token expires or is revoked, and secrets that
never reach a log line, an error body, /metrics or the status page."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.config import Config, parse_config
from mirror.http.app import create_app
from mirror.upstream.auth import TokenCache, TokenKey
from tests.support import FakeRegistry, PushedImage, fetch
from tests.support.images import synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES
from tests.support.mirror_proc import MirrorProcess, mirror_config

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
Make = Callable[..., FakeRegistry]

USER = "mirror-robot"
SECRET = "s3cr3t-Pa55w0rd-that-must-never-leak"
REGISTRY = "private.example.com"  # the name clients use; the URL is the fake's loopback port
ACCEPT = ", ".join(ALL_MANIFEST_TYPES)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leaks(text: str) -> list[str]:
    """Every form in which the secret could show up in text."""
    basic = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    return [s for s in (SECRET, basic, f"{USER}:{SECRET}") if s in text]


def build_config(fake: FakeRegistry, tmp_path: Path, *, cred: str | None,
                 password: str = SECRET) -> Config:
    up: dict[str, Any] = {"url": fake.url}
    env: dict[str, str] = {}
    if cred == "env":
        up.update(username=USER, password_env="PRIVATE_REGISTRY_TOKEN")
        env["PRIVATE_REGISTRY_TOKEN"] = password
    elif cred == "file":
        pw_file = tmp_path / "registry-password"
        pw_file.write_text(password + "\n")  # a trailing newline, as editors leave it
        pw_file.chmod(0o600)
        up.update(username=USER, password_file=str(pw_file))
    raw = mirror_config({}, tmp_path / "cache", prefetch={"enabled": False})
    raw["upstreams"] = {REGISTRY: up}
    return parse_config(raw, env=env, base=tmp_path)


def add_images(fake: FakeRegistry) -> tuple[PushedImage, PushedImage]:
    a = fake.add_image("team/app", "1.0", [synthetic_layer("cred-app", 8)])
    b = fake.add_image("team/other", "2.0", [synthetic_layer("cred-other", 8)])
    return a, b


async def pull(mirror: TestClient[Any, Any], img: PushedImage, via: str = "prefix") -> None:
    """A full pull of one image through the mirror, every byte checked."""
    def url(kind: str, ref: str) -> str:
        if via == "ns":
            return f"/v2/{img.repo}/{kind}/{ref}?ns={REGISTRY}"
        return f"/v2/{REGISTRY}/{img.repo}/{kind}/{ref}"

    r = await mirror.get(url("manifests", img.tag or img.digest), headers={"Accept": ACCEPT})
    body = await r.read()
    assert r.status == 200, body
    assert r.headers["Docker-Content-Digest"] == img.digest
    assert body == img.manifest
    for blob in img.blobs:
        r = await mirror.get(url("blobs", blob.digest))
        data = await r.read()
        assert r.status == 200, data
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # Everything, from every logger (aiohttp's client included), at the most verbose level.
    caplog.set_level(logging.DEBUG)
    return caplog


def token_requests(fake: FakeRegistry) -> list[Any]:
    return fake.filter(kind="token")


# -- Bearer with credentials -------------------------------------------------------------------

@pytest.mark.parametrize("cred", ["env", "file"])
async def test_bearer_with_username_and_password(cred: str, make_fake_registry: Make,
                                                 aiohttp_client: ClientFactory, tmp_path: Path,
                                                 logs: pytest.LogCaptureFixture) -> None:
    fake = make_fake_registry(auth="bearer", username=USER, password=SECRET)
    app_img, other_img = add_images(fake)
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred=cred)))

    await pull(mirror, app_img)
    tokens = token_requests(fake)
    # One token for the repository, fetched with the configured user's Basic credentials.
    assert len(tokens) == 1, fake.describe()
    assert tokens[0].header("Authorization") == "Basic " + base64.b64encode(
        f"{USER}:{SECRET}".encode()).decode()
    assert parse_qs(tokens[0].query) == {"scope": ["repository:team/app:pull"],
                                         "service": ["fake-registry"]}
    # Only the first request paid the 401 round trip; the rest carried the cached token.
    assert [r.status for r in fake.filter(kind="manifest")] == [401, 200]
    assert all(r.status == 200 for r in fake.filter(kind="blob"))
    # The registry itself never saw the password, only tokens.
    v2 = [r for r in fake.requests if r.kind != "token"]
    assert all((r.header("Authorization") or "Bearer ").startswith("Bearer ") for r in v2)

    await pull(mirror, other_img, via="ns")
    assert len(token_requests(fake)) == 2  # a second repository is a second scope
    assert parse_qs(token_requests(fake)[1].query)["scope"] == ["repository:team/other:pull"]

    assert not leaks(logs.text)


async def test_wrong_password_is_an_error_that_does_not_echo_it(
        make_fake_registry: Make, aiohttp_client: ClientFactory, tmp_path: Path,
        logs: pytest.LogCaptureFixture) -> None:
    fake = make_fake_registry(auth="bearer", username=USER, password="the-right-one")
    app_img, _ = add_images(fake)
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred="env")))

    r = await mirror.get(f"/v2/{REGISTRY}/{app_img.repo}/manifests/1.0",
                         headers={"Accept": ACCEPT})
    text = await r.text()
    assert r.status >= 400 and r.status != 500, text
    doc = json.loads(text)
    assert doc["errors"][0]["code"]
    assert not leaks(text) and not leaks(str(dict(r.headers)))
    # The token endpoint was asked with the configured user and refused; nothing was served.
    assert token_requests(fake) and all(t.status == 401 for t in token_requests(fake))
    assert fake.count(kind="blob") == 0
    for path in ("/metrics", "/status.json"):
        page = await (await mirror.get(path)).text()
        assert not leaks(page), path
    assert not leaks(logs.text)


# -- anonymous Bearer --------------------------------------------------------------------------

async def test_anonymous_token(make_fake_registry: Make, aiohttp_client: ClientFactory,
                               tmp_path: Path) -> None:
    fake = make_fake_registry(auth="bearer")
    app_img, other_img = add_images(fake)
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred=None)))

    await pull(mirror, app_img)
    await pull(mirror, other_img)
    tokens = token_requests(fake)
    assert len(tokens) == 2  # one per repository scope
    assert all(t.header("Authorization") is None for t in tokens)  # no credentials to send


# -- Basic -------------------------------------------------------------------------------------

async def test_basic_auth(make_fake_registry: Make, aiohttp_client: ClientFactory,
                          tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    fake = make_fake_registry(auth="basic", username=USER, password=SECRET)
    app_img, other_img = add_images(fake)
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred="env")))

    await pull(mirror, app_img)
    await pull(mirror, other_img, via="ns")
    assert token_requests(fake) == []
    # One challenge, then Basic credentials up front on every request, whatever the repository.
    assert [r.status for r in fake.requests].count(401) == 1, fake.describe()
    answered = [r for r in fake.requests if r.status == 200]
    assert len(answered) == 2 + len(app_img.blobs) + len(other_img.blobs)
    assert not leaks(logs.text)


async def test_basic_credentials_never_follow_a_redirect_to_the_blob_host(
        make_fake_registry: Make, aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    fake = make_fake_registry(auth="basic", username=USER, password=SECRET, redirect_blobs=True)
    app_img, _ = add_images(fake)
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred="file")))

    await pull(mirror, app_img)
    assert fake.count(kind="cdn") == len(app_img.blobs)
    assert fake.cdn_auth_leaks == []


# -- token cache -------------------------------------------------------------------------------

async def test_token_cached_per_scope(make_fake_registry: Make, aiohttp_client: ClientFactory,
                                      tmp_path: Path) -> None:
    fake = make_fake_registry(auth="bearer", username=USER, password=SECRET)
    img = fake.add_image("team/app", "1.0", [synthetic_layer("scope-a", 8)])
    more = [fake.add_image("team/app", f"1.{i}", [synthetic_layer(f"scope-a{i}", 4)])
            for i in range(1, 4)]
    other = fake.add_image("team/other", "1.0", [synthetic_layer("scope-b", 4)])
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred="env")))

    for i in (img, *more):  # many upstream requests, all in one repository
        await pull(mirror, i)
    assert len(token_requests(fake)) == 1
    assert fake.tokens_issued == 1
    await pull(mirror, other)
    assert len(token_requests(fake)) == 2
    for i in (img, *more):  # cached content: no upstream, no token
        await pull(mirror, i)
    assert len(token_requests(fake)) == 2


async def test_concurrent_refusals_share_one_token_request(make_fake_registry: Make,
                                                           aiohttp_client: ClientFactory,
                                                           tmp_path: Path) -> None:
    fake = make_fake_registry(auth="bearer", username=USER, password=SECRET)
    layers = [synthetic_layer(f"parallel-{i}", 4) for i in range(8)]
    img = fake.add_image("team/app", "1.0", layers)
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred="env")))

    async def get_blob(digest: str) -> bytes:
        r = await mirror.get(f"/v2/{REGISTRY}/team/app/blobs/{digest}")
        assert r.status == 200
        return await r.read()

    # Eight different blobs at once, before the mirror has seen any challenge: eight 401s,
    # one token request.
    bodies = await asyncio.gather(*(get_blob(b.digest) for b in img.layers))
    assert [sha256(b) for b in bodies] == [b.digest for b in img.layers]
    assert len(token_requests(fake)) == 1, fake.describe()
    assert fake.tokens_issued == 1


async def test_token_revoked_is_fetched_again_once(make_fake_registry: Make,
                                                   aiohttp_client: ClientFactory,
                                                   tmp_path: Path) -> None:
    fake = make_fake_registry(auth="bearer", username=USER, password=SECRET)
    first = fake.add_image("team/app", "1.0", [synthetic_layer("revoke-1", 8)])
    second = fake.add_image("team/app", "2.0", [synthetic_layer("revoke-2", 8)])
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred="env")))

    await pull(mirror, first)
    assert len(token_requests(fake)) == 1
    fake.expire_tokens()  # the registry forgets every token it issued
    fake.clear()
    await pull(mirror, second)
    # The cached token was refused once, a new one was fetched, and the pull went on.
    assert len(token_requests(fake)) == 1, fake.describe()
    assert [r.status for r in fake.requests if r.kind != "token"].count(401) == 1


async def test_token_expiry_leads_to_a_new_challenge(make_fake_registry: Make,
                                                     aiohttp_client: ClientFactory,
                                                     tmp_path: Path) -> None:
    # The fake gives 1 s tokens (below the spec's 60 s floor, as some registries do): once it
    # has expired upstream, the next fetch gets a 401 and the mirror re-authenticates.
    fake = make_fake_registry(auth="bearer", token_ttl=1)
    first = fake.add_image("team/app", "1.0", [synthetic_layer("expiry-1", 8)])
    second = fake.add_image("team/app", "2.0", [synthetic_layer("expiry-2", 8)])
    mirror = await aiohttp_client(create_app(build_config(fake, tmp_path, cred=None)))

    await pull(mirror, first)
    assert len(token_requests(fake)) == 1
    await asyncio.sleep(1.2)  # the token is now expired at the registry (a lower bound, never flaky)
    await pull(mirror, second)
    assert len(token_requests(fake)) == 2, fake.describe()
    assert fake.filter(kind="manifest")[-1].status == 200


def test_token_cache_expiry_and_keys() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    a = TokenKey("https://auth/token", "svc", "repository:team/app:pull", USER)
    b = TokenKey("https://auth/token", "svc", "repository:team/other:pull", USER)
    anon = TokenKey("https://auth/token", "svc", "repository:team/app:pull", "")
    cache.put(a, "tok-a", 300)
    assert cache.get(a) == "tok-a"
    assert cache.get(b) is None and cache.get(anon) is None  # per scope and per credential
    now[0] += 289
    assert cache.get(a) == "tok-a"
    now[0] += 1  # refreshed a little (10 s) before it expires
    assert cache.get(a) is None
    cache.put(a, "tok-a2", None)  # no expires_in: the spec's default of 60 s
    now[0] += 49
    assert cache.get(a) == "tok-a2"
    now[0] += 2
    assert cache.get(a) is None
    cache.put(a, "tok-a3", 300)
    cache.drop(a)
    assert cache.get(a) is None


# -- the whole process: log file and error bodies ----------------------------------------------

def test_secret_absent_from_process_log_and_error_bodies(make_fake_registry: Make,
                                                         tmp_path: Path) -> None:
    good = make_fake_registry(auth="bearer", username=USER, password=SECRET)
    bad = make_fake_registry(auth="basic", username=USER, password="not-what-we-have")
    img = good.add_image("team/app", "1.0", [synthetic_layer("proc-cred", 8)])
    bad_img = bad.add_image("team/app", "1.0", [synthetic_layer("proc-cred-bad", 8)])
    cfg = mirror_config({}, tmp_path / "cache", log={"level": "debug"})
    cfg["upstreams"] = {
        REGISTRY: {"url": good.url, "username": USER, "password_env": "GOOD_TOKEN"},
        "bad.example.com": {"url": bad.url, "username": USER, "password_env": "BAD_TOKEN"},
    }
    env = {"GOOD_TOKEN": SECRET, "BAD_TOKEN": SECRET}
    with MirrorProcess(cfg, workdir=tmp_path, env=env) as proc:
        r = fetch(f"{proc.url}/v2/{REGISTRY}/team/app/manifests/1.0", headers={"Accept": ACCEPT})
        assert r.status == 200 and r.body == img.manifest
        for blob in img.blobs:
            assert fetch(f"{proc.url}/v2/{REGISTRY}/team/app/blobs/{blob.digest}").status == 200
        bodies = []
        for path in ("/v2/team/app/manifests/1.0?ns=bad.example.com",
                     f"/v2/bad.example.com/team/app/blobs/{bad_img.layers[0].digest}",
                     "/v2/team/app/manifests/nope?ns=private.example.com",
                     "/v2/team/app/manifests/1.0?ns=unknown.example.com"):
            r = fetch(proc.url + path, headers={"Accept": ACCEPT})
            assert r.status is not None and 400 <= r.status < 600 and r.status != 500, r.body
            bodies.append(r.body.decode() + str(r.headers))
        bodies.append(fetch(f"{proc.url}/metrics").body.decode())
        bodies.append(fetch(f"{proc.url}/status.json").body.decode())
        for body in bodies:
            assert not leaks(body), body
        log = proc.log_text()
    assert " DEBUG " in log  # the most verbose level really ran
    assert not leaks(log)
    # and the bad upstream really was asked with the configured (wrong-for-it) credentials
    assert bad.count(kind="manifest") >= 1
