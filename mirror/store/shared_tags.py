"""Tag records shared through the cold tier, so that any node (or this one after losing its
disk) can answer a tag when the upstream is unreachable, and a tag one node resolved recently
is fresh for every node.

The service's glue between the tag index and the tiered cache (which never import each other):
it turns local TagRecords into the cold tier's JSON records and back."""

from __future__ import annotations

import logging

from mirror.oci.errors import DigestInvalid
from mirror.oci.models import Digest
from mirror.store.index import TagIndex, TagRecord
from mirror.store.tiered import TieredStore
from mirror.store.uploads import TagSource

log = logging.getLogger("mirror.store.shared_tags")


def tag_records(tags: TagIndex) -> TagSource:
    """The uploader's tag source: the current local record as the cold tier stores it (read
    when the upload runs, so a retry sends the latest)."""

    def record_of(upstream: str, repo: str, tag: str) -> dict[str, object] | None:
        rec = tags.get(upstream, repo, tag)
        if rec is None or rec.digest is None:
            return None
        return {"digest": rec.digest, "media_type": rec.media_type, "size": rec.size,
                "checked_at": rec.checked_at}

    return record_of


class SharedTags:
    def __init__(self, tiers: TieredStore, tags: TagIndex) -> None:
        self.tiers = tiers
        self.tags = tags

    def publish(self, upstream: str, repo: str, tag: str) -> None:
        self.tiers.queue_tag(upstream, repo, tag)

    async def recall(self, upstream: str, repo: str, tag: str,
                     rec: TagRecord | None) -> TagRecord | None:
        """Complete what this node knows about a tag from the cold tier: a record when there is
        none here, and the record's manifest when the hot tier lost it. Freshness rules then
        apply as usual (a record keeps the time the upstream last confirmed it)."""
        if rec is None:
            rec = await self._cold_record(upstream, repo, tag)
            if rec is not None:
                self.tags.put(upstream, repo, tag, rec)
        if rec is not None and rec.digest is not None:
            digest = Digest.parse(rec.digest)
            if self.tiers.hot.entry(digest) is None:
                await self.tiers.manifest(digest)
        return rec

    async def _cold_record(self, upstream: str, repo: str, tag: str) -> TagRecord | None:
        raw = await self.tiers.tag(upstream, repo, tag)
        if raw is None:
            return None
        try:
            digest = str(Digest.parse(str(raw["digest"])))
            media_type = raw.get("media_type")
            size = raw.get("size")
            checked_at = float(raw["checked_at"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, DigestInvalid):
            log.warning("ignoring a malformed cold tier record for %s/%s:%s", upstream, repo, tag)
            return None
        return TagRecord(digest, media_type if isinstance(media_type, str) else None,
                         size if isinstance(size, int) else None, checked_at)
