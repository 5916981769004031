"""Fetching a blob from its owner: the asking node streams the owner's response into its own
temp file (hashed as it lands, verified by the commit like upstream bytes). An owner that is
down, refuses or stalls for cluster.peer_timeout is marked down and the next in hash order is
asked, resuming with Range from what already arrived; when this node comes next, it fetches
itself (the caller goes on to the upstream, which resumes from the same bytes)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import aiohttp

from mirror.fetch.budget import AheadBudget
from mirror.fetch.coalesce import BlobFetch
from mirror.fetch.download import WriteBehind, body_into
from mirror.fetch.peers import PeerSet
from mirror.observe.metrics import Metrics
from mirror.oci.apipath import PEER_PREFIX
from mirror.oci.errors import BlobUnknown, DiskFull, ManifestUnknown, VerificationError
from mirror.oci.models import Digest
from mirror.store.disk import DiskTier

log = logging.getLogger("mirror.fetch.peer_fetch")
CHECKED_AT_HEADER = "X-Mirror-Checked-At"  # when the owner's upstream last confirmed a tag
MAX_DOCUMENT = 4 * 1024 * 1024  # a manifest, as the distribution spec bounds it
BUSY_ROUNDS = 20  # peer_timeouts an owner that is alive (its /healthz answers) may take to start


@dataclass(frozen=True, slots=True)
class PeerDocument:
    """A manifest as its owner answered it: the caller verifies `body` against `digest`."""

    body: bytes
    content_type: str | None
    digest: str | None
    checked_at: float | None


class PeerFailed(Exception):
    """This peer cannot serve the blob now: ask the next one."""


class PeerClient:
    def __init__(self, peers: PeerSet, session: aiohttp.ClientSession, metrics: Metrics,
                 tier: DiskTier, direct_io: int | None = None,
                 budget: AheadBudget | None = None) -> None:
        self.peers = peers
        self.direct_io = direct_io  # blobs this big are written O_DIRECT (store/temp.py)
        self.budget = budget if budget is not None else AheadBudget()
        self.session = session
        self.metrics = metrics
        self.tier = tier
        t = peers.config.peer_timeout
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)
        # A blob's answer starts once the owner's own source answered (cold tier, or upstream
        # headers after a free slot): the wait for it is bounded by liveness probes instead.
        self._connect_only = aiohttp.ClientTimeout(total=None, sock_connect=t)
        self._probe = aiohttp.ClientTimeout(total=t)

    async def fill(self, upstream: str, repo: str, digest: Digest, fetch: BlobFetch,
                   background: Callable[[], Executor] | None) -> bool:
        """True when every byte came from peers (the commit still verifies them); False when
        this node is the one to fetch (the owner, or every peer before it is down)."""
        for peer in self.peers.owners(str(digest)):
            if peer == self.peers.self_url:
                return False
            try:
                await self._from(peer, upstream, repo, digest, fetch, background)
            # Not a bare OSError: this node's own disk (ENOSPC, EIO while writing the temp file)
            # is no fault of the peer's; the fetcher handles it as it would for an upstream.
            except (PeerFailed, aiohttp.ClientError, TimeoutError) as e:
                self.metrics.peer_requests.labels("asked", "failed").inc()
                # A broken body says how far it got; other client errors are named by type.
                said = isinstance(e, (PeerFailed, aiohttp.ClientPayloadError, TimeoutError))
                why = (str(e) if said else "") or type(e).__name__
                self.peers.mark_down(peer, why)
                continue
            self.metrics.peer_requests.labels("asked", "ok").inc()
            self.peers.mark_up(peer)
            return True
        return False

    async def document(self, key: str, upstream: str, repo: str,
                       ref: str) -> PeerDocument | None:
        """A manifest (by digest or tag) from the owner of `key`; None when this node is the
        one to ask the upstream. ManifestUnknown when the owner's upstream has none."""
        for peer in self.peers.owners(key):
            if peer == self.peers.self_url:
                return None
            url = f"{peer}{PEER_PREFIX}manifests/{upstream}/{ref}"
            try:
                async with self.session.get(url, params={"repo": repo},
                                            headers=self.peers.headers(), timeout=self._timeout,
                                            allow_redirects=False) as resp:
                    if await _unknown(resp, "MANIFEST_UNKNOWN"):
                        self.metrics.peer_requests.labels("asked", "missing").inc()
                        raise ManifestUnknown(f"manifest {repo}:{ref} not found upstream "
                                              f"(asked by peer {peer})")
                    if resp.status != 200 or (resp.content_length or 0) > MAX_DOCUMENT:
                        raise PeerFailed(f"answered {resp.status}")
                    body = await _read_bounded(resp, MAX_DOCUMENT)
                    checked = resp.headers.get(CHECKED_AT_HEADER)
                    doc = PeerDocument(body, resp.headers.get("Content-Type"),
                                       resp.headers.get("Docker-Content-Digest"),
                                       float(checked) if checked else None)
            except (PeerFailed, aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                self.metrics.peer_requests.labels("asked", "failed").inc()
                self.peers.mark_down(peer, str(e) if isinstance(e, PeerFailed)
                                     else type(e).__name__)
                continue
            self.metrics.peer_requests.labels("asked", "ok").inc()
            self.peers.mark_up(peer)
            return doc
        return None

    async def _from(self, peer: str, upstream: str, repo: str, digest: Digest,
                    fetch: BlobFetch, background: Callable[[], Executor] | None) -> None:
        temp = fetch.temp
        headers = self.peers.headers()
        if temp.written:
            headers["Range"] = f"bytes={temp.written}-"
        url = f"{peer}{PEER_PREFIX}blobs/{upstream}/{digest}"
        resp = await self._open(peer, url, {"repo": repo}, headers)
        async with resp:
            if await _unknown(resp, "BLOB_UNKNOWN"):
                self.metrics.peer_requests.labels("asked", "missing").inc()
                raise BlobUnknown(f"blob {digest} not found upstream (asked by peer {peer})",
                                  detail={"digest": str(digest)})
            if resp.status != (206 if temp.written else 200):
                raise PeerFailed(f"answered {resp.status}")
            if not fetch.started.is_set():
                size = resp.content_length
                if size is None:
                    raise PeerFailed("sent no Content-Length")
                if temp.expected_size is not None and size != temp.expected_size:
                    raise VerificationError(f"peer {peer} size {size} for {digest} differs "
                                            f"from the manifest's {temp.expected_size}")
                if not self.tier.has_room(size):
                    raise DiskFull(f"no room for {size} bytes of {digest} in {self.tier.root}")
                fetch.set_size(size)
            await self._body(resp, fetch, background)

    async def _open(self, peer: str, url: str, params: dict[str, str],
                    headers: dict[str, str]) -> aiohttp.ClientResponse:
        """The owner's response headers. While they do not come, the owner is asked every
        peer_timeout whether it is alive (/healthz): a busy owner is waited for (it fetches
        for us), a silent one is given up on after two peer_timeouts."""
        t = self.peers.config.peer_timeout
        req = asyncio.ensure_future(self.session.get(
            url, params=params, headers=headers, timeout=self._connect_only,
            allow_redirects=False))
        taken = False
        try:
            for _ in range(BUSY_ROUNDS):
                done, _pending = await asyncio.wait({req}, timeout=t)
                alive = bool(done) or await self._alive(peer)
                if req.done():  # answered, perhaps while /healthz was asked: use the answer
                    taken = True
                    return req.result()
                if not alive:
                    raise PeerFailed(f"no answer within {t:g}s and /healthz silent")
            raise PeerFailed(f"busy: no answer within {BUSY_ROUNDS * t:g}s")
        finally:
            if not req.done():
                req.cancel()
            elif not taken and not req.cancelled() and req.exception() is None:
                req.result().close()  # an answer nobody reads: free its connection

    async def _alive(self, peer: str) -> bool:
        try:
            async with self.session.get(f"{peer}/healthz", timeout=self._probe) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _body(self, resp: aiohttp.ClientResponse, fetch: BlobFetch,
                    background: Callable[[], Executor] | None) -> None:
        writer = WriteBehind(fetch, background, self.direct_io, self.budget)
        try:
            await body_into(resp, fetch, writer, self.metrics.peer_bytes.labels("received").inc,
                            "a peer", stall=self.peers.config.peer_timeout)
        finally:
            await writer.close()


async def _unknown(resp: aiohttp.ClientResponse, code: str) -> bool:
    """A 404 the owner's pull service wrote (its OCI error `code`: the upstream has no such
    content), not one from a route or an upstream the owner lacks (another version, a config
    being rolled out, an offline owner): those mean "ask the next source"."""
    if resp.status != 404 or (resp.content_length or 0) > 65536:
        return False
    try:
        errors = json.loads(await _read_bounded(resp, 65536)).get("errors") or []
    except (ValueError, AttributeError, PeerFailed):
        return False
    return any(isinstance(e, dict) and e.get("code") == code for e in errors)


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, at most `limit` bytes (a single read returns only what is buffered)."""
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise PeerFailed(f"answer longer than {limit} bytes")
    return bytes(body)
