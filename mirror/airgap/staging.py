"""Step 1 of `mirror import`: read an OCI image layout (a tar file, the parts of a split bundle,
or a directory) and stage every blob, verified, under `cache.dir/import/`.

A blob is hashed as it streams in and renamed to `import/<alg>/<hex>` only once its bytes match
its name and are fsynced; nothing under import/ is served. So an import that stopped half way
(Ctrl-C, a full disk, a missing part) leaves verified blobs that the next run takes as they are:
their bytes in the bundle are skipped, not hashed or written again. The staging area is emptied
when an import succeeds and when a bundle is refused for its content (a corrupt blob, an image
that does not resolve, digests this site lacks); a missing or damaged part keeps it, since the
fix is to copy that one part again."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from mirror.airgap.bundle import BUNDLE_FILE, INDEX_FILE, LAYOUT_FILE, BundleError
from mirror.airgap.parts import PartsReader, find_parts
from mirror.oci.errors import DigestInvalid
from mirror.oci.models import Digest
from mirror.store.disk import DiskTier

READ_CHUNK = 1024 * 1024
MAX_INDEX_SIZE = 16 * 1024 * 1024
STAGING_DIR = "import"

Entry = tuple[str, int, IO[bytes] | None]  # name, size, reader (None: not a regular file)


@dataclass(slots=True)
class Staged:
    digest: Digest
    size: int
    temp: Path | None  # None: the cache already held this blob
    resumed: bool = False  # staged and verified by an earlier, interrupted import


@dataclass(slots=True)
class StagedBundle:
    index: bytes
    meta: bytes | None = None  # mirror-bundle.json of a differential bundle
    blobs: dict[str, Staged] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def resumed(self) -> int:
        return sum(1 for b in self.blobs.values() if b.resumed)


class Staging:
    """`cache.dir/import/`, held by one import at a time (a lock file)."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / STAGING_DIR
        self._lock: IO[bytes] | None = None

    def __enter__(self) -> Staging:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / ".lock", "ab")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise BundleError(f"another `mirror import` into {self.dir.parent} is running") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()

    def path(self, digest: Digest) -> Path:
        return self.dir / digest.algorithm / digest.hex

    def clear(self) -> None:
        for p in self.dir.iterdir():
            if p.name == ".lock":
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


# -- reading a layout -------------------------------------------------------------------------


def _tar_entries(source: Path | IO[bytes], label: str) -> Iterator[Entry]:
    try:
        # "r|*": a pure stream, never seeks, transparently gunzips a .tar.gz.
        with (tarfile.open(source, mode="r|*") if isinstance(source, Path) else
              tarfile.open(fileobj=source, mode="r|")) as tf:
            for member in tf:
                if member.isdir():
                    continue
                reader = tf.extractfile(member) if member.isfile() else None
                yield member.name, member.size, reader
    except tarfile.TarError as e:
        raise BundleError(f"{label}: not a readable tar file ({e})") from None


def _dir_entries(root: Path) -> Iterator[Entry]:
    for name in (LAYOUT_FILE, INDEX_FILE, BUNDLE_FILE):
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


@dataclass(slots=True)
class Source:
    entries: Iterator[Entry]
    parts: PartsReader | None
    size: int  # bytes to read, for progress
    label: str


def open_source(sources: list[Path]) -> Source:
    """A bundle file, an OCI layout directory, or the parts of a split bundle (the first part,
    all of them, or BUNDLE when BUNDLE.000 exists)."""
    parts = find_parts(sources)
    if parts is not None:
        reader = PartsReader(parts)
        label = parts.paths[0].name
        # Stream mode ("r|") calls only read(), which is all PartsReader has.
        stream = cast(IO[bytes], reader)
        return Source(_tar_entries(stream, label), reader, parts.total, label)
    if len(sources) != 1:
        raise BundleError("give one bundle file or directory, or the parts of one split bundle")
    source = sources[0]
    if source.is_dir():
        return Source(_dir_entries(source), None, 0, str(source))
    if source.is_file():
        return Source(_tar_entries(source, str(source)), None, source.stat().st_size, str(source))
    raise BundleError(f"{source}: no such bundle file, bundle part or OCI layout directory")


