"""Image references as users write them, and the tag filters of seed/export/warm. Pure."""

from __future__ import annotations

import pytest

from mirror.config import parse_config
from mirror.oci.errors import ConfigError
from mirror.oci.imageref import ImageRef, ImageRefError, parse_image_ref, split_reference
from mirror.oci.models import Digest
from mirror.oci.tagfilter import parse_tag_pattern, parse_version

D = "sha256:" + "ab" * 32
CONFIG = parse_config({"upstreams": {
    "docker.io": {"url": "http://127.0.0.1:1"},
    "ghcr.io": {"url": "http://127.0.0.1:2"},
    "registry.example:5000": {"url": "http://127.0.0.1:3", "aliases": ["reg"]},
}})
ALIASES = CONFIG.alias_table()


def ref(text: str, **kw: bool) -> ImageRef:
    return parse_image_ref(text, ALIASES, CONFIG.default_upstream, **kw)


@pytest.mark.parametrize(("text", "full"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("nginx:1.27", "docker.io/library/nginx:1.27"),
    ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
    ("docker.io/busybox:1", "docker.io/library/busybox:1"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("registry-1.docker.io/org/app:v2", "docker.io/org/app:v2"),
    ("ghcr.io/org/team/app:1.0", "ghcr.io/org/team/app:1.0"),
    ("registry.example:5000/a/b:c", "registry.example:5000/a/b:c"),
    ("ghcr.io/org/app@" + D, "ghcr.io/org/app@" + D),
    ("nginx:1.27@" + D, "docker.io/library/nginx@" + D),
    ("  busybox:1.36  ", "docker.io/library/busybox:1.36"),
])
def test_full_reference(text: str, full: str) -> None:
    assert str(ref(text)) == full


def test_parts_follow_the_router() -> None:
    r = ref("GHCR.IO/org/app:v1")  # registry names are case-insensitive, like the router's
    assert (r.upstream, r.repo, r.tag, r.digest) == ("ghcr.io", "org/app", "v1", None)
    r = ref("nginx:1.27@" + D)
    assert r.reference == D and r.tag == "1.27" and r.digest == Digest.parse(D)
    assert ref("busybox").with_tag("1.36").reference == "1.36"


def test_port_is_not_a_tag() -> None:
    assert split_reference("registry.example:5000/a/b") == ("registry.example:5000/a/b", None, None)
    assert split_reference("registry.example:5000/a/b:c@" + D) == (
        "registry.example:5000/a/b", "c", D)


@pytest.mark.parametrize(("text", "problem"), [
    ("", "1 to 512"),
    ("quay.io/org/app:1", "registry 'quay.io' is not configured"),
    ("Busybox:1", "invalid repository name"),
    ("busybox:-bad", "invalid tag"),
    ("busybox@sha256:1234", "sha256 digest"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("busybox:v1.*@" + D, "cannot be combined"),
    ("busybox:>=x", "invalid semver comparator"),
    ("busybox:>=1.2.3.4", "not a version"),
    ("docker.io/", "repository name"),
])
def test_bad_reference_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ImageRefError) as e:
        ref(text)
    assert problem in str(e.value)


def test_unknown_registry_kept_when_importing() -> None:
    r = ref("quay.io/org/app:1", allow_unknown_registry=True)
    assert str(r) == "quay.io/org/app:1"
    no_hub = parse_config({"offline": True})  # no upstream, no default: Docker's convention
    r = parse_image_ref("busybox:1", no_hub.alias_table(), no_hub.default_upstream,
                        allow_unknown_registry=True)
    assert str(r) == "docker.io/library/busybox:1"


def test_glob_patterns() -> None:
    r = ref("ghcr.io/org/app:v1.*")
    assert r.tag is None and r.pattern is not None and str(r) == "ghcr.io/org/app:v1.*"
    with pytest.raises(ImageRefError):
        _ = r.reference  # a pattern must be expanded first
    tags = ["v1.0", "v1.10", "v1.2-rc1", "v2.0", "latest", "v1"]
    assert r.pattern.select(tags) == ["v1.0", "v1.10", "v1.2-rc1"]
    assert parse_tag_pattern("1.3?").select(["1.30", "1.3", "1.31", "1.300"]) == ["1.30", "1.31"]


@pytest.mark.parametrize(("pattern", "expected"), [
    (">=1.2,<2", ["1.2.0", "v1.2.5", "1.10"]),
    (">=1.2 <2", ["1.2.0", "v1.2.5", "1.10"]),
    ("^1.2", ["1.2.0", "v1.2.5", "1.10"]),
    ("~1.2", ["1.2.0", "v1.2.5"]),
    ("^0.3", ["0.3.1"]),
    ("=1.2", ["1.2.0", "v1.2.5"]),
    (">=2.0.0-rc.1", ["2.0.0-rc.1", "2.0.0-rc.2", "2.0.0"]),
    ("<1.2", ["0.3.1", "1.1.9"]),
])
def test_semver_ranges(pattern: str, expected: list[str]) -> None:
    tags = ["latest", "1.1.9", "1.2.0", "v1.2.5", "1.10", "2.0.0-rc.1", "2.0.0-rc.2", "2.0.0",
            "0.3.1", "1.2.0-beta", "stable-1.2"]
    assert parse_tag_pattern(pattern).select(tags) == expected


def test_versions_order_like_semver() -> None:
    def v(t: str) -> object:
        parsed = parse_version(t)
        assert parsed is not None
        return parsed[0]

    assert v("1.0.0-alpha") < v("1.0.0-alpha.1") < v("1.0.0-beta") < v("1.0.0-beta.2")  # type: ignore[operator]
    assert v("1.0.0-beta.2") < v("1.0.0-beta.11") < v("1.0.0-rc.1") < v("1.0.0")  # type: ignore[operator]
    assert parse_version("latest") is None and parse_version("01.2") is None


def test_warm_config_is_validated_with_keys() -> None:
    ok = parse_config({"upstreams": {"docker.io": "http://127.0.0.1:1"},
                       "warm": {"interval": "10m", "platforms": ["linux/amd64"],
                                "images": ["busybox", "nginx:>=1.27,<2", "library/x:v1.*"]}})
    assert ok.warm.interval == 600 and ok.warm.images[1] == "nginx:>=1.27,<2"
    assert parse_config({"upstreams": {"docker.io": "http://127.0.0.1:1"},
                         "warm": ["busybox"]}).warm.interval == 3600
    with pytest.raises(ConfigError) as e:
        parse_config({"upstreams": {"docker.io": "http://127.0.0.1:1"},
                      "warm": {"interval": "0s", "images": ["ghcr.io/a:1", 5, "Bad"],
                               "platforms": ["linux"], "extra": 1}})
    problems = "\n".join(e.value.problems)
    for key in ("warm.interval", "warm.images[0]", "warm.images[1]", "warm.images[2]",
                "warm.platforms[0]", "warm.extra"):
        assert key in problems, problems
