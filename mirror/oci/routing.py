"""Which upstream serves a request, and under which repository name. Pure functions.

Three ways a client names the registry, in order of precedence:
  1. `?ns=<registry>` (containerd adds it to every request to a mirror host);
  2. a path prefix `/v2/<registry>/<repo>/...` (containerd override_path, people with curl);
  3. nothing: `default_upstream` (dockerd `registry-mirrors` only mirrors Docker Hub).
The mirror is never an open proxy: an unconfigured registry is a 404 NAME_UNKNOWN."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mirror.oci.errors import NameInvalid, NameUnknown
from mirror.oci.models import parse_repo_name

DOCKER_HUB = "docker.io"
# Names people write for Docker Hub; all of them mean the `docker.io` upstream entry.
DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str  # canonical upstream name, a key of Config.upstreams
    repo: str  # repository name as the upstream knows it
    via: Literal["ns", "prefix", "default"]


def looks_like_registry(component: str) -> bool:
    # Docker's own rule (reference.splitDockerDomain): a first component with a dot or a port,
    # or "localhost", is a registry host, never a Docker Hub user name.
    return "." in component or ":" in component or component == "localhost"


def resolve_route(name: str, ns: str | None, aliases: Mapping[str, str],
                  default_upstream: str | None) -> Route:
    via: Literal["ns", "prefix", "default"]
    if ns is not None:
        upstream = aliases.get(ns.lower())
        if upstream is None:
            raise NameUnknown(f"registry {ns[:100]!r} is not configured on this mirror")
        repo, via = name, "ns"
        first, sep, rest = name.partition("/")
        if sep and rest and looks_like_registry(first) and aliases.get(first.lower()) == upstream:
            # containerd with `override_path` on a host like http://mirror/v2/docker.io sends
            # both: /v2/docker.io/library/busybox/...?ns=docker.io. The prefix repeats the
            # registry ns already names; forwarding it would ask Docker Hub for a repository
            # called "docker.io/library/busybox" and the 404 would send containerd elsewhere.
            repo = rest
    else:
        first, sep, rest = name.partition("/")
        if sep and looks_like_registry(first):
            upstream = aliases.get(first.lower())
            if upstream is None:
                raise NameUnknown(f"registry {first[:100]!r} is not configured on this mirror")
            if not rest:
                raise NameInvalid("repository name missing after the registry")
            repo, via = rest, "prefix"
        else:
            if default_upstream is None:
                raise NameUnknown("no default upstream: name the registry with ?ns= or a path prefix")
            upstream, repo, via = default_upstream, name, "default"
    if upstream == DOCKER_HUB and "/" not in repo:
        # Docker Hub keeps official images under library/: `nginx` means `library/nginx`.
        repo = f"library/{repo}"
    return Route(upstream, parse_repo_name(repo), via)
