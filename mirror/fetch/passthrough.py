"""Degraded mode for a full hot tier: stream a blob from upstream to one client without
caching it, still verified. Used while the disk is full (ENOSPC/EDQUOT): serving beats failing.

The last chunk is held back until the digest checks out, so a wrong body never completes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from mirror.oci.errors import BlobUnknown, UpstreamRejected, UpstreamUnavailable, VerificationError
from mirror.oci.models import Digest
from mirror.upstream.client import UpstreamClient

CHUNK = 256 * 1024


async def open_passthrough(client: UpstreamClient, repo: str,
                           digest: Digest) -> tuple[int | None, AsyncIterator[bytes]]:
    resp = await client.open_blob(repo, str(digest))
    if resp.status != 200:
        resp.release()
        if resp.status == 404:
            raise BlobUnknown(f"blob {digest} not found upstream")
        raise UpstreamRejected(f"upstream {client.name} answered {resp.status} for blob {digest}",
                               resp.status)

    if resp.content_length == 0 and not digest.names_empty():
        resp.release()  # a zero-length response would complete before any verification
        raise VerificationError(f"upstream length 0 for {digest}, which names non-empty content")

    async def body() -> AsyncIterator[bytes]:
        hasher = digest.hasher()
        held = b""
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                hasher.update(chunk)
                if held:
                    yield held
                held = chunk
            if hasher.hexdigest() != digest.hex:
                raise VerificationError(f"upstream body for {digest} did not verify")
            if held:
                yield held
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamUnavailable(f"upstream broke off {digest}: {type(e).__name__}") from None
        finally:
            resp.release()

    return resp.content_length, body()
