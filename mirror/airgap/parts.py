"""Where a bundle's stream goes: one file, or parts `BUNDLE.000`, `BUNDLE.001`, ... of at most
`--split` bytes each (removable media, data diodes with a file size limit). Both resume.

A part is a 512-byte header and a slice of the bundle's tar stream:

    MIRROR-BUNDLE-PART 1
    {"bundle": "<layout identity>", "part": 2, "parts": 7, "offset": ..., "size": ...,
     "total": ..., "sha256": "<hex of this part's slice>"}

so the first part says how many follow, each part says whose it is, where it goes and what its
bytes hash to: `mirror import BUNDLE.000` finds the others beside it and names a part that is
missing, damaged, out of sequence or from another week's bundle.

Writing: each part (or the single file) is written under a hidden `.NAME.partial` name and
renamed when complete, so a file under the real name is always whole. A small state file
(`.BUNDLE.export-state`) records the offset in the stream up to which everything was fsynced; a
run of the same export (same layout identity) continues from there."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mirror.airgap.bundle import BundleError
from mirror.airgap.tarlayout import Layout

HEADER_SIZE = 512
MAGIC = b"MIRROR-BUNDLE-PART 1\n"
MIN_SPLIT = 64 * 1024
CHECKPOINT_BYTES = 16 * 1024 * 1024  # fsync and record progress this often
READ_CHUNK = 1024 * 1024
_PART_NAME = re.compile(r"^(?P<base>.+)\.(?P<num>[0-9]{3,})$")


class PartError(BundleError):
    """A part of a split bundle is missing or damaged: an import keeps what it staged, since
    the fix is to copy that one part again."""


def _header(doc: dict[str, Any]) -> bytes:
    body = MAGIC + json.dumps(doc, sort_keys=True).encode()
    if len(body) > HEADER_SIZE - 1:
        raise BundleError("part header too long")  # cannot happen: every field is bounded
    return body + b" " * (HEADER_SIZE - 1 - len(body)) + b"\n"


class BundleOutput:
    """The sink `write_layout` writes to (tarlayout.Sink)."""

    def __init__(self, path: Path, layout: Layout, split: int | None) -> None:
        if split is not None and split < MIN_SPLIT:
            raise BundleError(f"--split {split} is too small: a part needs at least "
                              f"{MIN_SPLIT} bytes")
        self.path = path
        self.split = split
        self.bundle = layout.identity()
        self.total = layout.total
        self.payload = split - HEADER_SIZE if split is not None else max(1, self.total)
        self.count = max(1, -(-self.total // self.payload))
        self.width = max(3, len(str(self.count - 1)))
        self.state_path = path.with_name(f".{path.name}.export-state")
        self.resumed_from = 0
        self._f: IO[bytes] | None = None
        self._part = 0
        self._part_pos = 0
        self._hasher = hashlib.sha256()
        self._pos = 0
        self._synced = 0
        self.written_parts: list[Path] = []

    # -- names --------------------------------------------------------------------------------

    def part_path(self, i: int) -> Path:
        if self.split is None:
            return self.path
        return self.path.with_name(f"{self.path.name}.{i:0{self.width}d}")

    def _partial(self, i: int) -> Path:
        final = self.part_path(i)
        return final.with_name(f".{final.name}.partial")

    def _part_size(self, i: int) -> int:
        return min(self.payload, self.total - i * self.payload)

    # -- starting and resuming -----------------------------------------------------------------

    def start(self) -> int:
        """Open the output; returns the stream offset to write from (0, or where an interrupted
        run of this same export stopped)."""
        offset = self._resume_offset()
        if offset == 0:
            self._clean()
        self.resumed_from = offset
        self._pos = self._synced = offset
        if self.split is not None and self._all_parts_in_place():
            return offset  # every part was renamed into place; only the state was left
        self._open_part(min(offset // self.payload, self.count - 1), offset)
        return offset

    def _resume_offset(self) -> int:
        try:
            state = json.loads(self.state_path.read_text())
            offset = int(state["offset"])
            same = state["bundle"] == self.bundle and state["split"] == (self.split or 0)
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        if not same or not 0 < offset <= self.total:
            return 0
        if self.split is not None and self._all_parts_in_place():
            # Stopped after the last rename, before the state was removed: all written (a
            # fresh start removed every older part, so these are this export's). One file is
            # not judged so: BUNDLE may be last week's, kept until this one replaces it.
            return self.total
        k = min(offset // self.payload, self.count - 1)
        if any(not self.part_path(i).is_file() for i in range(k)):
            return 0
        in_part = offset - k * self.payload
        header = HEADER_SIZE if self.split is not None else 0
        try:
            have = self._partial(k).stat().st_size
        except OSError:
            have = -1
        return offset if have >= header + in_part else 0

    def _all_parts_in_place(self) -> bool:
        return all(self.part_path(i).is_file() for i in range(self.count))

    def _clean(self) -> None:
        """A fresh start: remove what an earlier, different export left under these names."""
        for p in self.path.parent.glob(f".{self.path.name}*.partial"):
            p.unlink(missing_ok=True)
        if self.split is not None:
            for p in self.path.parent.glob(f"{self.path.name}.*"):
                m = _PART_NAME.match(p.name)
                if m and m.group("base") == self.path.name and p.is_file():
                    p.unlink()

    def _open_part(self, i: int, offset: int) -> None:
        self._part = i
        self._part_pos = offset - i * self.payload
        self._hasher = hashlib.sha256()
        header = HEADER_SIZE if self.split is not None else 0
        partial = self._partial(i)
        if self._part_pos == 0:
            self._f = open(partial, "wb")  # noqa: SIM115 - closed in _finish_part
            if self.split is not None:
                self._f.write(self._header_for(i, "0" * 64))
            return
        self._f = open(partial, "r+b")  # noqa: SIM115
        self._f.truncate(header + self._part_pos)
        self._f.seek(header)
        left = self._part_pos if self.split is not None else 0  # one file has no checksum
        while left:  # the part's checksum covers what the interrupted run wrote: read it back
            chunk = self._f.read(min(READ_CHUNK, left))
            if not chunk:
                raise BundleError(f"{partial} is shorter than its recorded progress")
            self._hasher.update(chunk)
            left -= len(chunk)
        self._f.seek(header + self._part_pos)

    def _header_for(self, i: int, sha: str) -> bytes:
        return _header({"bundle": self.bundle, "part": i, "parts": self.count,
                        "offset": i * self.payload, "size": self._part_size(i),
                        "total": self.total, "sha256": sha})

    # -- writing --------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            assert self._f is not None, "write past the end of the stream"
            chunk = view[: self.payload - self._part_pos]
            self._f.write(chunk)
            self._hasher.update(chunk)
            self._part_pos += len(chunk)
            self._pos += len(chunk)
            view = view[len(chunk):]
            if self.split is not None and self._part_pos == self.payload:
                self._finish_part()

    def checkpoint(self, offset: int) -> None:
        if self._f is not None and offset - self._synced >= CHECKPOINT_BYTES:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._record(offset)

    def _record(self, offset: int) -> None:
        temp = self.state_path.with_name(self.state_path.name + ".tmp")
        temp.write_text(json.dumps({"bundle": self.bundle, "split": self.split or 0,
                                    "offset": offset}))
        os.replace(temp, self.state_path)
        self._synced = offset

    def _finish_part(self) -> None:
        f = self._f
        assert f is not None
        if self.split is not None:
            f.seek(0)
            f.write(self._header_for(self._part, self._hasher.hexdigest()))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._f = None
        os.replace(self._partial(self._part), self.part_path(self._part))
        self.written_parts.append(self.part_path(self._part))
        if self._pos < self.total:
            self._record(self._pos)
            self._open_part(self._part + 1, self._pos)

    def finish(self) -> None:
        if self._pos != self.total:
            raise BundleError(f"the bundle stream ended at byte {self._pos} of {self.total}")
        if self._f is not None:
            self._finish_part()
        self.state_path.unlink(missing_ok=True)

    def close(self) -> None:
        """After a failure: keep the partial file and the state, for the next run."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def all_parts(self) -> list[Path]:
        return [self.part_path(i) for i in range(self.count)]


