"""`mirror import`: take an OCI image layout (our bundle tar or its parts, any `oci-archive`, or
a directory written by `skopeo copy ... oci:DIR`) into the cache, so an offline mirror serves
its tags.

All or nothing, in three steps:
  1. stage (staging.py): stream every blob into the cache's import/ directory, hashing it on
     the way (memory stays one buffer); the first blob whose bytes do not hash to its name, or
     the first part that is missing or damaged, refuses the bundle. A differential bundle's
     mirror-bundle.json is checked first: every digest it expects must be in this cache, whole
     and valid (hashed), or the bundle is refused before anything is staged;
  2. check: index.json and every manifest it reaches must be present and complete (in the
     bundle or, for a differential one, in the cache), and every name must resolve;
  3. commit: move the staged files into place, then write all tag records at once.
Nothing under import/ is served, and tags are written last, so nothing of a bundle is ever
served by tag before all of it verified; a refused or interrupted import changes nothing the
mirror serves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mirror.airgap.bundle import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    CHECKED_AT,
    CONTAINERD_NAME,
    INDEX_FILE,
    REF_NAME,
    BundleError,
    parse_rfc3339,
)
from mirror.airgap.parts import PartError
from mirror.airgap.staging import Source, StagedBundle, Staging, stage
from mirror.oci.imageref import ImageRef, ImageRefError, parse_image_ref
from mirror.oci.models import (
    IMAGE_MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    Digest,
    manifest_media_type,
    parse_manifest,
)
from mirror.store.disk import DiskTier
from mirror.store.index import TagIndex, TagRecord

READ_CHUNK = 1024 * 1024
MAX_NAMED = 20  # missing digests named in the one-line error; the count says the rest


@dataclass(slots=True)
class ImportReport:
    tags: list[tuple[ImageRef, Digest]] = field(default_factory=list)
    untagged: list[Digest] = field(default_factory=list)  # index.json entries without a name
    blobs_new: int = 0
    bytes_new: int = 0
    blobs_present: int = 0
    blobs_resumed: int = 0  # staged by an interrupted run, taken as they were
    expected: int = 0  # digests a differential bundle left out, found valid in this cache
    expected_bytes: int = 0
    kept_newer: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- a differential bundle's expectations ----------------------------------------------------


def parse_expects(meta: bytes) -> list[tuple[Digest, int]]:
    try:
        doc = json.loads(meta)
        if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
            raise ValueError("not a mirror bundle description")
        out = []
        for item in doc["expects"]:
            out.append((Digest.parse(item["digest"]), int(item["size"])))
    except (ValueError, KeyError, TypeError) as e:  # DigestInvalid is a ValueError too
        raise BundleError(f"{BUNDLE_FILE} is unreadable ({e})") from None
    return out


def _valid_in_cache(tier: DiskTier, digest: Digest, size: int) -> bool:
    entry = tier.entry(digest)
    if entry is None or entry.size != size:
        return False
    hasher = digest.hasher()
    try:
        with open(tier.path(digest), "rb") as f:
            while chunk := f.read(READ_CHUNK):
                hasher.update(chunk)
    except OSError:
        return False
    return bool(hasher.hexdigest() == digest.hex)


def check_expects(tier: DiskTier, expects: list[tuple[Digest, int]], report: ImportReport) -> None:
    """Every digest the bundle left out must be here and whole: hashed, since the import is
    what the site will serve from now on (blocking; runs in the staging thread)."""
    missing = [d for d, size in expects if not _valid_in_cache(tier, d, size)]
    if missing:
        named = ", ".join(str(d) for d in missing[:MAX_NAMED])
        more = f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
        raise BundleError(
            f"this is a differential bundle and {len(missing)} of the {len(expects)} digests it "
            f"expects this cache to hold are missing or damaged here: {named}{more}; import the "
            f"bundle they came in first (or export a full bundle, without --have); nothing was "
            f"imported")
    report.expected = len(expects)
    report.expected_bytes = sum(size for _, size in expects)


# -- checking what index.json names ------------------------------------------------------------


@dataclass(slots=True)
class Manifests:
    """Media type of every manifest reachable from index.json, by digest."""

    types: dict[str, str] = field(default_factory=dict)


def _read_staged(staged: StagedBundle, tier: DiskTier, digest: Digest) -> bytes | None:
    blob = staged.blobs.get(str(digest))
    path = blob.temp if blob is not None and blob.temp is not None else tier.path(digest)
    if blob is None and tier.entry(digest) is None:
        return None
    try:
        if path.stat().st_size > MAX_MANIFEST_SIZE:
            raise BundleError(f"manifest {digest} is larger than {MAX_MANIFEST_SIZE} bytes")
        return path.read_bytes()
    except OSError:
        return None


def _walk(staged: StagedBundle, tier: DiskTier, desc: Descriptor, name: str,
          found: Manifests, notes: list[str]) -> None:
    body = _read_staged(staged, tier, desc.digest)
    if body is None:
        raise BundleError(f"{name}: manifest {desc.digest} is missing from the bundle")
    media_type = manifest_media_type(body, desc.media_type or None)
    found.types[str(desc.digest)] = media_type
    parsed = parse_manifest(body, media_type)
    if parsed.is_index:
        present = 0
        for child in parsed.children:
            if _read_staged(staged, tier, child.digest) is None:
                continue  # a bundle of chosen platforms: the others were never seeded
            _walk(staged, tier, child, name, found, notes)
            present += 1
        if present < len(parsed.children):
            notes.append(f"{name}: {present} of {len(parsed.children)} platforms present")
        if present == 0 and parsed.children:
            raise BundleError(f"{name}: none of the platforms of index {desc.digest} is in the "
                              f"bundle")
    elif media_type in IMAGE_MANIFEST_TYPES:
        for blob in parsed.blobs:
            if str(blob.digest) not in staged.blobs and tier.entry(blob.digest) is None:
                raise BundleError(f"{name}: blob {blob.digest} of manifest {desc.digest} is "
                                  f"missing from the bundle")


def _name_of(annotations: Mapping[str, Any], repo: str | None, aliases: Mapping[str, str],
             default_upstream: str | None, position: int) -> ImageRef | None:
    name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
    if not isinstance(name, str) or not name:
        return None
    bare_tag = not any(c in name for c in "/:@")
    try:
        if bare_tag:
            # OCI's own convention: ref.name is often only a tag (`skopeo copy ... oci:DIR:v1`).
            if repo is None:
                raise BundleError(f"{INDEX_FILE} entry {position} is named only {name!r}; give "
                                  f"--repo REGISTRY/REPOSITORY to say whose tag that is")
            return parse_image_ref(f"{repo}:{name}", aliases, default_upstream,
                                   allow_unknown_registry=True)
        return parse_image_ref(name, aliases, default_upstream, allow_unknown_registry=True)
    except ImageRefError as e:
        raise BundleError(f"{INDEX_FILE} entry {position}: {e}") from None


@dataclass(slots=True)
class Plan:
    tags: list[tuple[ImageRef, Descriptor, float]] = field(default_factory=list)
    untagged: list[Digest] = field(default_factory=list)
    manifests: Manifests = field(default_factory=Manifests)
    notes: list[str] = field(default_factory=list)


def check(staged: StagedBundle, tier: DiskTier, repo: str | None, aliases: Mapping[str, str],
          default_upstream: str | None, now: float) -> Plan:
    """Step 2: everything index.json names is present and complete."""
    try:
        doc = json.loads(staged.index)
        entries = doc["manifests"]
        if not isinstance(entries, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{INDEX_FILE} is not an OCI image index") from None
    plan = Plan()
    for position, raw in enumerate(entries):
        parsed = parse_manifest(json.dumps({"manifests": [raw]}).encode(),
                                "application/vnd.oci.image.index.v1+json").children
        if not parsed:
            raise BundleError(f"{INDEX_FILE} entry {position} is not a valid descriptor")
        desc = parsed[0]
        annotations = raw.get("annotations") or {}
        ref = _name_of(annotations, repo, aliases, default_upstream, position)
        label = str(ref) if ref is not None else str(desc.digest)
        _walk(staged, tier, desc, label, plan.manifests, plan.notes)
        if ref is None or ref.tag is None or ref.digest is not None:
            plan.untagged.append(desc.digest)
            continue
        checked = annotations.get(CHECKED_AT)
        checked_at = parse_rfc3339(checked) if isinstance(checked, str) else None
        # A bundle from another tool says nothing about age: the import is the confirmation.
        plan.tags.append((ref, desc, min(checked_at, now) if checked_at is not None else now))
    return plan


# -- committing --------------------------------------------------------------------------------


async def commit(staged: StagedBundle, plan: Plan, tier: DiskTier, tags: TagIndex,
                 report: ImportReport) -> None:
    """Step 3: files into place, then the tag records."""
    for key, blob in staged.blobs.items():
        media_type = plan.manifests.types.get(key)
        if blob.temp is None:
            report.blobs_present += 1
            continue
        await tier.adopt(blob.digest, blob.temp, media_type, is_manifest=media_type is not None)
        report.blobs_new += 1
        report.bytes_new += blob.size
    for ref, desc, checked_at in plan.tags:
        assert ref.tag is not None
        media_type = plan.manifests.types[str(desc.digest)]
        old = tags.get(ref.upstream, ref.repo, ref.tag)
        if old is not None and old.digest is not None and old.checked_at > checked_at:
            # This site confirmed the tag more recently than the bundle's source did.
            report.kept_newer.append(f"{ref} (cache has {old.digest})")
            continue
        mine = staged.blobs.get(str(desc.digest))
        entry = tier.entry(desc.digest)
        size = mine.size if mine is not None else entry.size if entry is not None else desc.size
        tags.put(ref.upstream, ref.repo, ref.tag,
                 TagRecord(str(desc.digest), media_type, size, checked_at))
        report.tags.append((ref, desc.digest))
    report.untagged = plan.untagged
    report.notes += plan.notes


async def import_layout(source: Source, tier: DiskTier, tags: TagIndex, aliases: Mapping[str, str],
                        default_upstream: str | None, repo: str | None = None,
                        progress: Callable[[int], None] | None = None) -> ImportReport:
    report = ImportReport()
    loop = asyncio.get_running_loop()

    def on_meta(meta: bytes) -> None:
        check_expects(tier, parse_expects(meta), report)

    with Staging(tier.root) as staging:
        try:
            staged = await loop.run_in_executor(None, stage, source, tier, staging, on_meta,
                                                progress)
            await _check_and_commit(staged, tier, tags, aliases, default_upstream, repo, report)
        except PartError:
            raise  # the staged blobs are verified: kept for the run after the part is copied
        except BundleError:
            staging.clear()  # refused for its content: leave nothing behind
            raise
        staging.clear()  # committed; and what other, abandoned imports left
    return report


async def _check_and_commit(staged: StagedBundle, tier: DiskTier, tags: TagIndex,
                            aliases: Mapping[str, str], default_upstream: str | None,
                            repo: str | None, report: ImportReport) -> None:
    plan = check(staged, tier, repo, aliases, default_upstream, time.time())
    new_bytes = sum(b.size for b in staged.blobs.values() if b.temp is not None)
    if new_bytes > tier.high:
        raise BundleError(f"the bundle adds {new_bytes} bytes, more than the cache may hold "
                          f"({tier.high} bytes at cache.max_size {tier.max_size}); raise "
                          f"cache.max_size")
    report.notes += [f"ignored {n}" for n in staged.ignored]
    report.blobs_resumed = staged.resumed
    if tier.used + new_bytes > tier.high:
        # On an offline site evicted content never comes back: say so before it happens.
        report.notes.append(
            f"the cache will pass its budget ({tier.used + new_bytes} of {tier.max_size} "
            f"bytes, cache.max_size): least recently used content is evicted to make room; "
            f"an offline site should raise cache.max_size")
    await commit(staged, plan, tier, tags, report)
