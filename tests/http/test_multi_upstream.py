"""One mirror process, two upstream registries with different content under the same names.

docker.io is the session registry with the standard images; "ghcr.io" is a second real
registry holding library/busybox pushed with a salt (same layers, other config, so other
manifest digests). Each request must be answered from the registry it names: by ?ns=, by path
prefix, or by default; and `busybox` means library/busybox on Docker Hub. Every answer is
checked by digest, and a recording tap in front of each registry shows who was asked."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import (
    ARM64,
    Catalog,
    ImagePusher,
    PushedImage,
    RecordingProxy,
    RegistryProcess,
    fetch,
)
from tests.support.images import busybox_layer, synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES
from tests.support.mirror_proc import MirrorProcess, mirror_config

ACCEPT = ", ".join(ALL_MANIFEST_TYPES)
SALT = "second-upstream"


@dataclass
class Setup:
    mirror: MirrorProcess
    hub_tap: RecordingProxy  # in front of the docker.io registry
    ghcr_tap: RecordingProxy  # in front of the "ghcr.io" registry
    hub: Catalog
    ghcr: dict[str, PushedImage]


@pytest.fixture(scope="module")
def setup(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with RegistryProcess() as second:
        p = ImagePusher(second.url, salt=SALT)
        bb, _ = busybox_layer()
        amd = p.push_image("library/busybox", "1.36", [bb])
        arm = p.push_image("library/busybox", None, [synthetic_layer("busybox-arm64", 64)], ARM64)
        ghcr = {"library/busybox:1.36": amd,
                "library/busybox:latest": p.push_index("library/busybox", "latest", [amd, arm])}
        hub_tap, ghcr_tap = RecordingProxy(catalog.registry_url), RecordingProxy(second.url)
        work = tmp_path_factory.mktemp("mirror-multi")
        cfg = mirror_config({"docker.io": hub_tap.url, "ghcr.io": ghcr_tap.url}, work / "cache")
        try:
            with MirrorProcess(cfg, workdir=work) as mirror:
                yield Setup(mirror, hub_tap, ghcr_tap, catalog, ghcr)
        finally:
            hub_tap.stop()
            ghcr_tap.stop()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def get(s: Setup, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    r = fetch(s.mirror.url + path, method, headers={"Accept": ACCEPT})
    assert r.status is not None and r.headers is not None, r.error
    return r.status, {k.lower(): v for k, v in r.headers.items()}, r.body


def url_for(how: str, registry: str, repo: str, kind: str, ref: str) -> str:
    if how == "ns":
        return f"/v2/{repo}/{kind}/{ref}?ns={registry}"
    if how == "prefix":
        return f"/v2/{registry}/{repo}/{kind}/{ref}"
    return f"/v2/{repo}/{kind}/{ref}"


def pull_all(s: Setup, how: str, registry: str, repo: str, tag: str) -> list[str]:
    """Tag -> index -> amd64 manifest -> config and layers; returns the digests, all verified."""
    status, headers, body = get(s, url_for(how, registry, repo, "manifests", tag))
    assert status == 200, body
    seen = [headers["docker-content-digest"]]
    assert sha256(body) == seen[0]
    doc = json.loads(body)
    if "manifests" in doc:
        amd64 = next(m for m in doc["manifests"] if m["platform"]["architecture"] == "amd64")
        status, headers, body = get(s, url_for(how, registry, repo, "manifests", amd64["digest"]))
        assert status == 200 and sha256(body) == amd64["digest"] == headers["docker-content-digest"]
        seen.append(amd64["digest"])
        doc = json.loads(body)
    for blob in [doc["config"], *doc["layers"]]:
        status, headers, data = get(s, url_for(how, registry, repo, "blobs", blob["digest"]))
        assert status == 200 and sha256(data) == blob["digest"], (status, data[:200])
        seen.append(blob["digest"])
        if blob is doc["config"]:
            labels = json.loads(data).get("config", {}).get("Labels") or {}
            assert (labels.get("org.example.salt") == SALT) == (registry == "ghcr.io")
    return seen


def reached(tap: RecordingProxy, repo: str) -> list[str]:
    tap.wait_idle()
    return [r.path for r in tap.requests if r.repo == repo]


def test_the_two_upstreams_really_differ(setup: Setup) -> None:
    for ref in ("library/busybox:1.36", "library/busybox:latest"):
        assert setup.hub[ref].digest != setup.ghcr[ref].digest
    # the layers are the same bytes: the mirror stores them once, by digest
    assert setup.hub["library/busybox:1.36"].layers == setup.ghcr["library/busybox:1.36"].layers


@pytest.mark.parametrize("how", ["ns", "prefix"])
@pytest.mark.parametrize("ref", ["library/busybox:1.36", "library/busybox:latest"])
def test_same_name_served_from_the_upstream_it_names(setup: Setup, how: str, ref: str) -> None:
    repo, tag = ref.split(":")
    setup.hub_tap.clear()
    setup.ghcr_tap.clear()
    ghcr = pull_all(setup, how, "ghcr.io", repo, tag)
    hub = pull_all(setup, how, "docker.io", repo, tag)
    assert ghcr[0] == setup.ghcr[ref].digest
    assert hub[0] == setup.hub[ref].digest
    assert ghcr[0] != hub[0]
    # asking one registry never sent a request to the other with the other's digests
    ghcr_only = set(ghcr) - set(hub)
    assert not any(d in p for p in reached(setup.hub_tap, repo) for d in ghcr_only)
    assert not any(d in p for p in reached(setup.ghcr_tap, repo) for d in set(hub) - set(ghcr))


def test_ns_is_echoed_as_oci_namespace(setup: Setup) -> None:
    status, headers, _ = get(setup, "/v2/library/busybox/manifests/1.36?ns=ghcr.io", "HEAD")
    assert status == 200
    assert headers["oci-namespace"] == "ghcr.io"
    assert headers["docker-content-digest"] == setup.ghcr["library/busybox:1.36"].digest


def test_no_registry_named_means_the_default_docker_hub(setup: Setup) -> None:
    setup.ghcr_tap.clear()
    digests = pull_all(setup, "default", "", "library/busybox", "latest")
    assert digests[0] == setup.hub["library/busybox:latest"].digest
    assert reached(setup.ghcr_tap, "library/busybox") == []


@pytest.mark.parametrize("how", ["default", "ns", "prefix"])
def test_busybox_is_library_busybox_on_docker_hub(setup: Setup, how: str) -> None:
    setup.ghcr_tap.clear()
    setup.hub_tap.clear()
    # a tag this test alone asks for, so the upstream is really consulted
    status, headers, body = get(setup, url_for(how, "docker.io", "busybox", "manifests", "1.36"))
    assert status == 200, body
    assert headers["docker-content-digest"] == setup.hub["library/busybox:1.36"].digest
    for path in reached(setup.hub_tap, "library/busybox") + reached(setup.hub_tap, "busybox"):
        assert path.startswith("/v2/library/busybox/"), path
    assert setup.ghcr_tap.requests == []
    # ...but on any other registry a one-component name stays as it is
    tag = f"absent-{how}"  # one per case: a negative answer is cached
    status, _, body = get(setup, url_for(how if how != "default" else "ns", "ghcr.io", "busybox",
                                         "manifests", tag))
    assert status == 404, body
    assert [r.path for r in setup.ghcr_tap.requests] == [f"/v2/busybox/manifests/{tag}"]


@pytest.mark.parametrize("path", [
    "/v2/library/busybox/manifests/latest?ns=quay.io",
    "/v2/quay.io/library/busybox/manifests/latest",
    "/v2/127.0.0.1:1/library/busybox/blobs/sha256:" + "a" * 64,
    "/v2/library/busybox/manifests/latest?ns=evil.example.com",
])
def test_unconfigured_registry_is_name_unknown_and_nobody_is_asked(setup: Setup,
                                                                   path: str) -> None:
    setup.hub_tap.clear()
    setup.ghcr_tap.clear()
    status, _, body = get(setup, path)
    assert status == 404
    err = json.loads(body)["errors"][0]
    assert err["code"] == "NAME_UNKNOWN"
    named = path.split("ns=")[1] if "ns=" in path else path.split("/")[2]
    assert named in err["message"]
    assert setup.hub_tap.requests == [] and setup.ghcr_tap.requests == []


def test_ns_with_control_characters_is_refused_not_echoed(setup: Setup) -> None:
    # ns= is echoed as OCI-Namespace only once it names a configured registry, so a CR/LF in
    # it can never reach a response header.
    status, headers, body = get(setup, "/v2/library/busybox/manifests/latest"
                                       "?ns=docker.io%0d%0aX-Evil:%201")
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
    assert "x-evil" not in headers and "oci-namespace" not in headers
