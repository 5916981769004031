"""Image references as users write them (`nginx:1.27`, `ghcr.io/org/app@sha256:...`, `busybox`,
`ghcr.io/org/app:v1.*`), resolved to (upstream, repository, tag | digest | tag pattern).

Pure. The registry part follows the router's rules, so `mirror seed nginx` and a client pulling
`nginx` through the mirror land on the same upstream and repository: a first component with a
dot, a port or `localhost` names a registry (Docker's rule), aliases map to their upstream, names
without a registry go to `default_upstream`, and Docker Hub official images live under library/.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from mirror.oci.errors import MirrorError, NameUnknown
from mirror.oci.models import Digest, parse_repo_name, parse_tag
from mirror.oci.routing import DOCKER_HUB, DOCKER_HUB_ALIASES, looks_like_registry, resolve_route
from mirror.oci.tagfilter import TagPattern, is_pattern, parse_tag_pattern

MAX_REF_LENGTH = 512
DEFAULT_TAG = "latest"


class ImageRefError(ValueError):
    """A reference that cannot be used; the message names the reference and the problem."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    upstream: str  # canonical upstream name (a key of Config.upstreams), e.g. docker.io
    repo: str  # repository as the upstream knows it, e.g. library/busybox
    tag: str | None = None
    digest: Digest | None = None  # wins over the tag when both are given
    pattern: TagPattern | None = None  # a glob or semver range to expand over the tag list

    @property
    def name(self) -> str:
        """Registry and repository: `docker.io/library/busybox`."""
        return f"{self.upstream}/{self.repo}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        if self.tag is None:
            raise ImageRefError(f"{self} is a tag pattern; expand it over the tag list first")
        return self.tag

    def with_tag(self, tag: str) -> ImageRef:
        return replace(self, tag=tag, digest=None, pattern=None)

    def with_digest(self, digest: Digest) -> ImageRef:
        return replace(self, tag=None, digest=digest, pattern=None)

    def __str__(self) -> str:
        """The full reference: `docker.io/library/busybox:latest`, `ghcr.io/o/a@sha256:...`."""
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        if self.pattern is not None:
            return f"{self.name}:{self.pattern.text}"
        return f"{self.name}:{self.tag}"


def split_reference(text: str) -> tuple[str, str | None, str | None]:
    """(name, tag or tag pattern, digest text) of `name[:tag][@digest]`; no validation."""
    name, at, digest = text.partition("@")
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):  # a colon before the last slash is a registry port
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest if at else None


def parse_image_ref(text: str, aliases: Mapping[str, str], default_upstream: str | None, *,
                    allow_unknown_registry: bool = False) -> ImageRef:
    """Resolve a reference; `aliases` maps lowercase registry names to upstream names
    (Config.alias_table). With allow_unknown_registry (importing a bundle from another site) a
    registry this config does not know is kept under its own name instead of refused."""
    text = text.strip()
    if not text or len(text) > MAX_REF_LENGTH:
        raise ImageRefError(f"image reference must be 1 to {MAX_REF_LENGTH} characters")
    name, tag_text, digest_text = split_reference(text)
    try:
        digest = Digest.parse(digest_text) if digest_text is not None else None
        pattern: TagPattern | None = None
        tag: str | None = None
        if tag_text is not None:
            if is_pattern(tag_text):
                if digest is not None:
                    raise ImageRefError(f"{text!r}: a tag pattern cannot be combined with a digest")
                pattern = parse_tag_pattern(tag_text)
            else:
                tag = parse_tag(tag_text)
        elif digest is None:
            tag = DEFAULT_TAG
        upstream, repo = _route(name, aliases, default_upstream, allow_unknown_registry)
    except MirrorError as e:
        raise ImageRefError(f"{text!r}: {e.message}") from None
    except ValueError as e:
        raise ImageRefError(f"{text!r}: {e}") from None
    return ImageRef(upstream, repo, tag, digest, pattern)


def _route(name: str, aliases: Mapping[str, str], default_upstream: str | None,
           allow_unknown: bool) -> tuple[str, str]:
    if not name:
        raise ImageRefError("repository name missing")
    try:
        route = resolve_route(name, None, aliases, default_upstream)
        return route.upstream, route.repo
    except NameUnknown:
        if not allow_unknown:
            if default_upstream is None and not looks_like_registry(name.partition("/")[0]):
                raise ImageRefError("names no registry, and the config has no "
                                    "default_upstream") from None
            raise
    first, sep, rest = name.partition("/")
    if sep and looks_like_registry(first):
        registry, repo = first.lower(), rest
    else:  # no registry named and no default: Docker's convention is Docker Hub
        registry, repo = DOCKER_HUB, name
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    return registry, parse_repo_name(repo)
