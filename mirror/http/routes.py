"""Thin HTTP handlers: parse and validate, ask the service, write headers and bytes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from mirror.fetch.blobs import BlobHandle, CommittedFile, Download, Uncached
from mirror.http.keys import FILE_READS, METRICS, ROUTER, SERVICE
from mirror.http.responses import (
    SendfileResponse,
    stream_body,
    stream_fetch,
)
from mirror.observe.record import PullRecord, record_of
from mirror.oci.apipath import API_VERSION_HEADER, next_link, parse_api_path
from mirror.oci.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    MirrorError,
    TagInvalid,
    Unsupported,
)
from mirror.oci.models import Digest, Reference, parse_accept_lines, parse_range
from mirror.oci.routing import Route
from mirror.pull.service import PassThrough
from mirror.store.disk import open_for_reading

log = logging.getLogger("mirror.http.routes")
PULL_METHODS = ("GET", "HEAD")


async def v2_root(request: web.Request) -> web.Response:
    return web.json_response({}, headers=API_VERSION_HEADER)


async def v2_api(request: web.Request) -> web.StreamResponse:
    if request.method not in PULL_METHODS:
        raise Unsupported(f"{request.method} is not supported: this is a read-only pull mirror")
    api = parse_api_path(request.match_info["tail"])
    ns = request.query.get("ns")
    route = request.app[ROUTER](api.name, ns)
    rec = record_of(request)
    rec.route = route
    rec.reference = api.ref
    headers = dict(API_VERSION_HEADER)
    if ns is not None:
        headers["OCI-Namespace"] = ns  # containerd's hosts.md: echo the namespace we served
    if api.kind == "manifests":
        return await _manifest(request, route, api.ref, headers)
    if api.kind == "blobs":
        return await _blob(request, route, api.ref, headers)
    if api.kind == "tags":
        rec.kind = "tags"
        return await _passthrough(request, await request.app[SERVICE].tags_list(
            route.upstream, route.repo, _query_without_ns(request)), headers, "tags", route)
    digest = Digest.parse(api.ref)
    rec.kind = "referrers"
    return await _passthrough(request, await request.app[SERVICE].referrers(
        route.upstream, route.repo, digest, _query_without_ns(request)), headers, "referrers",
        route)


def _query_without_ns(request: web.Request) -> str:
    allowed = {k: v for k, v in request.query.items() if k in ("n", "last", "artifactType")}
    return urlencode(allowed)


async def _passthrough(request: web.Request, answer: PassThrough, headers: dict[str, str],
                       kind: str, route: Route) -> web.Response:
    if answer.content_type:
        headers["Content-Type"] = answer.content_type
    # Pagination goes on along the client's own route (prefix or ns), never the upstream's path.
    link = next_link(answer.link, request.rel_url.raw_path, request.query.get("ns"),
                     ("n", "last") if kind == "tags" else None)
    if link:
        headers["Link"] = link
    result = answer.result if answer.status == 200 else "error"
    rec = record_of(request)
    rec.result, rec.bytes = result, len(answer.body) if request.method == "GET" else 0
    request.app[METRICS].requests.labels(route.upstream, "tag", result).inc()
    return web.Response(status=answer.status, body=answer.body, headers=headers)


async def _manifest(request: web.Request, route: Route, ref_text: str,
                    headers: dict[str, str]) -> web.Response:
    try:
        ref = Reference.parse(ref_text)
    except (TagInvalid, DigestInvalid):
        # The spec's end-3 fails only with 404: a reference that is neither a tag nor a digest
        # names no manifest (distribution answers `.INVALID_MANIFEST_NAME` so). No upstream asked.
        raise ManifestUnknown(f"manifest unknown: {ref_text[:140]!r} is neither a tag nor a "
                              "digest") from None
    metrics = request.app[METRICS]
    rec = record_of(request)
    rec.kind = "manifest"
    try:
        answer = await request.app[SERVICE].manifest(
            route.upstream, route.repo, ref, parse_accept_lines(request.headers.getall("Accept", [])),
            prefetch=request.method == "GET")
    except MirrorError:
        metrics.requests.labels(route.upstream, "manifest" if ref.digest else "tag", "error").inc()
        raise
    m = answer.manifest
    metrics.requests.labels(route.upstream, "manifest" if ref.digest else "tag",
                            answer.result).inc()
    rec.digest, rec.result = str(m.digest), answer.result
    headers.update({
        "Docker-Content-Digest": str(m.digest),
        "Content-Type": m.media_type,
        "ETag": f'"{m.digest}"',
    })
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(m.body))
        return web.Response(status=200, headers=headers)
    rec.bytes = len(m.body)
    # A coalesced answer came from an upstream fetch too, just one another request started.
    metrics.served(route.upstream, "upstream" if answer.result in ("miss", "coalesced") else "hot",
                   len(m.body))
    return web.Response(status=200, body=m.body, headers=headers)


async def _blob(request: web.Request, route: Route, ref_text: str,
                headers: dict[str, str]) -> web.StreamResponse:
    try:
        digest = Digest.parse(ref_text)
    except DigestInvalid as e:
        # The spec's end-2 fails only with 404: no blob has a malformed name. No upstream asked.
        raise BlobUnknown(f"blob unknown: {e.message}") from None
    service = request.app[SERVICE]
    metrics = request.app[METRICS]
    rec = record_of(request)
    rec.kind, rec.digest = "blob", str(digest)
    try:
        if request.method == "HEAD":
            # Uncached: one upstream HEAD answers, nothing is downloaded (a GET that follows does).
            size = await service.blob_size(route.upstream, route.repo, digest)
            if size is not None:
                rec.result = "miss"
                metrics.requests.labels(route.upstream, "blob", "miss").inc()
                status, _, _ = _blob_headers(request, digest, size, headers)
                return web.Response(status=status, headers=headers)
        handle = await service.open_blob(route.upstream, route.repo, digest)
    except MirrorError:
        metrics.requests.labels(route.upstream, "blob", "error").inc()
        raise
    try:
        # Filled from the cold tier: a cache hit, no upstream byte was needed.
        result = "hit" if handle.source == "cold" and handle.result == "miss" else handle.result
        rec.result = result
        metrics.requests.labels(route.upstream, "blob", result).inc()
        resp, sent = await send_blob(request, handle, headers, rec)
        if sent is None:
            return resp
        rec.bytes = sent
        metrics.served(route.upstream, handle.source, sent)  # hot, cold, peer or upstream
        return resp
    finally:
        service.release_blob(handle)  # closes what the response did not take


async def send_blob(request: web.Request, handle: BlobHandle, headers: dict[str, str],
                    rec: PullRecord) -> tuple[web.StreamResponse, int | None]:
    """Answer with a blob handle's bytes (Range honoured); the bytes sent, or None when the
    response was cut or carries none. A client's request and a peer's both end here."""
    digest = handle.digest
    body = handle.body
    if not handle.size and isinstance(body, Download):
        # Upstream sent no length: only a finished download tells us the size. A length
        # of 0 waits too: an empty body has no last byte to hold back until the digest
        # verified, so it could complete wrong (an upstream that says 0 for real content).
        while not body.fetch.done:
            if body.fetch.error is not None:
                raise body.fetch.error
            await body.fetch.changed()
        handle.size = body.fetch.available
    if isinstance(body, Uncached) and (handle.size is None or request.method == "HEAD"):
        return await _stream_uncached(request, body.stream, handle.size, digest, headers,
                                      rec), None
    size = handle.size
    assert size is not None
    status, start, end = _blob_headers(request, digest, size, headers)
    count = end - start + 1 if size else 0
    if request.method == "HEAD":
        return web.Response(status=status, headers=headers), None
    match body:
        case CommittedFile():
            # Opened already with server.workers > 1 (another worker may evict the path).
            fobj, body.file = body.file or open_for_reading(body.path), None
            resp: web.StreamResponse = SendfileResponse(
                fobj, start, count, request.app.get(FILE_READS), status=status, headers=headers)
            await resp.prepare(request)
            sent = count
        case Download():
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = count
            assert body.fd is not None
            fd, body.fd = body.fd, None  # stream_fetch closes it
            t0 = time.monotonic()
            try:
                sent = await stream_fetch(request, resp, body.fetch, fd, start, end)
            except MirrorError as e:
                log.warning("cut blob %s for a client after %.1fs: %s", digest,
                            time.monotonic() - t0, e.message)
                rec.result = "error"
                return resp, None
            except ConnectionError:  # the client went away; the download goes on for others
                rec.result = "error"
                return resp, None
        case Uncached():
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = count
            try:
                sent = await stream_body(request, resp, body.stream, start, end)
            except (MirrorError, ConnectionError) as e:
                log.warning("cut uncached blob %s for a client: %s", digest, e)
                rec.result = "error"
                return resp, None
    return resp, sent


def _blob_headers(request: web.Request, digest: Digest, size: int,
                  headers: dict[str, str]) -> tuple[int, int, int]:
    """Status, first and last byte for a blob of `size` bytes; fills `headers` (a HEAD's
    Content-Length too)."""
    rng = parse_range(request.headers.get("Range"), size) if size else None
    start, end = rng if rng is not None else (0, size - 1)
    headers.update({
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    })
    status = 200
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        headers["Content-Length"] = str(end - start + 1 if size else 0)
    return status, start, end


async def _stream_uncached(request: web.Request, body: AsyncIterator[bytes], size: int | None,
                           digest: Digest, headers: dict[str, str],
                           rec: PullRecord) -> web.StreamResponse:
    """Disk-full mode with an upstream that sent no length (or a HEAD): no Range support."""
    headers.update({"Docker-Content-Digest": str(digest), "Content-Type": "application/octet-stream"})
    if request.method == "HEAD":
        await body.aclose()  # type: ignore[attr-defined]
        if size is not None:
            headers["Content-Length"] = str(size)
        return web.Response(status=200, headers=headers)
    resp = web.StreamResponse(status=200, headers=headers)
    rec.bytes = await stream_body(request, resp, body, 0, -1)
    return resp


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()  # every worker's samples with server.workers > 1
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    app.router.add_route("GET", "/v2/", v2_root)
    app.router.add_route("HEAD", "/v2/", v2_root)
    app.router.add_route("GET", "/v2", v2_root)
    app.router.add_route("*", "/v2/{tail:.+}", v2_api)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
