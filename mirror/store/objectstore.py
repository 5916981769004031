"""Cold tier: verified content in an object store (S3, GCS, Azure or a local directory) that
every mirror node shares. obstore talks to all of them through one API.

Layout under the URL's prefix (s3://bucket/<prefix>/...):
    blobs/<alg>/<hex>                      content, blobs and manifests alike, named by digest
    manifests/<alg>/<hex>.json             {"media_type", "size"}: a manifest's media type (a
                                           sidecar, because not every store keeps attributes)
    tags/<upstream>/<repo>/<tag>.json      {"digest", "media_type", "size", "checked_at"}
    used/<alg>/<hex>                       empty; its mtime says when a node last used the blob
                                           (only written when cache.object_store.max_age is set)
Only content whose digest was checked is ever written under blobs/: callers hand over verified
files, and every reader verifies again before serving (another node may have written it)."""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.store import LocalStore, MemoryStore, ObjectStore, from_url

from mirror.config import ObjectStoreConfig
from mirror.oci.errors import DigestInvalid
from mirror.oci.models import Digest
from mirror.store.base import READ_CHUNK

if TYPE_CHECKING:
    from obstore import ObjectMeta

log = logging.getLogger("mirror.store.objectstore")
PART_SIZE = 8 * 1024 * 1024  # multipart part size: 8 MiB x PART_CONCURRENCY in memory per upload
PART_CONCURRENCY = 4
# obstore's default 30 s timeout covers the whole request, body included: far too short for a
# multi-GiB layer. A stalled connection is caught by the read timeout instead.
CLIENT_OPTIONS: dict[str, Any] = {"timeout": "2h", "connect_timeout": "10s",
                                  "read_timeout": "60s"}


