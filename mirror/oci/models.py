"""Names, references, digests, media types and manifest parsing. Pure: no I/O here."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from mirror.oci.errors import DigestInvalid, NameInvalid, TagInvalid

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
MT_DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"

INDEX_TYPES = frozenset({MT_DOCKER_LIST, MT_OCI_INDEX})
IMAGE_MANIFEST_TYPES = frozenset({MT_DOCKER_MANIFEST, MT_OCI_MANIFEST})
# Everything we ask an upstream for, so we can store the exact bytes and negotiate locally.
# Not Docker schema 1: its digest is over the payload without the JWS signatures, so the bytes
# served can never verify against it (SCHEMA1_TYPES are refused with a clear error instead).
MANIFEST_TYPES: tuple[str, ...] = (
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
)
SCHEMA1_TYPES = frozenset({MT_DOCKER_V1, MT_DOCKER_V1_SIGNED})

MAX_NAME_LENGTH = 255
MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # distribution's limit; a bigger "manifest" is an attack

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"^[a-f0-9]+$")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise DigestInvalid(f"invalid digest {text[:80]!r}: expected algorithm:hex")
        want = _HEX_LENGTH.get(algorithm)
        if want is None:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:20]!r}")
        if len(hexpart) != want or not _HEX_RE.match(hexpart):
            raise DigestInvalid(f"invalid {algorithm} digest: need {want} lowercase hex characters")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Any:
        return hashlib.new(self.algorithm)

    def names_empty(self) -> bool:
        """Whether this is the digest of zero bytes (the only content of length 0)."""
        return self.hex == hashlib.new(self.algorithm, b"").hexdigest()

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def looks_like_digest(ref: str) -> bool:
    return ":" in ref


def parse_repo_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(f"repository name must be 1 to {MAX_NAME_LENGTH} characters")
    if not _NAME_RE.match(name):
        raise NameInvalid(f"invalid repository name {name[:100]!r}")
    return name


def parse_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise TagInvalid(f"invalid tag {tag[:140]!r}")
    return tag


@dataclass(frozen=True, slots=True)
class Reference:
    """A manifest reference from a URL: either a tag or a digest."""

    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, ref: str) -> Reference:
        if looks_like_digest(ref):
            return cls(digest=Digest.parse(ref))
        return cls(tag=parse_tag(ref))

    def __str__(self) -> str:
        return str(self.digest) if self.digest is not None else str(self.tag)


def parse_accept(values: list[str]) -> list[str]:
    """Media types a client accepts, from one comma-joined line or many lines (both happen).

    q=0 means "not acceptable"; other parameters are dropped."""
    out: list[str] = []
    for line in values:
        for part in line.split(","):
            mt, *params = (p.strip() for p in part.split(";"))
            if not mt:
                continue
            if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
                continue
            out.append(mt.lower())
    return out


@functools.lru_cache(maxsize=256)
def _accept_set(lines: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(parse_accept(list(lines)))


def parse_accept_lines(values: list[str]) -> list[str]:
    """parse_accept for a request's header lines, remembered: clients send the same few
    Accept headers over and over (dockerd shuffles its lines, hence the sort), and parsing
    showed in the profile of HEAD by tag. Only membership matters to the callers."""
    return list(_accept_set(tuple(sorted(values))))


def accepts(accepted: list[str], media_type: str) -> bool:
    return not accepted or "*/*" in accepted or media_type in accepted


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform must be os/arch[/variant], got {text!r}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, other: dict[str, Any]) -> bool:
        if other.get("os") != self.os or other.get("architecture") != self.architecture:
            return False
        return self.variant is None or other.get("variant") == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: dict[str, Any] | None = None


def _descriptor(raw: Any) -> Descriptor | None:
    if not isinstance(raw, dict):
        return None
    try:
        digest = Digest.parse(str(raw.get("digest", "")))
        size = int(raw.get("size", -1))
    except (DigestInvalid, ValueError):
        return None
    platform = raw.get("platform")
    return Descriptor(
        media_type=str(raw.get("mediaType", "")),
        digest=digest,
        size=size,
        platform=platform if isinstance(platform, dict) else None,
    )


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    children: tuple[Descriptor, ...]  # index/list entries
    blobs: tuple[Descriptor, ...]  # config + layers of an image manifest

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def manifest_media_type(data: bytes, header_type: str | None) -> str:
    """The manifest's own mediaType field wins over a Content-Type header (some upstreams send
    text/plain or application/json)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return header_type or MT_DOCKER_V1_SIGNED
    if isinstance(doc, dict):
        mt = doc.get("mediaType")
        if isinstance(mt, str) and mt:
            return mt
        if "manifests" in doc:
            return MT_OCI_INDEX
        if "layers" in doc and "config" in doc:
            return MT_OCI_MANIFEST
        if doc.get("schemaVersion") == 1:
            return MT_DOCKER_V1_SIGNED if "signatures" in doc else MT_DOCKER_V1
    return header_type or MT_OCI_MANIFEST


def parse_manifest(data: bytes, media_type: str) -> ParsedManifest:
    try:
        doc = json.loads(data)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    children: list[Descriptor] = []
    blobs: list[Descriptor] = []
    if media_type in INDEX_TYPES:
        for raw in doc.get("manifests") or []:
            d = _descriptor(raw)
            if d is not None:
                children.append(d)
    elif media_type in IMAGE_MANIFEST_TYPES:
        for raw in [doc.get("config"), *(doc.get("layers") or [])]:
            d = _descriptor(raw)
            if d is not None:
                blobs.append(d)
    return ParsedManifest(media_type, tuple(children), tuple(blobs))


def select_platform(index: ParsedManifest, platform: Platform = DEFAULT_PLATFORM) -> Descriptor | None:
    for child in index.children:
        if child.platform is not None and platform.matches(child.platform):
            return child
    return None


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range [start, end] (inclusive) from a Range header, or None for the whole body.

    Several ranges at once are answered with the whole body (RFC 9110 allows it, and no registry
    client asks for them); a malformed or unsatisfiable range raises RangeNotSatisfiable."""
    from mirror.oci.errors import RangeNotSatisfiable

    if header is None:
        return None
    header = header.strip().replace(" ", "")
    if "," in header and header.startswith("bytes="):
        return None
    m = _RANGE_RE.match(header)
    if not m or (not m.group(1) and not m.group(2)) or len(header) > 64:
        raise RangeNotSatisfiable(f"invalid Range header {header[:64]!r}", size)
    if not m.group(1):  # suffix range: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range", size)
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start > end or start >= size:
        raise RangeNotSatisfiable(f"range {start}-{m.group(2)} outside 0-{size - 1}", size)
    return start, min(end, size - 1)
