"""Seeding: fill the cache with whole images before anyone pulls them (air-gapped sites, warm
rules). Walks tag -> manifest -> index children (optionally only some platforms) -> config and
layers, plus referrers (signatures, SBOMs) on request.

The walk is the same whether the content comes from the pull service in this process
(`ServiceSource`: standalone `mirror seed -c FILE`, and the server's warm rules) or from a
running mirror over HTTP (`seed_http.HttpSource`, `mirror seed --url`). Content already cached
is skipped, so an interrupted seed is simply run again. Every failure is collected, reported
and turned into a non-zero exit code; one bad image never stops the others."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mirror.fetch.blobs import Download
from mirror.oci.errors import MirrorError
from mirror.oci.imageref import ImageRef
from mirror.oci.models import (
    IMAGE_MANIFEST_TYPES,
    MANIFEST_TYPES,
    MT_OCI_INDEX,
    Descriptor,
    Digest,
    Platform,
    Reference,
    parse_manifest,
)
from mirror.pull.service import PullService

MAX_REFERRER_DEPTH = 2  # a signature of an SBOM of an image; deeper chains are not followed
TAGS_PAGE = 1000


class SeedError(Exception):
    """Content that could not be seeded; the message says what and why."""


@dataclass(frozen=True, slots=True)
class Fetched:
    digest: Digest
    media_type: str
    body: bytes
    cached: bool  # True when the mirror already held it (False also when unknown)


Progress = Callable[[int], None]


class SeedSource(Protocol):
    """Where the seeder gets content from; each call leaves that content in the cache."""

    async def manifest(self, ref: ImageRef, reference: str) -> Fetched: ...

    async def blob(self, ref: ImageRef, desc: Descriptor, progress: Progress) -> bool:
        """Make sure the blob is cached; True if it was fetched now, False if already cached."""
        ...

    async def tags(self, ref: ImageRef) -> list[str]: ...

    async def referrers(self, ref: ImageRef, digest: Digest) -> list[Descriptor] | None:
        """Referrers of `digest`, or None when the registry has no referrers API."""
        ...


@dataclass(slots=True)
class ImageResult:
    ref: ImageRef
    digest: Digest | None = None
    manifests: int = 0
    blobs: int = 0  # config and layer blobs the image needs
    blobs_fetched: int = 0  # of those, fetched by this run for this image (first to ask)
    bytes_fetched: int = 0
    platforms_skipped: int = 0
    referrers: int = 0
    error: str | None = None


@dataclass(slots=True)
class SeedSummary:
    results: list[ImageResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # problems not tied to one image
    blobs_fetched: int = 0  # distinct blobs of the whole run
    blobs_cached: int = 0
    bytes_fetched: int = 0

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.error) + len(self.errors)

    @property
    def ok(self) -> bool:
        return self.failed == 0


class SeedReporter(Protocol):
    def total(self, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def image_done(self, result: ImageResult) -> None: ...

    def problem(self, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SeedOptions:
    platforms: tuple[Platform, ...] = ()  # empty: every platform of an index
    with_referrers: bool = False
    parallel: int = 4  # blobs fetched at once


def parse_platforms(text: str) -> tuple[Platform, ...]:
    """`linux/amd64,linux/arm64/v8` -> platforms; ValueError names the bad one."""
    return tuple(Platform.parse(p.strip()) for p in text.split(",") if p.strip())


def expand_pattern_tags(ref: ImageRef, tags: list[str]) -> list[ImageRef]:
    assert ref.pattern is not None
    return [ref.with_tag(t) for t in ref.pattern.select(tags)]


class Seeder:
    def __init__(self, source: SeedSource, options: SeedOptions, reporter: SeedReporter) -> None:
        self.source = source
        self.options = options
        self.reporter = reporter
        self._slots = asyncio.Semaphore(max(1, options.parallel))
        # One task per digest for the whole run: layers shared by several images are fetched
        # (and counted) once; later images wait for the same task.
        self._blobs: dict[str, asyncio.Task[bool]] = {}
        self._tags: dict[tuple[str, str], list[str]] = {}

    async def run(self, refs: Sequence[ImageRef]) -> SeedSummary:
        summary = SeedSummary()
        images: list[ImageRef] = []
        for ref in refs:
            if ref.pattern is None:
                images.append(ref)
                continue
            try:
                matched = expand_pattern_tags(ref, await self._tag_list(ref))
            except (MirrorError, SeedError) as e:
                summary.errors.append(f"{ref}: cannot list tags: {_message(e)}")
                self.reporter.problem(summary.errors[-1])
                continue
            if not matched:
                summary.errors.append(f"{ref}: no tag matches {ref.pattern.text!r}")
                self.reporter.problem(summary.errors[-1])
            images += matched
        unique = list(dict.fromkeys(images))
        try:
            summary.results = list(await asyncio.gather(*(self._image(r) for r in unique)))
        finally:
            for task in self._blobs.values():
                task.cancel()
            await asyncio.gather(*self._blobs.values(), return_exceptions=True)
        for r in summary.results:
            summary.blobs_fetched += r.blobs_fetched
            summary.bytes_fetched += r.bytes_fetched
        summary.blobs_cached = sum(1 for t in self._blobs.values()
                                   if not t.cancelled() and t.exception() is None
                                   and t.result() is False)
        return summary

    async def _tag_list(self, ref: ImageRef) -> list[str]:
        key = (ref.upstream, ref.repo)
        if key not in self._tags:
            self._tags[key] = await self.source.tags(ref)
        return self._tags[key]

    async def _image(self, ref: ImageRef) -> ImageResult:
        result = ImageResult(ref)
        try:
            top = await self.source.manifest(ref, ref.reference)
            if ref.digest is not None and top.digest != ref.digest:
                raise SeedError(f"asked for {ref.digest}, got {top.digest}")
            result.digest = top.digest
            await self._walk(ref, top, result, 0)
        except (MirrorError, SeedError, OSError) as e:  # OSError includes TimeoutError
            result.error = _message(e)
        self.reporter.image_done(result)
        return result

    async def _walk(self, ref: ImageRef, m: Fetched, result: ImageResult, depth: int) -> None:
        result.manifests += 1
        parsed = parse_manifest(m.body, m.media_type)
        if parsed.is_index:
            for child in parsed.children:
                if not self._wanted(child):
                    result.platforms_skipped += 1
                    continue
                sub = await self.source.manifest(ref, str(child.digest))
                if sub.digest != child.digest:
                    raise SeedError(f"index entry {child.digest} came back as {sub.digest}")
                await self._walk(ref, sub, result, depth)
        elif m.media_type in IMAGE_MANIFEST_TYPES:
            outcomes = await asyncio.gather(*(self._blob(ref, d) for d in parsed.blobs))
            for d, fetched in zip(parsed.blobs, outcomes, strict=True):
                result.blobs += 1
                if fetched:  # None: another image of this run asked first and counts it
                    result.blobs_fetched += 1
                    result.bytes_fetched += max(d.size, 0)
        else:
            raise SeedError(f"{m.digest}: cannot seed a {m.media_type} manifest")
        if self.options.with_referrers and depth < MAX_REFERRER_DEPTH:
            await self._referrers(ref, m.digest, result, depth)

    def _wanted(self, child: Descriptor) -> bool:
        if not self.options.platforms:
            return True
        plat = child.platform
        return plat is not None and any(p.matches(plat) for p in self.options.platforms)

    async def _blob(self, ref: ImageRef, desc: Descriptor) -> bool | None:
        """True: fetched now; False: was cached; None: another image of this run fetched it."""
        key = str(desc.digest)
        task = self._blobs.get(key)
        if task is not None:
            await task
            return None
        self.reporter.total(max(desc.size, 0))
        task = asyncio.ensure_future(self._fetch_blob(ref, desc))
        self._blobs[key] = task
        return await task

    async def _fetch_blob(self, ref: ImageRef, desc: Descriptor) -> bool:
        async with self._slots:
            moved = 0

            def progress(n: int) -> None:
                nonlocal moved
                moved += n
                self.reporter.advance(n)

            fetched = await self.source.blob(ref, desc, progress)
            # Cached blobs (and bodies that arrived without progress reports) still complete
            # the bar.
            if desc.size > moved:
                self.reporter.advance(desc.size - moved)
            return fetched

    async def _referrers(self, ref: ImageRef, digest: Digest, result: ImageResult,
                         depth: int) -> None:
        found: dict[str, tuple[ImageRef, str]] = {}
        for d in await self.source.referrers(ref, digest) or []:
            found[str(d.digest)] = (ref, str(d.digest))
        # Tag fallbacks: the OCI referrers tag schema (`sha256-<hex>`) and cosign's
        # `sha256-<hex>.sig/.att/.sbom`. Fetched by tag, so the tag record is cached too.
        prefix = f"{digest.algorithm}-{digest.hex}"
        try:
            tags = await self._tag_list(ref)
        except (MirrorError, SeedError):
            tags = []
        for t in tags:
            if t == prefix or t.startswith(prefix + "."):
                found[t] = (ref.with_tag(t), t)
        for sub_ref, reference in found.values():
            sub = await self.source.manifest(sub_ref, reference)
            result.referrers += 1
            await self._walk(sub_ref, sub, result, depth + 1)


def descriptors_of_index(body: bytes) -> list[Descriptor]:
    """The `manifests` of an image index document (a referrers API answer)."""
    return list(parse_manifest(body, MT_OCI_INDEX).children)


def next_page(link: str | None) -> str | None:
    """The query of a `Link: </v2/...?n=100&last=x>; rel="next"` header, or None."""
    if not link or 'rel="next"' not in link:
        return None
    start, end = link.find("<"), link.find(">")
    if start < 0 or end < start:
        return None
    _, _, query = link[start + 1:end].partition("?")
    return query or None


def _message(e: BaseException) -> str:
    if isinstance(e, MirrorError):
        return e.message
    return str(e) or type(e).__name__


class ServiceSource:
    """Content through the pull service in this process (standalone seed, warm rules)."""

    def __init__(self, service: PullService) -> None:
        self.service = service

    async def manifest(self, ref: ImageRef, reference: str) -> Fetched:
        answer = await self.service.manifest(ref.upstream, ref.repo, Reference.parse(reference),
                                             list(MANIFEST_TYPES), prefetch=False)
        m = answer.manifest
        return Fetched(m.digest, m.media_type, m.body, answer.result == "hit")

    async def blob(self, ref: ImageRef, desc: Descriptor, progress: Progress) -> bool:
        service = self.service
        if service.tier.entry(desc.digest) is not None:
            return False
        handle = await service.blobs.open(service.client(ref.upstream), ref.repo, desc.digest,
                                          desc.size if desc.size >= 0 else None)
        try:
            if not isinstance(handle.body, Download):
                return False  # finished by someone else meanwhile
            fetch = handle.body.fetch
            if handle.body.fd is not None:
                fetch.close_reader(handle.body.fd)  # we only wait; nothing is read here
                handle.body.fd = None
            seen = 0
            while not fetch.done:
                if fetch.error is not None:
                    raise fetch.error
                progress(fetch.available - seen)
                seen = fetch.available
                await fetch.changed()
            progress(fetch.available - seen)
            return True
        finally:
            service.release_blob(handle)

    async def tags(self, ref: ImageRef) -> list[str]:
        tags: list[str] = []
        query: str | None = f"n={TAGS_PAGE}"
        while query is not None:
            answer = await self.service.tags_list(ref.upstream, ref.repo, query)
            if answer.status != 200:
                raise SeedError(f"tag list of {ref.name} answered {answer.status}")
            tags += tag_names(answer.body)
            query = next_page(answer.link)
        return tags

    async def referrers(self, ref: ImageRef, digest: Digest) -> list[Descriptor] | None:
        try:
            answer = await self.service.referrers(ref.upstream, ref.repo, digest, "")
        except MirrorError:
            return None
        return descriptors_of_index(answer.body) if answer.status == 200 else None


def tag_names(body: bytes) -> list[str]:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise SeedError("tag list is not JSON") from e
    tags = doc.get("tags") if isinstance(doc, dict) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