def build_store(config: ObjectStoreConfig) -> ObjectStore:
    """An obstore store for cache.object_store. Credentials given in the config win; otherwise
    obstore reads the provider's standard environment variables (AWS_*, GOOGLE_*, AZURE_*)."""
    scheme = urlsplit(config.url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme == "file":
        return LocalStore(prefix=Path(urlsplit(config.url).path), mkdir=True)
    options = {**CLIENT_OPTIONS, "allow_http": config.allow_http}
    kwargs: dict[str, Any] = {}
    if scheme == "s3":
        if config.endpoint:
            kwargs["endpoint"] = config.endpoint
            # S3-compatible servers (MinIO, SeaweedFS, Ceph) address buckets by path.
            kwargs["virtual_hosted_style_request"] = False
        if config.region:
            kwargs["region"] = config.region
        if config.access_key_id:
            kwargs["access_key_id"] = config.access_key_id
        if config.secret_access_key is not None:
            kwargs["secret_access_key"] = config.secret_access_key.reveal()
    elif config.endpoint:
        kwargs["endpoint"] = config.endpoint
    store: ObjectStore = from_url(config.url, client_options=options,  # type: ignore[misc,call-overload]
                                  **kwargs)
    return store


@dataclass(frozen=True, slots=True)
class ColdManifest:
    body: bytes
    media_type: str | None


def blob_key(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


def manifest_key(digest: Digest) -> str:
    return f"manifests/{digest.algorithm}/{digest.hex}.json"


def used_key(digest: Digest) -> str:
    return f"used/{digest.algorithm}/{digest.hex}"


def tag_key(upstream: str, repo: str, tag: str) -> str:
    # upstream, repo and tag were validated against the distribution grammar (no "..", no
    # empty components), so they are safe as key components.
    return f"tags/{upstream}/{repo}/{tag}.json"


def _digest_of(path: str, prefix: str) -> Digest | None:
    """blobs/<alg>/<hex> (or used/...) back to a digest; None for anything else."""
    rest = path[len(prefix):] if path.startswith(prefix) else ""
    alg, _, hex_ = rest.partition("/")
    try:
        return Digest.parse(f"{alg}:{hex_}")
    except DigestInvalid:
        return None


class ColdTier:
    """BlobStore over an obstore ObjectStore, plus manifests' media types and tag records."""

    name = "cold"

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- BlobStore contract ---------------------------------------------------------------------

    async def stat(self, digest: Digest) -> int | None:
        try:
            meta = await obstore.head_async(self.store, blob_key(digest))
        except FileNotFoundError:
            return None
        return int(meta["size"])

    async def read(self, digest: Digest, start: int = 0,
                   end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end] (inclusive). Raises FileNotFoundError when the blob is absent."""
        if end is not None and end < start:
            return
        rng: tuple[int, int] | dict[str, int] | None = None
        if end is not None:
            rng = (start, end + 1)
        elif start:
            rng = {"offset": start}
        options: dict[str, Any] = {"range": rng} if rng is not None else {}
        result = await obstore.get_async(self.store, blob_key(digest),
                                         options=options)  # type: ignore[arg-type]
        async for chunk in result.stream(min_chunk_size=READ_CHUNK):
            yield bytes(chunk)

    async def put_file(self, digest: Digest, path: Path) -> None:
        # Overwriting is harmless: the key names the content. A failing source aborts the
        # multipart upload, so a half-written object never appears under the key.
        await obstore.put_async(self.store, blob_key(digest), path, chunk_size=PART_SIZE,
                                max_concurrency=PART_CONCURRENCY)

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        await obstore.put_async(self.store, blob_key(digest), data, use_multipart=False)

    async def delete(self, digest: Digest) -> bool:
        existed = await self.stat(digest) is not None
        # Sidecars first: a reader that finds the blob also finds what describes it.
        for key in (manifest_key(digest), used_key(digest), blob_key(digest)):
            await self._delete_key(key)
        return existed

    async def _delete_key(self, key: str) -> None:
        try:
            await obstore.delete_async(self.store, key)
        except FileNotFoundError:
            pass  # S3 deletes are idempotent; local directories say so

    async def list(self) -> AsyncIterator[tuple[Digest, int]]:
        for meta in await self._list("blobs/"):
            d = _digest_of(meta["path"], "blobs/")
            if d is not None:
                yield d, int(meta["size"])

    async def _list(self, prefix: str) -> builtins.list[ObjectMeta]:
        out: builtins.list[ObjectMeta] = []
        async for batch in obstore.list(self.store, prefix, chunk_size=1000):
            out.extend(batch)
        return out

    # -- manifests ------------------------------------------------------------------------------

    async def put_manifest(self, digest: Digest, body: bytes, media_type: str | None) -> None:
        await self.put_bytes(digest, body)
        meta = json.dumps({"media_type": media_type, "size": len(body)}).encode()
        await obstore.put_async(self.store, manifest_key(digest), meta, use_multipart=False)

    async def has_manifest(self, digest: Digest) -> bool:
        try:
            await obstore.head_async(self.store, manifest_key(digest))
        except FileNotFoundError:
            return False
        return True

    async def get_manifest(self, digest: Digest) -> ColdManifest | None:
        """The manifest's bytes (verified against `digest`) and media type, or None."""
        try:
            meta = await (await obstore.get_async(self.store, manifest_key(digest))).bytes_async()
            body = bytes(await (await obstore.get_async(self.store, blob_key(digest))).bytes_async())
        except FileNotFoundError:
            return None
        if Digest.of(body, digest.algorithm) != digest:
            log.warning("cold tier holds bad content for manifest %s; ignoring it", digest)
            return None
        try:
            media_type = json.loads(bytes(meta)).get("media_type")
        except (ValueError, AttributeError):
            media_type = None
        return ColdManifest(body, media_type if isinstance(media_type, str) else None)

    # -- tag records ----------------------------------------------------------------------------

    async def put_tag(self, upstream: str, repo: str, tag: str, record: dict[str, Any]) -> None:
        await obstore.put_async(self.store, tag_key(upstream, repo, tag),
                                json.dumps(record).encode(), use_multipart=False)

    async def get_tag(self, upstream: str, repo: str, tag: str) -> dict[str, Any] | None:
        try:
            data = await (await obstore.get_async(
                self.store, tag_key(upstream, repo, tag))).bytes_async()
            record = json.loads(bytes(data))
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("cold tier tag record %s/%s:%s is not JSON; ignoring it", upstream, repo,
                        tag)
            return None
        return record if isinstance(record, dict) else None

    # -- use and age ----------------------------------------------------------------------------

    async def mark_used(self, digest: Digest) -> None:
        await obstore.put_async(self.store, used_key(digest), b"", use_multipart=False)

    async def usage(self) -> tuple[int, int]:
        """(objects, bytes) under blobs/."""
        metas = await self._list("blobs/")
        return len(metas), sum(int(m["size"]) for m in metas)

    async def expire(self, max_age: float, now: float | None = None) -> tuple[int, int]:
        """Delete blobs neither written nor marked used for `max_age` seconds, then tag records
        that are as old and whose manifest is gone. Returns (objects, bytes) removed."""
        now = time.time() if now is None else now
        cutoff = now - max_age
        used = {str(d): m["last_modified"].timestamp() for m in await self._list("used/")
                if (d := _digest_of(m["path"], "used/")) is not None}
        removed = freed = 0
        for meta in await self._list("blobs/"):
            d = _digest_of(meta["path"], "blobs/")
            if d is None:
                continue
            last = max(meta["last_modified"].timestamp(), used.get(str(d), 0.0))
            if last < cutoff:
                await self.delete(d)
                removed += 1
                freed += int(meta["size"])
        for meta in await self._list("tags/"):
            if meta["last_modified"].timestamp() >= cutoff:
                continue
            path = meta["path"]
            try:
                record = json.loads(bytes(await (await obstore.get_async(
                    self.store, path)).bytes_async()))
                digest = Digest.parse(str(record["digest"]))
            except (FileNotFoundError, ValueError, KeyError, TypeError, DigestInvalid):
                digest = None
            if digest is None or await self.stat(digest) is None:
                await self._delete_key(path)
                removed += 1
        return removed, freed
