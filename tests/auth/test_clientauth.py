"""Client auth, access rules and request limits on the mirror's own API, in process, with the
real registry behind a RecordingProxy: what the client is told, and what the upstream saw."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import Catalog, RecordingProxy
from tests.support.certs import write_htpasswd
from tests.support.mirror_app import ALL_MANIFEST_TYPES, make_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ACCEPT = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}
ALICE, ALICE_PW = "alice", "alice-Pa55-9f3b1c"
BOB, BOB_PW = "bob", "bob-Pa55-77ad02"
API_VERSION = "registry/2.0"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test here runs with all loggers at DEBUG; none may write a client password."""
    caplog.set_level(logging.DEBUG)
    yield
    forms = [f for u, p in ((ALICE, ALICE_PW), (BOB, BOB_PW))
             for f in (p, base64.b64encode(f"{u}:{p}".encode()).decode())]
    assert not [f for f in forms if f in caplog.text]


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    return write_htpasswd(tmp_path / "htpasswd", {ALICE: ALICE_PW, BOB: BOB_PW})


@pytest.fixture
def make_mirror(aiohttp_client: ClientFactory, registry_tap: RecordingProxy, htpasswd: Path,
                tmp_path: Path) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(auth: dict[str, Any] | None = None, **extra: Any) -> TestClient[Any, Any]:
        if auth is not None:
            auth = {"htpasswd": str(htpasswd), **auth}
            extra["auth"] = auth
        app = make_app({"docker.io": registry_tap.url}, tmp_path / "cache",
                       prefetch={"enabled": False}, **extra)
        return await aiohttp_client(app)

    return make


Make = Callable[..., Awaitable[TestClient[Any, Any]]]

RULES = [
    {"allow": True, "users": ["anonymous"], "repositories": ["library/alpine-ish"]},
    {"deny": True, "users": [BOB], "repositories": ["org/**"]},
    {"allow": True, "users": ["*"], "upstreams": ["docker.io"]},
]


async def error_code(r: aiohttp.ClientResponse) -> str:
    doc = await r.json()
    return str(doc["errors"][0]["code"])


def assert_basic_challenge(r: aiohttp.ClientResponse) -> None:
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="mirror"'
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION


async def test_anonymous_pull_is_refused_with_a_challenge(make_mirror: Make,
                                                          registry_tap: RecordingProxy) -> None:
    mirror = await make_mirror(auth={})
    for path in ("/v2/", "/v2/library/busybox/manifests/latest",
                 "/v2/library/busybox/blobs/sha256:" + "0" * 64, "/v2/library/busybox/tags/list"):
        r = await mirror.get(path, headers=ACCEPT)
        assert_basic_challenge(r)
        assert r.content_type == "application/json"
        assert await error_code(r) == "UNAUTHORIZED"
    assert registry_tap.requests == []


async def test_good_credentials_pull_verified_bytes(make_mirror: Make, catalog: Catalog,
                                                    registry_tap: RecordingProxy) -> None:
    mirror = await make_mirror(auth={})
    r = await mirror.get("/v2/", headers=basic(ALICE, ALICE_PW))
    assert r.status == 200 and r.headers["Docker-Distribution-API-Version"] == API_VERSION
    img = catalog["org/team/app:1.0"]
    r = await mirror.get("/v2/org/team/app/manifests/1.0", headers={**ACCEPT, **basic(ALICE, ALICE_PW)})
    assert r.status == 200 and await r.read() == img.manifest
    for blob in img.blobs:
        r = await mirror.get(f"/v2/org/team/app/blobs/{blob.digest}", headers=basic(ALICE, ALICE_PW))
        assert r.status == 200
        assert "sha256:" + hashlib.sha256(await r.read()).hexdigest() == blob.digest
    # The client's credentials are for the mirror: they never travel to the upstream.
    assert registry_tap.requests
    assert all(r.header("Authorization") is None for r in registry_tap.requests)


@pytest.mark.parametrize("header", [
    basic(ALICE, "wrong-password"),
    basic(ALICE, BOB_PW),
    basic("mallory", ALICE_PW),
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Bearer not-a-token"},
    {"Authorization": "Digest username=alice"},
], ids=["wrong", "other-users", "unknown-user", "garbage", "no-colon", "bearer-off", "digest"])
async def test_bad_credentials_are_401_and_never_echoed(make_mirror: Make,
                                                        registry_tap: RecordingProxy,
                                                        header: dict[str, str]) -> None:
    mirror = await make_mirror(auth={})
    r = await mirror.get("/v2/library/busybox/manifests/latest", headers={**ACCEPT, **header})
    assert_basic_challenge(r)
    body = await r.text()
    assert await error_code(r) == "UNAUTHORIZED"
    for secret in (ALICE_PW, BOB_PW, header["Authorization"].split(" ", 1)[1]):
        assert secret not in body and secret not in str(r.headers)
    assert registry_tap.requests == []


