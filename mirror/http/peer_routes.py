"""The peer endpoint: another node of the cluster asks this one, the digest's owner, for a
blob. Answered only with the cluster secret; the owner fetches once (its own single flight,
cold tier first) and streams while it downloads. Client auth and access rules are the asking
node's: they were applied where the client connected."""

from __future__ import annotations

import logging

from aiohttp import web

from mirror.fetch.peer_fetch import CHECKED_AT_HEADER
from mirror.fetch.peers import PEER_SECRET_HEADER, PeerSet
from mirror.http.keys import METRICS, SERVICE
from mirror.http.routes import send_blob
from mirror.observe.metrics import Metrics
from mirror.observe.record import record_of
from mirror.oci.apipath import PEER_PREFIX
from mirror.oci.errors import (
    BlobUnknown,
    Denied,
    ManifestUnknown,
    MirrorError,
    NameUnknown,
)
from mirror.oci.models import Digest, Reference
from mirror.pull.service import PullService
from mirror.upstream.client import UpstreamClient

log = logging.getLogger("mirror.http.peer_routes")
PEERS = web.AppKey("peers", PeerSet)


def _check_secret(request: web.Request) -> None:
    peers = request.app.get(PEERS)
    if peers is None or not peers.authorized(request.headers.get(PEER_SECRET_HEADER)):
        request.app[METRICS].peer_requests.labels("answered", "refused").inc()
        log.warning("refused a peer request from %s: no cluster, or the secret is missing or "
                    "wrong", request.remote)
        raise Denied("peer requests need the cluster secret")


def _peer_request(request: web.Request) -> tuple[Metrics, PullService, str, str, UpstreamClient]:
    """A peer's request, its secret checked: what it asks of which upstream and repository."""
    _check_secret(request)
    service = request.app[SERVICE]
    upstream, repo = request.match_info["upstream"], request.query.get("repo", "")
    client = service.client(upstream)
    if client is None or not repo:
        raise NameUnknown(f"no upstream {upstream!r} or no repository here")
    return request.app[METRICS], service, upstream, repo, client


async def peer_manifest(request: web.Request) -> web.Response:
    """A manifest by digest or by tag, as this node (the owner) holds or resolves it; for a
    tag, when its upstream last confirmed it."""
    metrics, service, upstream, repo, client = _peer_request(request)
    ref = Reference.parse(request.match_info["ref"])
    rec = record_of(request)
    rec.kind = "peer-manifest"
    try:
        if ref.digest is not None:
            answer = await service.manifests.by_digest(client, repo, ref.digest, local=True)
            checked = None
        else:
            answer = await service.tags.resolve(upstream, repo, ref.tag or "", local=True)
            checked = service.tags.checked_at(upstream, repo, ref.tag or "")
    except ManifestUnknown:
        metrics.peer_requests.labels("answered", "missing").inc()
        raise
    except MirrorError:
        metrics.peer_requests.labels("answered", "failed").inc()
        raise
    m = answer.manifest
    metrics.peer_requests.labels("answered", "ok").inc()
    metrics.peer_bytes.labels("sent").inc(len(m.body))
    headers = {"Content-Type": m.media_type, "Docker-Content-Digest": str(m.digest)}
    if checked is not None:
        headers[CHECKED_AT_HEADER] = repr(checked)
    return web.Response(body=m.body, headers=headers)


async def peer_blob(request: web.Request) -> web.StreamResponse:
    metrics, service, _, repo, client = _peer_request(request)
    digest = Digest.parse(request.match_info["digest"])
    rec = record_of(request)
    rec.kind, rec.digest = "peer-blob", str(digest)
    try:
        handle = await service.blobs.open(client, repo, digest, for_peer=True)
    except BlobUnknown:
        metrics.peer_requests.labels("answered", "missing").inc()
        raise
    except MirrorError:
        metrics.peer_requests.labels("answered", "failed").inc()
        raise
    try:
        rec.result = handle.result
        resp, sent = await send_blob(request, handle, {}, rec)
        metrics.peer_requests.labels("answered", "ok" if sent is not None else "cut").inc()
        if sent is not None:
            rec.bytes = sent
            metrics.peer_bytes.labels("sent").inc(sent)
        return resp
    finally:
        service.release_blob(handle)


def add_peer_routes(app: web.Application) -> None:
    app.router.add_get(PEER_PREFIX + "blobs/{upstream}/{digest}", peer_blob)
    app.router.add_get(PEER_PREFIX + "manifests/{upstream}/{ref}", peer_manifest)
