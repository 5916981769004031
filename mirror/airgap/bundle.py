"""Air-gap bundles: one tar file in the standard OCI image layout (`oci-layout`, `index.json`,
`blobs/<alg>/<hex>`), written from the cache by `mirror export` and read by `mirror import`
(bundle_import.py) or by any OCI tool (`skopeo copy oci-archive:BUNDLE:REF ...`).

index.json names each image with its full reference (`docker.io/library/busybox:latest`) in
`org.opencontainers.image.ref.name` and in containerd's `io.containerd.image.name`, and records
when the source mirror last confirmed the tag, so the importing site keeps honest tag ages.

Export reads the cache only (never an upstream), streams every blob from its file into the tar
in fixed-size pieces (a 20 GiB bundle needs no 20 GiB of memory) and hashes it on the way. The
stream is laid out in advance (tarlayout.py), so an interrupted export resumes; export.py and
parts.py write it to one file or to parts of a given size.

A differential bundle (`--have INVENTORY`) leaves out what the far site already holds: its
index.json still names every image, and `mirror-bundle.json` lists the digests left out, which
the importing site must hold before anything of the bundle becomes visible there."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from mirror import __version__
from mirror.airgap.tarlayout import Layout, LayoutError, write_layout
from mirror.oci.imageref import ImageRef
from mirror.oci.models import (
    IMAGE_MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    MT_OCI_INDEX,
    Digest,
    Platform,
    manifest_media_type,
    parse_manifest,
)
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.index import TagIndex

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
CHECKED_AT = "io.github.mirror.tag.checked-at"  # RFC 3339 UTC; when upstream last confirmed
BUNDLE_FILE = "mirror-bundle.json"  # differential bundles: what the importing site must hold
BUNDLE_FORMAT = "mirror-bundle"
MAX_REFERRER_DEPTH = 2  # like seed: a signature of an SBOM of an image


class BundleError(Exception):
    """A bundle that cannot be written or read; the message names the blob or image."""


@dataclass(frozen=True, slots=True)
class BundleImage:
    ref: ImageRef  # with a tag, or a digest
    digest: Digest
    media_type: str
    size: int
    checked_at: float | None  # None for references by digest


@dataclass(slots=True)
class ExportPlan:
    images: list[BundleImage] = field(default_factory=list)
    blobs: dict[str, tuple[Digest, int]] = field(default_factory=dict)  # in write order
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    planned: set[str] = field(default_factory=set)  # full references already in the plan
    left_out: dict[str, tuple[Digest, int]] = field(default_factory=dict)  # --have: not sent

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.blobs.values())

    @property
    def left_out_bytes(self) -> int:
        return sum(size for _, size in self.left_out.values())

    def leave_out(self, have: set[str]) -> None:
        """Drop every blob and manifest the far site already holds (its inventories); the
        index still names every image, and bundle_document lists what was dropped."""
        for key in [k for k in self.blobs if k in have]:
            self.left_out[key] = self.blobs.pop(key)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class CacheView:
    """Read-only access to a cache directory. It never sweeps tmp/ or writes, so exporting is
    safe while a mirror serves the same cache."""

    def __init__(self, tier: DiskTier, tags: TagIndex, db: Database) -> None:
        self.tier = tier
        self.tags = tags
        self.db = db
        self._subjects: dict[str, list[Digest]] | None = None

    def blob_size(self, digest: Digest) -> int | None:
        try:
            return self.tier.path(digest).stat().st_size
        except OSError:
            return None

    def manifest(self, digest: Digest) -> bytes | None:
        path = self.tier.path(digest)
        try:
            if path.stat().st_size > MAX_MANIFEST_SIZE:
                return None
            body = path.read_bytes()
        except OSError:
            return None
        return body if Digest.of(body, digest.algorithm) == digest else None

    def local_tags(self, upstream: str, repo: str) -> list[str]:
        return sorted(t for (u, r, t, _) in self.tags.all() if u == upstream and r == repo)

    def referrers_of(self, digest: Digest) -> list[Digest]:
        """Cached manifests whose `subject` is `digest` (what a seed found through the referrers
        API). The cache keeps no subject index, so the first call reads every cached manifest
        once: fine for an export, which is rare and reads gigabytes anyway."""
        if self._subjects is None:
            self._subjects = {}
            for (key,) in self.db.query("SELECT digest FROM content WHERE is_manifest=1"):
                try:
                    d = Digest.parse(key)
                    doc = json.loads(self.manifest(d) or b"null")
                except ValueError:  # DigestInvalid is a ValueError too
                    continue
                subject = doc.get("subject") if isinstance(doc, dict) else None
                if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
                    self._subjects.setdefault(subject["digest"], []).append(d)
        return self._subjects.get(str(digest), [])


def plan_export(view: CacheView, refs: Iterable[ImageRef], platforms: tuple[Platform, ...] = (),
                with_referrers: bool = False) -> ExportPlan:
    """What goes into the bundle, from the cache alone; problems name what is not cached."""
    plan = ExportPlan()
    depth = MAX_REFERRER_DEPTH if with_referrers else 0
    for ref in refs:
        if ref.pattern is not None:
            tags = ref.pattern.select(view.local_tags(ref.upstream, ref.repo))
            if not tags:
                plan.problems.append(f"{ref}: no cached tag matches")
            for t in tags:
                _plan_image(view, plan, ref.with_tag(t), platforms, depth)
        else:
            _plan_image(view, plan, ref, platforms, depth)
    return plan


def _plan_image(view: CacheView, plan: ExportPlan, ref: ImageRef,
                platforms: tuple[Platform, ...], referrer_depth: int) -> None:
    if str(ref) in plan.planned:
        return
    plan.planned.add(str(ref))
    checked_at: float | None = None
    if ref.digest is not None:
        digest = ref.digest
    else:
        assert ref.tag is not None
        rec = view.tags.get(ref.upstream, ref.repo, ref.tag)
        if rec is None or rec.digest is None:
            plan.problems.append(f"{ref}: not in the cache (run `mirror seed {ref}` first)")
            return
        digest, checked_at = Digest.parse(rec.digest), rec.checked_at
    body = view.manifest(digest)
    if body is None:
        plan.problems.append(f"{ref}: manifest {digest} is not in the cache")
        return
    media_type = manifest_media_type(body, None)
    walked: list[Digest] = []
    if not _plan_manifest(view, plan, ref, digest, body, platforms, walked):
        return
    plan.images.append(BundleImage(ref, digest, media_type, len(body), checked_at))
    if referrer_depth <= 0:
        return
    tags = view.local_tags(ref.upstream, ref.repo)
    for d in walked:
        # Referrers by tag (OCI tag schema `sha256-<hex>`, cosign `.sig/.att/.sbom`) keep their
        # tag; those found through the referrers API go in by digest.
        prefix = f"{d.algorithm}-{d.hex}"
        for t in tags:
            if t == prefix or t.startswith(prefix + "."):
                _plan_image(view, plan, ref.with_tag(t), (), referrer_depth - 1)
        for r in view.referrers_of(d):
            _plan_image(view, plan, ref.with_digest(r), (), referrer_depth - 1)


def _plan_manifest(view: CacheView, plan: ExportPlan, ref: ImageRef, digest: Digest, body: bytes,
                   platforms: tuple[Platform, ...], walked: list[Digest]) -> bool:
    media_type = manifest_media_type(body, None)
    parsed = parse_manifest(body, media_type)
    ok = True
    if parsed.is_index:
        present = 0
        for child in parsed.children:
            wanted = not platforms or (child.platform is not None and
                                       any(p.matches(child.platform) for p in platforms))
            if not wanted:
                continue
            child_body = view.manifest(child.digest)
            if child_body is None:
                plat = _platform_text(child.platform)
                if platforms:
                    plan.problems.append(f"{ref}: {plat} manifest {child.digest} is not cached")
                    ok = False
                else:
                    plan.notes.append(f"{ref}: {plat} is not cached and not in the bundle")
                continue
            if _plan_manifest(view, plan, ref, child.digest, child_body, (), walked):
                present += 1
            else:
                ok = False
        if present == 0 and ok:
            plan.problems.append(f"{ref}: none of the {'requested ' if platforms else ''}"
                                 f"platforms of this index is cached")
            ok = False
    elif media_type in IMAGE_MANIFEST_TYPES:
        for blob in parsed.blobs:
            size = view.blob_size(blob.digest)
            if size is None or (blob.size >= 0 and size != blob.size):
                plan.problems.append(f"{ref}: blob {blob.digest} is not cached "
                                     f"(run `mirror seed {ref}` first)")
                ok = False
            elif str(blob.digest) not in plan.blobs:
                plan.blobs[str(blob.digest)] = (blob.digest, size)
    else:
        plan.problems.append(f"{ref}: cannot export a {media_type} manifest")
        ok = False
    if ok:
        plan.blobs.setdefault(str(digest), (digest, len(body)))
        walked.append(digest)
    return ok


def _platform_text(platform: dict[str, Any] | None) -> str:
    if not platform:
        return "an unnamed platform"
    return "/".join(str(platform.get(k)) for k in ("os", "architecture", "variant")
                    if platform.get(k))


def index_document(images: list[BundleImage]) -> bytes:
    manifests = []
    for img in images:
        name = str(img.ref)
        annotations = {REF_NAME: name, CONTAINERD_NAME: name}
        if img.checked_at is not None:
            annotations[CHECKED_AT] = rfc3339(img.checked_at)
        manifests.append({"mediaType": img.media_type, "digest": str(img.digest),
                          "size": img.size, "annotations": annotations})
    doc = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": manifests}
    return json.dumps(doc, indent=2).encode() + b"\n"


def bundle_document(plan: ExportPlan) -> bytes | None:
    """`mirror-bundle.json`, only in a bundle with content left out: the digests the importing
    site must already hold (checked before anything of the bundle becomes visible there)."""
    if not plan.left_out:
        return None
    doc = {"format": BUNDLE_FORMAT, "version": 1, "mirror_version": __version__,
           "expects": [{"digest": str(d), "size": size} for d, size in plan.left_out.values()]}
    return json.dumps(doc, indent=1).encode() + b"\n"


def build_layout(plan: ExportPlan) -> Layout:
    """The bundle's tar stream, in a fixed order: oci-layout, index.json, mirror-bundle.json
    (differential bundles only), the directories, then every blob sent, once."""
    layout = Layout()
    layout.add_file(LAYOUT_FILE, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
    layout.add_file(INDEX_FILE, index_document(plan.images))
    doc = bundle_document(plan)
    if doc is not None:
        layout.add_file(BUNDLE_FILE, doc)
    layout.add_dir("blobs")
    for alg in sorted({d.algorithm for d, _ in plan.blobs.values()}):
        layout.add_dir(f"blobs/{alg}")
    for digest, size in plan.blobs.values():
        layout.add_blob(digest, size)
    layout.close()
    return layout


class _StreamSink:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def checkpoint(self, offset: int) -> None:
        pass


def write_bundle(view: CacheView, plan: ExportPlan, out: IO[bytes],
                 progress: Callable[[int], None] | None = None) -> None:
    """Stream the bundle to `out` (a pipe: nothing seeks, nothing resumes)."""
    try:
        write_layout(build_layout(plan), view.tier.path, _StreamSink(out), 0, progress)
    except LayoutError as e:
        raise BundleError(str(e)) from None