async def test_repository_outside_the_rules_is_403_with_no_upstream_request(
        make_mirror: Make, registry_tap: RecordingProxy, catalog: Catalog) -> None:
    mirror = await make_mirror(auth={"rules": RULES})
    img = catalog["org/team/app:1.0"]
    for path in ("/v2/org/team/app/manifests/1.0", f"/v2/org/team/app/manifests/{img.digest}",
                 f"/v2/org/team/app/blobs/{img.layers[0].digest}", "/v2/org/team/app/tags/list",
                 "/v2/docker.io/org/team/app/manifests/1.0", "/v2/org/team/app/manifests/1.0?ns=docker.io"):
        for method in ("GET", "HEAD"):
            r = await mirror.request(method, path, headers={**ACCEPT, **basic(BOB, BOB_PW)})
            assert r.status == 403, path
            if method == "GET":
                assert await error_code(r) == "DENIED"
    assert registry_tap.requests == [], registry_tap.describe()
    # The same request by a user the rules allow does reach the upstream.
    r = await mirror.get("/v2/org/team/app/manifests/1.0", headers={**ACCEPT, **basic(ALICE, ALICE_PW)})
    assert r.status == 200 and await r.read() == img.manifest
    assert registry_tap.count(kind="manifest") >= 1


async def test_anonymous_rules_and_empty_basic_credentials(make_mirror: Make, catalog: Catalog,
                                                           registry_tap: RecordingProxy) -> None:
    mirror = await make_mirror(auth={"rules": RULES})
    img = catalog["library/alpine-ish:3.19"]
    # containers/image without credentials answers a Basic challenge with an empty user.
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b":").decode()}):
        r = await mirror.get("/v2/alpine-ish/manifests/3.19", headers={**ACCEPT, **headers})
        assert r.status == 200 and await r.read() == img.manifest
        r = await mirror.get("/v2/library/busybox/manifests/latest", headers={**ACCEPT, **headers})
        assert_basic_challenge(r)  # logging in may help, so 401 and not 403
    assert registry_tap.count(path_contains="busybox") == 0


async def test_anonymous_clients_learn_nothing_about_routes(make_mirror: Make) -> None:
    mirror = await make_mirror(auth={"rules": RULES})
    for path in ("/v2/ghcr.io/org/app/manifests/1", "/v2/org/app/manifests/1?ns=quay.io",
                 "/v2/Bad/Name/manifests/1", "/v2/library/busybox/nonsense"):
        assert_basic_challenge(await mirror.get(path))
        r = await mirror.get(path, headers=basic(ALICE, ALICE_PW))
        assert r.status in (400, 404) and await error_code(r) != "UNAUTHORIZED"


async def test_health_open_metrics_and_status_protected(make_mirror: Make) -> None:
    mirror = await make_mirror(auth={})
    assert (await mirror.get("/healthz")).status == 200
    assert (await mirror.get("/readyz")).status != 401
    for path in ("/metrics", "/", "/status.json", "/inventory.json"):
        r = await mirror.get(path)
        assert_basic_challenge(r)
        r = await mirror.get(path, headers=basic(ALICE, ALICE_PW))
        assert r.status == 200, path
    r = await mirror.get("/metrics", headers=basic(ALICE, "nope"))
    assert r.status == 401
    text = await (await mirror.get("/metrics", headers=basic(ALICE, ALICE_PW))).text()
    assert 'mirror_client_auth_total{result="bad_credentials"}' in text


async def test_metrics_and_status_open_when_configured(make_mirror: Make) -> None:
    mirror = await make_mirror(auth={"protect_metrics": False, "protect_status": False})
    assert (await mirror.get("/metrics")).status == 200
    assert (await mirror.get("/status.json")).status == 200
    assert (await mirror.get("/v2/library/busybox/manifests/latest")).status == 401


