"""Parse the path of an OCI distribution API request. Pure; validation before any I/O."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from mirror.oci.errors import NameInvalid, Unsupported

# On `/v2/` and every error: clients check it to know they talk to a v2 registry.
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}

MAX_PATH = 1024
PEER_PREFIX = "/_mirror/peer/"  # requests between the nodes of a cluster (cluster.secret)
# Greedy name: a repository may itself contain "blobs" or "manifests" as a component.
_OBJECT_RE = re.compile(r"^(?P<name>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)$")
_TAGS_RE = re.compile(r"^(?P<name>.+)/tags/list$")

Kind = Literal["manifests", "blobs", "referrers", "tags"]
_NEXT_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ApiPath:
    name: str  # as sent, possibly with a registry prefix; the router splits it
    kind: Kind
    ref: str  # tag or digest; "" for tags/list


def parse_api_path(tail: str) -> ApiPath:
    """`tail` is the decoded path after /v2/."""
    if len(tail) > MAX_PATH:
        raise NameInvalid(f"request path longer than {MAX_PATH} characters")
    m = _TAGS_RE.match(tail)
    if m:
        return ApiPath(m.group("name"), "tags", "")
    m = _OBJECT_RE.match(tail)
    if m:
        return ApiPath(m.group("name"), m.group("kind"), m.group("ref"))  # type: ignore[arg-type]
    if "/blobs/uploads" in tail or tail.endswith("/blobs/uploads/"):
        raise Unsupported("this is a read-only pull-through mirror: pushes are not accepted")
    raise NameInvalid("not an OCI distribution API path")


def next_link(upstream_link: str | None, client_path: str, ns: str | None,
              keep: Collection[str] | None = None) -> str | None:
    """The upstream's `rel="next"` Link, rebuilt on the route the client used: its path (a
    registry prefix stays) and its `ns`. The upstream's own path names the repository as the
    upstream knows it, so a client following it verbatim reaches the default upstream.
    Only the parameters in `keep` are carried (all but `ns` when None)."""
    if not upstream_link:
        return None
    m = _NEXT_RE.search(upstream_link)
    if m is None:
        return None
    pairs = [(k, v) for k, v in parse_qsl(urlsplit(m.group(1)).query, keep_blank_values=True)
             if k != "ns" and (keep is None or k in keep)]
    if ns is not None:
        pairs.append(("ns", ns))
    return f'<{client_path}?{urlencode(pairs)}>; rel="next"'
