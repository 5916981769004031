"""Inventories: what a cache holds, as a small JSON file.

An air-gapped site writes one (`mirror inventory`) and carries it back to the connected side,
where `mirror export --have FILE` leaves out everything it lists: the weekly bundle then holds
only what changed. The file names digests only (no sizes, no paths, no users), so carrying it
out of a closed site tells nobody more than which public images it runs.

    {"format": "mirror-inventory", "version": 1, "mirror_version": "0.1.0",
     "created": "2026-01-05T08:00:00.000000Z",
     "manifests": ["sha256:..."], "blobs": ["sha256:..."],
     "tags": {"docker.io/library/busybox:latest": "sha256:..."}}"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror import __version__
from mirror.airgap.bundle import rfc3339
from mirror.oci.errors import DigestInvalid
from mirror.oci.models import Digest
from mirror.store.db import Database

FORMAT = "mirror-inventory"
VERSION = 1
MAX_INVENTORY_SIZE = 256 * 1024 * 1024  # a million digests is ~80 MB; more is not an inventory


class InventoryError(Exception):
    """An inventory that cannot be read or written; the message is one line for the user."""


@dataclass(slots=True)
class Inventory:
    manifests: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    tags: dict[str, str] = field(default_factory=dict)  # full reference -> digest
    mirror_version: str = __version__
    created: float = field(default_factory=time.time)

    @property
    def digests(self) -> set[str]:
        return self.manifests | self.blobs

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "mirror_version": self.mirror_version,
                "created": rfc3339(self.created), "manifests": sorted(self.manifests),
                "blobs": sorted(self.blobs), "tags": dict(sorted(self.tags.items()))}

    def dumps(self) -> bytes:
        # One digest a line: diffable, and still small (about 75 bytes a digest).
        return json.dumps(self.to_json(), indent=1).encode() + b"\n"


def build(contents: Iterable[tuple[str, bool]],
          tags: Iterable[tuple[str, str, str, str | None]]) -> Inventory:
    """From (digest, is_manifest) pairs and (upstream, repo, tag, digest) tag records."""
    inv = Inventory()
    for digest, is_manifest in contents:
        (inv.manifests if is_manifest else inv.blobs).add(digest)
    held = inv.manifests | inv.blobs
    for upstream, repo, tag, tagged in tags:
        if tagged is not None and tagged in held:
            inv.tags[f"{upstream}/{repo}:{tag}"] = tagged
    return inv


def from_cache_dir(cache_dir: Path) -> Inventory:
    """Read a cache directory without opening it for serving: nothing is swept or written, so
    it is safe beside a running mirror. Only files really on disk are listed (the index may
    still name content evicted a moment ago)."""
    db_path = cache_dir / "index.db"
    if not db_path.is_file():
        raise InventoryError(f"no cache at {cache_dir} (cache.dir): no index.db")
    db = Database(db_path)
    try:
        rows = db.query("SELECT digest, size, is_manifest FROM content")
        tag_rows = db.query("SELECT upstream, repo, tag, digest FROM tags WHERE digest IS NOT NULL")
    finally:
        db.close_sync()
    contents: list[tuple[str, bool]] = []
    for key, size, is_manifest in rows:
        try:
            d = Digest.parse(key)
            on_disk = (cache_dir / "blobs" / d.algorithm / d.hex[:2] / d.hex).stat().st_size
        except (DigestInvalid, OSError):
            continue
        if on_disk == size:
            contents.append((key, bool(is_manifest)))
    return build(contents, ((u, r, t, d) for u, r, t, d in tag_rows))


def _digest_list(doc: dict[str, Any], key: str, where: str) -> set[str]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise InventoryError(f"{where}: {key!r} is not a list of digests")
    out: set[str] = set()
    for item in value:
        try:
            out.add(str(Digest.parse(item if isinstance(item, str) else "")))
        except DigestInvalid:
            raise InventoryError(f"{where}: {key!r} holds {str(item)[:80]!r}, which is not a "
                                 f"digest") from None
    return out


def parse(data: bytes, where: str) -> Inventory:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InventoryError(f"{where}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InventoryError(f"{where}: not a mirror inventory (no \"format\": \"{FORMAT}\"; "
                             f"write one with `mirror inventory`)")
    if doc.get("version") != VERSION:
        raise InventoryError(f"{where}: inventory version {doc.get('version')!r}; this mirror "
                             f"reads version {VERSION}")
    tags = doc.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in tags.items()):
        raise InventoryError(f"{where}: 'tags' is not a map of references to digests")
    inv = Inventory(_digest_list(doc, "manifests", where), _digest_list(doc, "blobs", where),
                    dict(tags), str(doc.get("mirror_version", "?")))
    return inv


def load(path: Path) -> Inventory:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INVENTORY_SIZE + 1)
    except OSError as e:
        raise InventoryError(f"cannot read inventory {path}: {e.strerror or e}") from None
    if len(data) > MAX_INVENTORY_SIZE:
        raise InventoryError(f"{path}: larger than {MAX_INVENTORY_SIZE} bytes; not an inventory")
    return parse(data, str(path))
