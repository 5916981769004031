"""Routing is pure: which upstream serves a request, and under which repository name.

Three ways to name the registry (ns= beats a path prefix beats the default), the aliases of
Docker Hub, Docker Hub's library/ rule, and the guarantee that the mirror is never an open proxy:
a registry that is not configured is a 404 NAME_UNKNOWN that names it."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror.config import Config, parse_config
from mirror.oci.errors import NameInvalid, NameUnknown
from mirror.oci.routing import Route, resolve_route

UPSTREAMS = {
    "docker.io": "http://127.0.0.1:1",
    "ghcr.io": "http://127.0.0.1:2",
    "registry.k8s.io": "http://127.0.0.1:3",
    "registry.example.com:5000": {"url": "http://127.0.0.1:4", "aliases": ["private.local"]},
}


def config(**top: object) -> Config:
    return parse_config({"upstreams": UPSTREAMS, **top}, env={})


CONFIG = config()
ALIASES = CONFIG.alias_table()


def route(name: str, ns: str | None = None, aliases: Mapping[str, str] = ALIASES,
          default: str | None = "docker.io") -> Route:
    return resolve_route(name, ns, aliases, default)


# -- the three ways ----------------------------------------------------------------------------

def test_ns_names_the_registry_containerd_style() -> None:
    assert route("org/app", ns="ghcr.io") == Route("ghcr.io", "org/app", "ns")
    assert route("library/busybox", ns="docker.io") == Route("docker.io", "library/busybox", "ns")


def test_path_prefix_names_the_registry() -> None:
    assert route("ghcr.io/org/app") == Route("ghcr.io", "org/app", "prefix")
    assert route("registry.k8s.io/pause") == Route("registry.k8s.io", "pause", "prefix")
    assert route("registry.example.com:5000/team/app") == Route(
        "registry.example.com:5000", "team/app", "prefix")
    assert route("docker.io/library/busybox") == Route("docker.io", "library/busybox", "prefix")


def test_no_registry_goes_to_the_default_upstream() -> None:
    assert route("org/app") == Route("docker.io", "org/app", "default")
    assert route("org/app", default="ghcr.io") == Route("ghcr.io", "org/app", "default")


def test_config_default_upstream_is_docker_hub_when_configured() -> None:
    assert CONFIG.default_upstream == "docker.io"
    assert config(default_upstream="ghcr.io").default_upstream == "ghcr.io"


# -- precedence --------------------------------------------------------------------------------

def test_ns_beats_the_default() -> None:
    assert route("library/busybox", ns="ghcr.io").upstream == "ghcr.io"


def test_ns_beats_a_path_prefix_that_names_another_registry() -> None:
    # ns= is what containerd's hosts.toml chose; a dotted first component is then part of the
    # repository name on that registry (private registries allow it).
    assert route("ghcr.io/org/app", ns="registry.example.com:5000") == Route(
        "registry.example.com:5000", "ghcr.io/org/app", "ns")


def test_ns_and_a_prefix_naming_the_same_registry_strip_the_prefix() -> None:
    # containerd with override_path on http://mirror/v2/docker.io sends both.
    assert route("docker.io/library/busybox", ns="docker.io") == Route(
        "docker.io", "library/busybox", "ns")
    assert route("ghcr.io/org/app", ns="ghcr.io") == Route("ghcr.io", "org/app", "ns")
    assert route("index.docker.io/busybox", ns="docker.io") == Route(
        "docker.io", "library/busybox", "ns")


def test_prefix_beats_the_default() -> None:
    assert route("ghcr.io/library/busybox", default="docker.io") == Route(
        "ghcr.io", "library/busybox", "prefix")


def test_first_component_without_dot_or_port_is_a_docker_hub_user_not_a_registry() -> None:
    # Docker's own rule (splitDockerDomain): "myuser/app" is a repository on the default.
    assert route("myuser/app") == Route("docker.io", "myuser/app", "default")
    assert route("localhost/app", aliases={**ALIASES, "localhost": "ghcr.io"}) == Route(
        "ghcr.io", "app", "prefix")


# -- aliases -----------------------------------------------------------------------------------

@pytest.mark.parametrize("alias", ["index.docker.io", "registry-1.docker.io",
                                   "registry.hub.docker.com", "Docker.IO", "INDEX.docker.io"])
def test_docker_hub_aliases_by_ns_and_by_prefix(alias: str) -> None:
    assert route("library/busybox", ns=alias) == Route("docker.io", "library/busybox", "ns")
    assert route(f"{alias}/library/busybox") == Route("docker.io", "library/busybox", "prefix")


def test_configured_aliases_of_other_registries() -> None:
    assert route("team/app", ns="private.local").upstream == "registry.example.com:5000"
    assert route("private.local/team/app") == Route("registry.example.com:5000", "team/app",
                                                    "prefix")


def test_alias_table_holds_names_and_aliases_lowercased() -> None:
    assert ALIASES == {
        "docker.io": "docker.io",
        "index.docker.io": "docker.io",
        "registry-1.docker.io": "docker.io",
        "registry.hub.docker.com": "docker.io",
        "ghcr.io": "ghcr.io",
        "registry.k8s.io": "registry.k8s.io",
        "registry.example.com:5000": "registry.example.com:5000",
        "private.local": "registry.example.com:5000",
    }


# -- Docker Hub's library/ rule ----------------------------------------------------------------

@pytest.mark.parametrize(("name", "ns"), [
    ("busybox", None), ("busybox", "docker.io"), ("docker.io/busybox", None),
    ("index.docker.io/busybox", None), ("busybox", "registry-1.docker.io"),
])
def test_single_component_names_on_docker_hub_live_under_library(name: str, ns: str | None) -> None:
    assert route(name, ns=ns).repo == "library/busybox"
    assert route(name, ns=ns).upstream == "docker.io"


def test_library_rule_only_for_docker_hub() -> None:
    assert route("pause", ns="registry.k8s.io").repo == "pause"
    assert route("registry.k8s.io/pause").repo == "pause"
    assert route("busybox", default="ghcr.io") == Route("ghcr.io", "busybox", "default")


def test_library_rule_leaves_multi_component_names_alone() -> None:
    assert route("library/busybox").repo == "library/busybox"
    assert route("org/team/app").repo == "org/team/app"


# -- never an open proxy -----------------------------------------------------------------------

@pytest.mark.parametrize("registry", ["evil.example.com", "quay.io", "127.0.0.1:2375",
                                      "localhost", "localhost:5000"])
def test_unconfigured_registry_by_ns_is_name_unknown_naming_it(registry: str) -> None:
    with pytest.raises(NameUnknown) as e:
        route("org/app", ns=registry)
    assert e.value.status == 404
    assert e.value.code == "NAME_UNKNOWN"
    assert registry in e.value.message
    assert "not configured" in e.value.message


@pytest.mark.parametrize("registry", ["evil.example.com", "quay.io", "127.0.0.1:2375",
                                      "localhost:5000"])
def test_unconfigured_registry_by_prefix_is_name_unknown_naming_it(registry: str) -> None:
    with pytest.raises(NameUnknown) as e:
        route(f"{registry}/org/app")
    assert e.value.status == 404
    assert registry in e.value.message


def test_empty_ns_is_not_a_registry() -> None:
    with pytest.raises(NameUnknown):
        route("org/app", ns="")


def test_no_default_upstream_asks_for_a_registry() -> None:
    with pytest.raises(NameUnknown) as e:
        route("org/app", default=None)
    assert "ns=" in e.value.message


def test_a_config_without_docker_hub_has_no_default() -> None:
    cfg = parse_config({"upstreams": {"ghcr.io": "http://127.0.0.1:2"}}, env={})
    assert cfg.default_upstream is None
    with pytest.raises(NameUnknown):
        resolve_route("busybox", None, cfg.alias_table(), cfg.default_upstream)
    # ...and Docker Hub's aliases mean nothing there.
    with pytest.raises(NameUnknown):
        resolve_route("busybox", "index.docker.io", cfg.alias_table(), cfg.default_upstream)


@given(st.from_regex(r"[a-z]{1,10}\.(com|net|org|io)", fullmatch=True))
def test_any_dotted_registry_that_is_not_configured_is_refused(host: str) -> None:
    if host.lower() in ALIASES:
        return
    for ns, name in ((host, "org/app"), (None, f"{host}/org/app")):
        with pytest.raises(NameUnknown) as e:
            route(name, ns=ns)
        assert host in e.value.message


def test_error_message_is_bounded_for_huge_names() -> None:
    with pytest.raises(NameUnknown) as e:
        route("org/app", ns="x." * 5000)
    assert len(e.value.message) < 300


# -- invalid names -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "Library/busybox",  # uppercase
    "org//app",  # empty component
    "org/app-",  # trailing separator
    "org/-app",
    "org/a..b",
    "ghcr.io/Org/app",  # valid registry, invalid repository
    "org/" + "a" * 300,  # longer than 255
])
def test_invalid_repository_names(name: str) -> None:
    with pytest.raises(NameInvalid) as e:
        route(name)
    assert e.value.status == 400


def test_invalid_names_after_ns() -> None:
    with pytest.raises(NameInvalid):
        route("Org/App", ns="ghcr.io")


def test_prefix_without_repository_is_invalid() -> None:
    with pytest.raises(NameInvalid):
        route("ghcr.io/")


def test_route_is_a_pure_function_of_its_inputs() -> None:
    # Same input, same answer, and the alias table is not mutated.
    before = dict(ALIASES)
    assert route("busybox") == route("busybox")
    assert before == ALIASES
