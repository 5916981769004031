"""`mirror import`: take an OCI image layout (our bundle tar, any `oci-archive`, or a directory
written by `skopeo copy ... oci:DIR`) into the cache, so an offline mirror serves its tags.

All or nothing, in three steps:
  1. stage: stream every blob into the cache's tmp/ directory, hashing it on the way (memory
     stays one buffer); the first blob whose bytes do not hash to its name refuses the bundle;
  2. check: index.json and every manifest it reaches must be present and complete, and every
     name must resolve to a repository;
  3. commit: move the staged files into place, then write all tag records at once.
A refused bundle leaves nothing behind: its staged files are deleted, and a crash before step 3
leaves only tmp/ files, which the next start sweeps. Tags are written last, so nothing of a
bundle is ever served by tag before all of it verified."""

from __future__ import annotations

import asyncio
import json
import os
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mirror.airgap.bundle import (
    CHECKED_AT,
    CONTAINERD_NAME,
    INDEX_FILE,
    LAYOUT_FILE,
    REF_NAME,
    BundleError,
    parse_rfc3339,
)
from mirror.oci.errors import DigestInvalid
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
MAX_INDEX_SIZE = 16 * 1024 * 1024


@dataclass(slots=True)
class Staged:
    digest: Digest
    size: int
    temp: Path | None  # None: the cache already held this blob


@dataclass(slots=True)
class StagedBundle:
    index: bytes
    blobs: dict[str, Staged] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def discard(self) -> None:
        for s in self.blobs.values():
            if s.temp is not None:
                s.temp.unlink(missing_ok=True)


@dataclass(slots=True)
class ImportReport:
    tags: list[tuple[ImageRef, Digest]] = field(default_factory=list)
    untagged: list[Digest] = field(default_factory=list)  # index.json entries without a name
    blobs_new: int = 0
    bytes_new: int = 0
    blobs_present: int = 0
    kept_newer: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- reading a layout -------------------------------------------------------------------------

Entry = tuple[str, int, IO[bytes] | None]  # name, size, reader (None: not a regular file)


def _tar_entries(path: Path) -> Iterator[Entry]:
    try:
        # "r|*": a pure stream, never seeks, transparently gunzips a .tar.gz.
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if member.isdir():
                    continue
                reader = tf.extractfile(member) if member.isfile() else None
                yield member.name, member.size, reader
    except tarfile.TarError as e:
        raise BundleError(f"{path}: not a readable tar file ({e})") from None


def _dir_entries(root: Path) -> Iterator[Entry]:
    for name in (LAYOUT_FILE, INDEX_FILE):
        p = root / name
        if p.is_file():
            with open(p, "rb") as f:
                yield name, os.fstat(f.fileno()).st_size, f
    blobs = root / "blobs"
    if not blobs.is_dir():
        return
    for alg_dir in sorted(blobs.iterdir()):
        for p in sorted(alg_dir.iterdir()) if alg_dir.is_dir() else []:
            name = f"blobs/{alg_dir.name}/{p.name}"
            if p.is_symlink() or not p.is_file():
                yield name, 0, None
                continue
            with open(p, "rb") as f:
                yield name, os.fstat(f.fileno()).st_size, f


def layout_entries(source: Path) -> Iterator[Entry]:
    if source.is_dir():
        return _dir_entries(source)
    if source.is_file():
        return _tar_entries(source)
    raise BundleError(f"{source}: no such bundle file or OCI layout directory")


def _small(reader: IO[bytes], size: int, limit: int, what: str) -> bytes:
    if size > limit:
        raise BundleError(f"{what} is {size} bytes, more than the {limit} allowed")
    return reader.read(limit + 1)[:limit]


