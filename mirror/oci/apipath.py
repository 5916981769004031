"""Parse the path of an OCI distribution API request. Pure; validation before any I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mirror.oci.errors import NameInvalid, Unsupported

# On `/v2/` and every error: clients check it to know they talk to a v2 registry.
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}

MAX_PATH = 1024
# Greedy name: a repository may itself contain "blobs" or "manifests" as a component.
_OBJECT_RE = re.compile(r"^(?P<name>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)$")
_TAGS_RE = re.compile(r"^(?P<name>.+)/tags/list$")

Kind = Literal["manifests", "blobs", "referrers", "tags"]


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
