"""Pure parsers: names, references, digests, Accept, Range, challenges. Property tests included."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror.oci.apipath import parse_api_path
from mirror.oci.errors import ClientError, DigestInvalid, NameInvalid, RangeNotSatisfiable, TagInvalid
from mirror.oci.models import Digest, Reference, parse_accept, parse_range, parse_repo_name
from mirror.upstream.auth import parse_challenges


@pytest.mark.parametrize("name", ["library/busybox", "a", "org/team/app", "my-app_x.y/z__q", "a--b"])
def test_valid_names(name: str) -> None:
    assert parse_repo_name(name) == name


@pytest.mark.parametrize("name", ["", "Upper", "a//b", "/a", "a/", "../etc", "a/../b", "-a", "a_",
                                  "a b", "a" * 256, "a/.b", "a:b"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        parse_repo_name(name)


def test_digests() -> None:
    d = Digest.parse("sha256:" + "a" * 64)
    assert str(d) == "sha256:" + "a" * 64
    assert Digest.parse("sha512:" + "b" * 128).algorithm == "sha512"
    for bad in ["sha256:" + "a" * 63, "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256", "",
                "sha256:" + "g" * 64, "sha256:../../" + "a" * 58]:
        with pytest.raises(DigestInvalid):
            Digest.parse(bad)
    assert Digest.of(b"") == Digest.parse(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_references() -> None:
    assert Reference.parse("latest").tag == "latest"
    assert Reference.parse("sha256:" + "0" * 64).digest is not None
    for bad in ["-x", ".x", "a" * 129, "a/b", "a b"]:
        with pytest.raises(TagInvalid):
            Reference.parse(bad)


def test_accept_forms() -> None:
    one_line = ["application/vnd.docker.distribution.manifest.v2+json, "
                "application/vnd.oci.image.index.v1+json;q=0.9, */*"]
    assert parse_accept(one_line) == ["application/vnd.docker.distribution.manifest.v2+json",
                                      "application/vnd.oci.image.index.v1+json", "*/*"]
    many = ["application/json", "application/vnd.oci.image.manifest.v1+json"]
    assert parse_accept(many) == many
    assert parse_accept(["a/b;q=0, c/d"]) == ["c/d"]


@pytest.mark.parametrize(("header", "size", "want"), [
    ("bytes=0-9", 100, (0, 9)), ("bytes=90-", 100, (90, 99)), ("bytes=-10", 100, (90, 99)),
    ("bytes=50-500", 100, (50, 99)), ("bytes=0-0,5-6", 100, None), (None, 100, None),
    ("bytes=-500", 100, (0, 99))])
def test_ranges(header: str | None, size: int, want: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == want


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=5-2", "bytes=-0", "items=0-1", "bytes=a-b",
                                    "bytes=-", "bytes=1-2-3"])
def test_bad_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_challenges() -> None:
    (ch,) = parse_challenges('Bearer realm="https://auth.docker.io/token",'
                             'service="registry.docker.io",scope="repository:library/x:pull"')
    assert ch.scheme == "bearer" and ch.realm == "https://auth.docker.io/token"
    assert ch.params["scope"] == "repository:library/x:pull"
    both = parse_challenges('Basic realm="r1", Bearer realm="https://t/x",service=svc')
    assert [c.scheme for c in both] == ["basic", "bearer"]
    assert both[1].params["service"] == "svc"
    assert parse_challenges("") == []


@given(st.text(max_size=300))
def test_api_path_parser_never_crashes(tail: str) -> None:
    try:
        api = parse_api_path(tail)
    except ClientError:
        return
    assert api.kind in ("manifests", "blobs", "referrers", "tags")


@given(st.text(max_size=80), st.integers(min_value=0, max_value=10**12))
def test_range_parser_stays_in_bounds(header: str, size: int) -> None:
    try:
        r = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if r is not None:
        start, end = r
        assert 0 <= start <= end < size


@given(st.one_of(st.text(max_size=200), st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True),
                 st.from_regex(r"[a-z0-9]+(/[a-z0-9]+)*", fullmatch=True)))
def test_names_and_refs_never_crash(text: str) -> None:
    """Anything is either refused with a client error (a 4xx with an OCI body) or accepted as
    exactly what was written: no other exception, no silent rewriting."""
    def reference(t: str) -> str:
        return str(Reference.parse(t))

    def digest(t: str) -> str:
        return str(Digest.parse(t))

    parsers: dict[str, Callable[[str], str]] = {"name": parse_repo_name, "reference": reference,
                                                "digest": digest}
    for kind, fn in parsers.items():
        try:
            parsed = fn(text)
        except ClientError as e:
            assert 400 <= e.status < 500, (kind, e)
            continue
        assert parsed == text, (kind, parsed)


@given(st.text(max_size=200))
def test_challenge_parser_never_crashes(text: str) -> None:
    for ch in parse_challenges(text):
        assert ch.scheme == ch.scheme.lower()