# -- reading parts ------------------------------------------------------------------------------


@dataclass(slots=True)
class PartSet:
    paths: list[Path]
    headers: list[dict[str, Any]]

    @property
    def total(self) -> int:
        return int(self.headers[0]["total"])


def _read_header(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
        if len(raw) != HEADER_SIZE or not raw.startswith(MAGIC):
            return None
        doc = json.loads(raw[len(MAGIC):])
    except (OSError, ValueError):
        return None
    keys = {"bundle": str, "part": int, "parts": int, "offset": int, "size": int, "total": int,
            "sha256": str}
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), t) for k, t in keys.items()):
        return None
    return doc


def is_part(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def find_parts(sources: list[Path]) -> PartSet | None:
    """The whole set of parts the sources belong to, every one present and in sequence; None
    when the one source is a plain bundle file or directory."""
    if len(sources) == 1 and not sources[0].exists():
        first = sources[0].with_name(sources[0].name + ".000")
        if not first.is_file():
            return None
        sources = [first]
    if len(sources) == 1 and not is_part(sources[0]):
        return None
    for s in sources:
        if not is_part(s):
            raise PartError(f"{s}: not a part of a split bundle (written by `mirror export "
                              f"--split`)" if s.exists() else f"{s}: no such file")
    first = sources[0]
    m = _PART_NAME.match(first.name)
    head = _read_header(first)
    if m is None or head is None:
        raise PartError(f"part {first} is damaged (its header cannot be read)" if m else
                          f"{first}: a bundle part must be named BUNDLE.NNN")
    base, width, count = m.group("base"), len(m.group("num")), head["parts"]
    given = {s.name: s for s in sources}
    names = [f"{base}.{i:0{width}d}" for i in range(count)]
    stray = [n for n in given if n not in names]
    if stray:
        raise PartError(f"{', '.join(stray)}: not among the {count} parts of {base}")
    paths = [given.get(n, first.with_name(n)) for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise PartError(f"part{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                          f"missing ({count} parts in all); copy "
                          f"{'them' if len(missing) > 1 else 'it'} beside {first.name} and run "
                          f"the import again; nothing was imported")
    headers: list[dict[str, Any]] = []
    for i, p in enumerate(paths):
        h = _read_header(p)
        if h is None:
            raise PartError(f"part {p.name} is damaged (its header cannot be read); copy it "
                              f"again")
        if h["bundle"] != head["bundle"] or h["parts"] != count:
            raise PartError(f"part {p.name} belongs to another bundle (another export); copy "
                              f"the part of this export again")
        if h["part"] != i:
            raise PartError(f"part {p.name} is out of sequence: it holds part {h['part']}")
        size = p.stat().st_size
        if size != HEADER_SIZE + h["size"]:
            raise PartError(f"part {p.name} is damaged: {size} bytes, its header says "
                              f"{HEADER_SIZE + h['size']}; copy it again")
        headers.append(h)
    return PartSet(paths, headers)


class PartsReader:
    """The parts' slices as one stream (what tarfile reads), each part's checksum checked as
    its last byte goes by: a damaged part is named, whatever else its bytes broke."""

    def __init__(self, parts: PartSet) -> None:
        self.parts = parts
        self.index = -1
        self._f: IO[bytes] | None = None
        self._left = 0
        self._hasher = hashlib.sha256()
        self.bytes_read = 0

    def _next(self) -> bool:
        self.close()
        self.index += 1
        if self.index >= len(self.parts.paths):
            return False
        self._f = open(self.parts.paths[self.index], "rb")  # noqa: SIM115 - closed by _next
        self._f.seek(HEADER_SIZE)
        self._left = int(self.parts.headers[self.index]["size"])
        self._hasher = hashlib.sha256()
        return True

    def read(self, n: int = -1) -> bytes:
        while self._f is None or self._left == 0:
            if self._f is not None:
                self._verify()
            if not self._next():
                return b""
        assert self._f is not None
        want = self._left if n < 0 else min(n, self._left)
        chunk = self._f.read(min(want, READ_CHUNK))
        if not chunk:
            raise PartError(f"part {self.parts.paths[self.index].name} is damaged: it ends "
                              f"early; copy it again")
        self._hasher.update(chunk)
        self._left -= len(chunk)
        self.bytes_read += len(chunk)
        if self._left == 0:
            self._verify()
        return chunk

    def _verify(self) -> None:
        h = self.parts.headers[self.index]
        if self._hasher.hexdigest() != h["sha256"]:
            raise PartError(f"part {self.parts.paths[self.index].name} is damaged: its bytes "
                              f"do not match its checksum; copy it again; nothing was imported")
        self.close()

    def finish(self) -> None:
        """Read and check whatever the tar reader left (the end-of-archive blocks)."""
        while self.read(READ_CHUNK):
            pass

    def damage(self) -> PartError | None:
        """After a reading error: the current part's damage, if that is what caused it."""
        if self._f is None:
            return None
        try:
            while self._left:
                chunk = self._f.read(min(self._left, READ_CHUNK))
                if not chunk:
                    break
                self._hasher.update(chunk)
                self._left -= len(chunk)
            self._verify()
        except PartError as e:
            return e
        return None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