def _small(reader: IO[bytes], size: int, limit: int, what: str) -> bytes:
    if size > limit:
        raise BundleError(f"{what} is {size} bytes, more than the {limit} allowed")
    return reader.read(limit + 1)[:limit]


def stage(source: Source, tier: DiskTier, staging: Staging,
          on_meta: Callable[[bytes], None] | None = None,
          progress: Callable[[int], None] | None = None) -> StagedBundle:
    """Step 1 (blocking; run it in a worker thread). `on_meta` sees mirror-bundle.json as soon
    as it is read (before any blob), so a differential bundle this site cannot take is refused
    before gigabytes are staged."""
    staged = StagedBundle(b"")
    layout = False
    try:
        for raw_name, size, reader in source.entries:
            name = raw_name.removeprefix("./")
            if name == LAYOUT_FILE and reader is not None:
                _check_layout(_small(reader, size, 4096, LAYOUT_FILE))
                layout = True
            elif name == INDEX_FILE and reader is not None:
                staged.index = _small(reader, size, MAX_INDEX_SIZE, INDEX_FILE)
            elif name == BUNDLE_FILE and reader is not None:
                staged.meta = _small(reader, size, MAX_INDEX_SIZE, BUNDLE_FILE)
                if on_meta is not None:
                    on_meta(staged.meta)
            elif name.startswith("blobs/"):
                blob = _stage_blob(name, size, reader, tier, staging)
                staged.blobs[str(blob.digest)] = blob
                if progress is not None:
                    progress(size)
            else:
                staged.ignored.append(name)
        if source.parts is not None:
            source.parts.finish()  # the last part's checksum, past the end-of-archive blocks
        if not layout:
            raise BundleError(f"{source.label}: not an OCI image layout (no {LAYOUT_FILE} file)")
        if not staged.index:
            raise BundleError(f"{source.label}: not an OCI image layout (no {INDEX_FILE})")
    except (BundleError, tarfile.TarError) as e:
        damage = source.parts.damage() if source.parts is not None else None
        if damage is not None:
            raise damage from None  # name the part, whatever else its bytes broke
        if isinstance(e, tarfile.TarError):  # e.g. a bundle cut short in the middle of a blob
            raise BundleError(f"{source.label}: damaged tar file ({e}); nothing was "
                              f"imported") from None
        raise
    finally:
        if source.parts is not None:
            source.parts.close()
    return staged


def _check_layout(data: bytes) -> None:
    try:
        version = json.loads(data).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        version = None
    if not isinstance(version, str) or not version.startswith("1."):
        raise BundleError(f"{LAYOUT_FILE}: unsupported imageLayoutVersion {version!r}")


def _stage_blob(name: str, size: int, reader: IO[bytes] | None, tier: DiskTier,
                staging: Staging) -> Staged:
    parts = name.split("/")
    try:
        if len(parts) != 3:
            raise DigestInvalid(name)
        digest = Digest.parse(f"{parts[1]}:{parts[2]}")
    except DigestInvalid:
        raise BundleError(f"{name}: not a blob path (blobs/<algorithm>/<hex>)") from None
    if reader is None:
        raise BundleError(f"{name}: not a regular file")
    cached = tier.entry(digest) is not None
    final = staging.path(digest)
    if not cached:
        try:
            if final.stat().st_size == size:
                return Staged(digest, size, final, resumed=True)  # tarfile skips its bytes
        except OSError:
            pass
    hasher = digest.hasher()
    temp: Path | None = None
    fd: int | None = None
    if not cached:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = staging.dir / f".{digest.hex[:16]}.{os.getpid()}.{time.monotonic_ns()}.partial"
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
    if temp is None:
        return Staged(digest, written, None)
    os.replace(temp, final)  # verified: from now on a rerun takes it as it is
    return Staged(digest, written, final)
