"""Seed through a running mirror (`mirror seed --url URL`): plain pull requests, with `?ns=` naming
the registry (as containerd does), so the server fetches, verifies and caches as for any client.
Blob bodies are read and dropped here: the server verified them before the last byte came."""

from __future__ import annotations

import json

import aiohttp

from mirror.airgap.seed import (
    TAGS_PAGE,
    Fetched,
    Progress,
    SeedError,
    descriptors_of_index,
    next_page,
    tag_names,
)
from mirror.oci.imageref import ImageRef
from mirror.oci.models import MANIFEST_TYPES, MAX_MANIFEST_SIZE, Descriptor, Digest, manifest_media_type

READ_CHUNK = 1024 * 1024


class HttpSource:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base = base_url.rstrip("/")
        self.session = session

    def _url(self, ref: ImageRef, tail: str) -> str:
        return f"{self.base}/v2/{ref.repo}/{tail}"

    def _params(self, ref: ImageRef, **extra: str) -> dict[str, str]:
        return {"ns": ref.upstream, **extra}

    async def manifest(self, ref: ImageRef, reference: str) -> Fetched:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        try:
            async with self.session.get(self._url(ref, f"manifests/{reference}"),
                                        params=self._params(ref), headers=headers) as resp:
                body = await resp.content.read(MAX_MANIFEST_SIZE + 1)
                if resp.status != 200:
                    raise SeedError(f"mirror answered {resp.status} for {ref.name}:{reference}: "
                                    f"{_error_text(body)}")
                if len(body) > MAX_MANIFEST_SIZE:
                    raise SeedError(f"manifest {ref.name}:{reference} is too large")
                ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip() or None
                claimed = resp.headers.get("Docker-Content-Digest")
        except aiohttp.ClientError as e:
            raise SeedError(f"mirror {self.base} unreachable: {e}") from None
        digest = Digest.of(body)
        if claimed and claimed != str(digest):
            raise SeedError(f"manifest {ref.name}:{reference} hashes to {digest}, mirror said "
                            f"{claimed}")
        return Fetched(digest, manifest_media_type(body, ctype), body, False)

    async def blob(self, ref: ImageRef, desc: Descriptor, progress: Progress) -> bool:
        received = 0
        try:
            async with self.session.get(self._url(ref, f"blobs/{desc.digest}"),
                                        params=self._params(ref)) as resp:
                if resp.status != 200:
                    body = await resp.content.read(65536)
                    raise SeedError(f"mirror answered {resp.status} for blob {desc.digest}: "
                                    f"{_error_text(body)}")
                async for chunk in resp.content.iter_chunked(READ_CHUNK):
                    received += len(chunk)
                    progress(len(chunk))
        except aiohttp.ClientError as e:
            raise SeedError(f"blob {desc.digest} broke off after {received} bytes: {e}") from None
        if desc.size >= 0 and received != desc.size:
            raise SeedError(f"blob {desc.digest}: got {received} bytes, manifest says {desc.size}")
        return True

    async def tags(self, ref: ImageRef) -> list[str]:
        tags: list[str] = []
        query: str | None = f"n={TAGS_PAGE}"
        while query is not None:
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            try:
                async with self.session.get(self._url(ref, "tags/list"),
                                            params=self._params(ref, **params)) as resp:
                    body = await resp.content.read(MAX_MANIFEST_SIZE)
                    if resp.status != 200:
                        raise SeedError(f"mirror answered {resp.status} for the tags of "
                                        f"{ref.name}: {_error_text(body)}")
                    link = resp.headers.get("Link")
            except aiohttp.ClientError as e:
                raise SeedError(f"mirror {self.base} unreachable: {e}") from None
            tags += tag_names(body)
            query = next_page(link)
        return tags

    async def referrers(self, ref: ImageRef, digest: Digest) -> list[Descriptor] | None:
        try:
            async with self.session.get(self._url(ref, f"referrers/{digest}"),
                                        params=self._params(ref)) as resp:
                if resp.status != 200:
                    return None
                return descriptors_of_index(await resp.content.read(MAX_MANIFEST_SIZE))
        except aiohttp.ClientError:
            return None


def _error_text(body: bytes) -> str:
    """The message of an OCI error body, else the start of the body."""
    try:
        doc = json.loads(body)
        return str(doc["errors"][0]["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        return body[:200].decode("utf-8", "replace") or "(no body)"