async def test_bearer_token_mode(make_mirror: Make, catalog: Catalog,
                                 registry_tap: RecordingProxy) -> None:
    mirror = await make_mirror(auth={"rules": RULES, "token": {"ttl": "2m"}})
    r = await mirror.get("/v2/library/busybox/manifests/latest", headers=ACCEPT)
    assert r.status == 401
    realm = f"http://{mirror.host}:{mirror.port}/auth/token"
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{realm}",service="mirror",scope="repository:library/busybox:pull"')
    # docker login / containerd: credentials to the realm, a token back
    r = await mirror.get("/auth/token", params={"service": "mirror",
                                                "scope": "repository:library/busybox:pull"},
                         headers=basic(ALICE, ALICE_PW))
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    doc = await r.json()
    assert doc["expires_in"] == 120 and doc["token"] == doc["access_token"]
    bearer = {"Authorization": f"Bearer {doc['token']}"}
    r = await mirror.get("/v2/library/busybox/manifests/latest", headers={**ACCEPT, **bearer})
    assert r.status == 200 and await r.read() == catalog["library/busybox:latest"].manifest
    # a tampered or foreign token is refused
    forged = doc["token"][:-2] + ("AA" if not doc["token"].endswith("AA") else "BB")
    r = await mirror.get("/v2/library/busybox/manifests/latest",
                         headers={**ACCEPT, "Authorization": f"Bearer {forged}"})
    assert r.status == 401
    # wrong credentials at the token endpoint: a Basic challenge, no token
    r = await mirror.get("/auth/token", headers=basic(ALICE, "wrong"))
    assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="mirror"'
    # an anonymous token carries the anonymous rules only
    anon = (await (await mirror.get("/auth/token")).json())["token"]
    r = await mirror.get("/v2/alpine-ish/manifests/3.19",
                         headers={**ACCEPT, "Authorization": f"Bearer {anon}"})
    assert r.status == 200
    before = registry_tap.count(path_contains="org/team")
    r = await mirror.get("/v2/org/team/app/manifests/1.0",
                         headers={**ACCEPT, "Authorization": f"Bearer {anon}"})
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer ")
    assert registry_tap.count(path_contains="org/team") == before


async def test_token_of_a_removed_user_stops_working(make_mirror: Make, htpasswd: Path) -> None:
    from mirror.auth.clientauth import CLIENT_AUTH

    mirror = await make_mirror(auth={"token": {}})
    token = (await (await mirror.get("/auth/token", headers=basic(BOB, BOB_PW))).json())["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await mirror.get("/v2/", headers=bearer)).status == 200
    write_htpasswd(htpasswd, {ALICE: ALICE_PW})
    mirror.app[CLIENT_AUTH].reload()  # what SIGHUP does
    assert (await mirror.get("/v2/", headers=bearer)).status == 401
    assert (await mirror.get("/v2/", headers=basic(BOB, BOB_PW))).status == 401
    assert (await mirror.get("/v2/", headers=basic(ALICE, ALICE_PW))).status == 200


async def test_rate_limit_per_client(make_mirror: Make) -> None:
    mirror = await make_mirror(limits={"rate_limit": {"rate": 0.01, "burst": 3}})
    statuses = [(await mirror.get("/v2/")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = await mirror.get("/v2/library/busybox/manifests/latest")
    assert r.status == 429 and await error_code(r) == "TOOMANYREQUESTS"
    assert int(r.headers["Retry-After"]) >= 1
    assert (await mirror.get("/healthz")).status == 200  # probes are never throttled


@pytest.mark.parametrize("with_auth", [False, True], ids=["open", "auth"])
async def test_push_methods_are_405(make_mirror: Make, registry_tap: RecordingProxy,
                                    with_auth: bool) -> None:
    mirror = await make_mirror(auth={} if with_auth else None)
    creds = basic(ALICE, ALICE_PW) if with_auth else {}
    digest = "sha256:" + "a" * 64
    for method, path in (("PUT", "/v2/library/busybox/manifests/latest"),
                         ("DELETE", f"/v2/library/busybox/manifests/{digest}"),
                         ("POST", "/v2/library/busybox/blobs/uploads/"),
                         ("PATCH", "/v2/library/busybox/blobs/uploads/some-uuid"),
                         ("PUT", f"/v2/library/busybox/blobs/uploads/some-uuid?digest={digest}"),
                         ("DELETE", f"/v2/library/busybox/blobs/{digest}"),
                         ("POST", "/v2/")):
        r = await mirror.request(method, path, headers=creds, data=b"{}")
        assert r.status == 405, (method, path)
        assert await error_code(r) == "UNSUPPORTED"
    assert registry_tap.requests == []


async def test_oversized_request_head_is_refused(make_mirror: Make) -> None:
    mirror = await make_mirror(limits={"max_header_size": "4KiB"})
    r = await mirror.get("/v2/", headers={"X-Padding": "x" * 5000})
    assert r.status == 400
    r = await mirror.get("/v2/", headers={"X-Padding": "x" * 3000})
    assert r.status == 200
