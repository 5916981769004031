"""The peer endpoint: another node of the cluster asks this one, the digest's owner, for a
blob. Answered only with the cluster secret; the owner fetches once (its own single flight,
cold tier first) and streams while it downloads. Client auth and access rules are the asking
node's: they were applied where the client connected."""

from __future__ import annotations

import logging

from aiohttp import web

from mirror.fetch.peers import PEER_SECRET_HEADER, PeerSet
from mirror.http.keys import METRICS, SERVICE
from mirror.http.routes import send_blob
from mirror.observe.record import record_of
from mirror.oci.apipath import PEER_PREFIX
from mirror.oci.errors import BlobUnknown, Denied, MirrorError, NameUnknown
from mirror.oci.models import Digest

log = logging.getLogger("mirror.http.peer_routes")
PEERS = web.AppKey("peers", PeerSet)


async def peer_blob(request: web.Request) -> web.StreamResponse:
    metrics = request.app[METRICS]
    peers = request.app.get(PEERS)
    if peers is None or not peers.authorized(request.headers.get(PEER_SECRET_HEADER)):
        metrics.peer_requests.labels("answered", "refused").inc()
        log.warning("refused a peer request from %s: no cluster, or the secret is missing or "
                    "wrong", request.remote)
        raise Denied("peer requests need the cluster secret")
    service = request.app[SERVICE]
    upstream, repo = request.match_info["upstream"], request.query.get("repo", "")
    client = service.client(upstream)
    if client is None or not repo:
        raise NameUnknown(f"no upstream {upstream!r} or no repository here")
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