def stage(source: Path, tier: DiskTier) -> StagedBundle:
    """Step 1 (blocking; run it in a worker thread)."""
    staged = StagedBundle(b"")
    layout = False
    try:
        for raw_name, size, reader in layout_entries(source):
            name = raw_name.removeprefix("./")
            if name == LAYOUT_FILE and reader is not None:
                _check_layout(_small(reader, size, 4096, LAYOUT_FILE))
                layout = True
            elif name == INDEX_FILE and reader is not None:
                staged.index = _small(reader, size, MAX_INDEX_SIZE, INDEX_FILE)
            elif name.startswith("blobs/"):
                blob = _stage_blob(name, size, reader, tier)
                staged.blobs[str(blob.digest)] = blob
            else:
                staged.ignored.append(name)
        if not layout:
            raise BundleError(f"{source}: not an OCI image layout (no {LAYOUT_FILE} file)")
        if not staged.index:
            raise BundleError(f"{source}: not an OCI image layout (no {INDEX_FILE})")
    except tarfile.TarError as e:  # e.g. a bundle cut short in the middle of a blob
        staged.discard()
        raise BundleError(f"{source}: damaged tar file ({e}); nothing was imported") from None
    except BaseException:
        staged.discard()
        raise
    return staged


def _check_layout(data: bytes) -> None:
    try:
        version = json.loads(data).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        version = None
    if not isinstance(version, str) or not version.startswith("1."):
        raise BundleError(f"{LAYOUT_FILE}: unsupported imageLayoutVersion {version!r}")


def _stage_blob(name: str, size: int, reader: IO[bytes] | None, tier: DiskTier) -> Staged:
    parts = name.split("/")
    try:
        if len(parts) != 3:
            raise DigestInvalid(name)
        digest = Digest.parse(f"{parts[1]}:{parts[2]}")
    except DigestInvalid:
        raise BundleError(f"{name}: not a blob path (blobs/<algorithm>/<hex>)") from None
    if reader is None:
        raise BundleError(f"{name}: not a regular file")
    hasher = digest.hasher()
    cached = tier.entry(digest) is not None
    temp: Path | None = None
    fd: int | None = None
    if not cached:
        temp = tier.tmp_dir / f"import-{digest.hex[:16]}.{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    written = 0
    try:
        while chunk := reader.read(READ_CHUNK):
            hasher.update(chunk)
            written += len(chunk)
            if fd is not None:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        if fd is not None:
            os.fsync(fd)
    except BaseException:
        if temp is not None:
            temp.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)
    actual = hasher.hexdigest()
    if actual != digest.hex or written != size:
        if temp is not None:
            temp.unlink(missing_ok=True)
        raise BundleError(
            f"blob {digest} ({name}) is corrupt: its {written} bytes hash to "
            f"{digest.algorithm}:{actual}; the bundle was refused and nothing was imported")
    return Staged(digest, written, temp)


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


async def import_layout(source: Path, tier: DiskTier, tags: TagIndex, aliases: Mapping[str, str],
                        default_upstream: str | None, repo: str | None = None) -> ImportReport:
    loop = asyncio.get_running_loop()
    staged = await loop.run_in_executor(None, stage, source, tier)
    try:
        plan = check(staged, tier, repo, aliases, default_upstream, time.time())
        new_bytes = sum(b.size for b in staged.blobs.values() if b.temp is not None)
        if new_bytes > tier.high:
            raise BundleError(f"the bundle adds {new_bytes} bytes, more than the cache may hold "
                              f"({tier.high} bytes at cache.max_size {tier.max_size}); raise "
                              f"cache.max_size")
        report = ImportReport()
        report.notes += [f"ignored {n}" for n in staged.ignored]
        if tier.used + new_bytes > tier.high:
            # On an offline site evicted content never comes back: say so before it happens.
            report.notes.append(
                f"the cache will pass its budget ({tier.used + new_bytes} of {tier.max_size} "
                f"bytes, cache.max_size): least recently used content is evicted to make room; "
                f"an offline site should raise cache.max_size")
        await commit(staged, plan, tier, tags, report)
    finally:
        staged.discard()  # whatever was not moved into place
    return report
