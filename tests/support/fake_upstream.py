"""FakeRegistry: a small in-memory registry for behaviour a real distribution cannot show:
token auth with expiry, Basic auth, blob redirects to a "CDN" on another port, Docker Hub
rate-limit headers and the referrers API.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from aiohttp import web

from ._loop import LoopThread
from .images import (
    AMD64,
    MT_DOCKER_LIST,
    MT_OCI_INDEX,
    BlobRef,
    Layer,
    Platform,
    PushedImage,
    build_image,
    index_bytes,
    sha256_digest,
)
from .recording import RecordedRequest, Recorder, classify

_ROUTE = re.compile(r"^/v2/(?P<name>.+?)/(?P<ep>manifests|blobs|tags|referrers)/(?P<ref>.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
API_HEADERS = {"Docker-Distribution-Api-Version": "registry/2.0"}
RATE_WINDOW = "w=21600"  # Docker Hub's 6 h window, as sent in its headers

AuthMode = Literal["none", "bearer", "basic"]


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return web.Response(
        status=status,
        text=body,
        content_type="application/json",
        headers={**API_HEADERS, **(headers or {})},
    )


class FakeRegistry(Recorder):
    """In-memory registry on 127.0.0.1 (own thread and loop, like RecordingProxy).

    auth="bearer": /v2/ answers 401 with a Docker-style challenge whose realm is `token_url`;
      tokens live `token_ttl` seconds and must carry `repository:<repo>:pull`. If `username`
      is set, the token endpoint itself wants those Basic credentials.
    auth="basic": every /v2/ request needs Basic `username`:`password`.
    redirect_blobs: blob GETs get a 307 to `cdn_url` (another port, same thread); requests
      reaching the CDN with an Authorization header are kept in `cdn_auth_leaks`.
    rate_limit: send ratelimit-limit/-remaining on manifest responses; each manifest GET
      uses one unit (HEAD is free, as on Docker Hub); at 0, manifest GETs get 429.
    referrers: serve the OCI referrers API (else it answers 404, like older registries).
    tags_page: tag lists are paginated (n/last, Link rel="next") at this many tags even when
      the client sends no `n`, as ghcr.io and Docker Hub do.
    Blobs are global: any repository name serves any added blob. Read-only (no push API).
    """

    def __init__(
        self,
        *,
        auth: AuthMode = "none",
        username: str | None = None,
        password: str | None = None,
        token_ttl: int = 300,
        service: str = "fake-registry",
        redirect_blobs: bool = False,
        rate_limit: int | None = None,
        referrers: bool = False,
        tags_page: int | None = None,
    ) -> None:
        super().__init__()
        if auth == "basic" and not (username and password):
            raise ValueError("auth='basic' needs username and password")
        self.auth, self.username, self.password = auth, username, password
        self.token_ttl, self.service = token_ttl, service
        self.redirect_blobs, self.referrers = redirect_blobs, referrers
        self.tags_page = tags_page
        self.rate_limit = rate_limit
        self.ratelimit_remaining = rate_limit or 0
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, dict[str, tuple[bytes, str]]] = {}  # repo -> digest -> (body, mt)
        self.tags: dict[str, dict[str, str]] = {}  # repo -> tag -> digest
        self.tokens: dict[str, tuple[frozenset[str], float]] = {}  # token -> (scopes, expiry)
        self.tokens_issued = 0
        self.cdn_auth_leaks: list[RecordedRequest] = []
        self._data_lock = threading.Lock()
        self._thread = LoopThread("fake-registry")
        self.port, self.cdn_port = self._thread.call(self._start())

    async def _start(self) -> tuple[int, int]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        cdn = web.Application()
        cdn.router.add_route("*", "/{tail:.*}", self._handle_cdn)
        return await self._thread.serve(app), await self._thread.serve(cdn)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn_port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    # -- content -------------------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        with self._data_lock:
            self.blobs[digest] = data
        return digest

    def add_manifest(self, repo: str, tag: str | None, data: bytes, media_type: str,
                     digest: str | None = None) -> str:
        """Store a manifest (by digest, and under `tag` if given: re-adding moves the tag).
        `digest`: another than the body's, as registries name a signed schema 1 manifest
        (by its payload without the signatures)."""
        digest = digest or sha256_digest(data)
        with self._data_lock:
            self.manifests.setdefault(repo, {})[digest] = (data, media_type)
            tags = self.tags.setdefault(repo, {})
            if tag is not None:
                tags[tag] = digest
        return digest

    def remove_tag(self, repo: str, tag: str) -> None:
        with self._data_lock:
            self.tags.get(repo, {}).pop(tag, None)

    def add_image(
        self,
        repo: str,
        tag: str | None,
        layers: Sequence[Layer],
        platform: Platform = AMD64,
        *,
        oci: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> PushedImage:
        """Build an image (see images.build_image) and store its blobs and manifest."""
        img = build_image(layers, platform, oci=oci, labels=labels)
        self.add_blob(img.config)
        for layer in layers:
            self.add_blob(layer.read_bytes())
        digest = self.add_manifest(repo, tag, img.manifest, img.media_type)
        return PushedImage(
            repo, tag, digest, img.media_type, len(img.manifest), img.manifest,
            img.config_ref, img.layer_refs, (), platform,
        )  # fmt: skip

    def add_index(
        self, repo: str, tag: str, children: Sequence[PushedImage], *, oci: bool = False
    ) -> PushedImage:
        refs = [(BlobRef(c.digest, c.size, c.media_type), c.platform or AMD64) for c in children]
        body = index_bytes(refs, oci=oci)
        mt = MT_OCI_INDEX if oci else MT_DOCKER_LIST
        digest = self.add_manifest(repo, tag, body, mt)
        return PushedImage(repo, tag, digest, mt, len(body), body, children=tuple(children))

    # -- auth ----------------------------------------------------------------------------

    def issue_token(self, scopes: Sequence[str], ttl: float | None = None) -> str:
        token = secrets.token_urlsafe(24)
        expiry = time.monotonic() + (self.token_ttl if ttl is None else ttl)
        with self._data_lock:
            self.tokens[token] = (frozenset(scopes), expiry)
            self.tokens_issued += 1
        return token

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid (to test re-authentication)."""
        with self._data_lock:
            self.tokens.clear()

    def _basic_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self.username or "") and secrets.compare_digest(
            pw, self.password or ""
        )

    def _bearer_ok(self, header: str | None, repo: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        with self._data_lock:
            entry = self.tokens.get(header[7:].strip())
        if entry is None or entry[1] < time.monotonic():
            return False
        scopes, _ = entry
        if repo is None:  # /v2/ ping: any valid token
            return True
        for s in scopes:
            kind, _, rest = s.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name == repo and {"pull", "*"} & set(actions.split(",")):
                return True
        return False

    def _challenge(self, repo: str | None) -> web.Response:
        if self.auth == "basic":
            value = f'Basic realm="{self.service}"'
        else:
            value = f'Bearer realm="{self.token_url}",service="{self.service}"'
            if repo is not None:
                value += f',scope="repository:{repo}:pull"'
        return _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": value})

    async def _token(self, request: web.Request) -> web.Response:
        if self.username and not self._basic_ok(request.headers.get("Authorization")):
            return web.json_response(
                {"details": "incorrect username or password"},
                status=401,
                headers={"WWW-Authenticate": f'Basic realm="{self.service}"'},
            )
        if request.query.get("service", self.service) != self.service:
            return web.json_response({"details": "unknown service"}, status=400)
        token = self.issue_token(request.query.getall("scope", []))
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.token_ttl,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )

    # -- serving -------------------------------------------------------------------------

    def _new_record(self, request: web.Request, kind: str) -> RecordedRequest:
        return self._record(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=tuple(request.headers.items()),
                kind=kind,
            )
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = "token" if request.path == "/token" else classify(request.path)
        rec = self._new_record(request, kind)
        try:
            resp = await self._route(request)
            rec.status = resp.status
            rec.bytes_sent = 0 if request.method == "HEAD" else (resp.content_length or 0)
            return resp
        finally:
            rec.done = True

    async def _route(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            return await self._token(request)
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "this fake registry is read-only")
        m = _ROUTE.match(request.path)
        if request.path not in ("/v2", "/v2/") and m is None:
            return _error(404, "NOT_FOUND", "no such endpoint")
        repo = m.group("name") if m else None
        auth = request.headers.get("Authorization")
        if self.auth == "basic" and not self._basic_ok(auth):
            return self._challenge(repo)
        if self.auth == "bearer" and not self._bearer_ok(auth, repo):
            return self._challenge(repo)
        if m is None:
            return web.json_response({}, headers=API_HEADERS)
        ep, ref = m.group("ep"), m.group("ref")
        assert repo is not None
        if ep == "manifests":
            return self._manifest(request, repo, ref)
        if ep == "blobs":
            return self._blob(request, ref, redirect=self.redirect_blobs)
        if ep == "tags" and ref == "list":
            return self._tags(request, repo)
        if ep == "referrers":
            return self._referrers(repo, ref)
        return _error(404, "NOT_FOUND", "no such endpoint")

    def _manifest(self, request: web.Request, repo: str, ref: str) -> web.Response:
        extra: dict[str, str] = {}
        if self.rate_limit is not None:
            with self._data_lock:
                if request.method == "GET" and self.ratelimit_remaining > 0:
                    self.ratelimit_remaining -= 1
                    exhausted = False
                else:
                    exhausted = request.method == "GET"
                remaining = self.ratelimit_remaining
            extra = {
                "ratelimit-limit": f"{self.rate_limit};{RATE_WINDOW}",
                "ratelimit-remaining": f"{remaining};{RATE_WINDOW}",
            }
            if exhausted:
                return _error(429, "TOOMANYREQUESTS", "pull rate limit reached", extra)
        with self._data_lock:
            if repo not in self.manifests:
                return _error(404, "NAME_UNKNOWN", f"repository {repo} not known")
            digest = ref if ref.startswith("sha256:") else self.tags[repo].get(ref, "")
            found = self.manifests[repo].get(digest)
        if found is None:
            return _error(404, "MANIFEST_UNKNOWN", f"manifest {ref} unknown", extra)
        body, media_type = found
        headers = {
            **API_HEADERS,
            **extra,
            "Docker-Content-Digest": digest,
            "Content-Type": media_type,
            "ETag": f'"{digest}"',
        }
        return _body_response(request, body, headers)

    def _blob(self, request: web.Request, digest: str, *, redirect: bool) -> web.Response:
        with self._data_lock:
            data = self.blobs.get(digest)
        if data is None:
            return _error(404, "BLOB_UNKNOWN", f"blob {digest} unknown")
        if redirect and request.method == "GET":
            # Like Docker Hub: a short-lived signed-looking URL on another host:port.
            location = f"{self.cdn_url}/cdn/blobs/{digest}?expires={int(time.time()) + 600}&sig=x"
            return web.Response(status=307, headers={**API_HEADERS, "Location": location})
        headers = {
            **API_HEADERS,
            "Docker-Content-Digest": digest,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"',
        }
        rng = request.headers.get("Range")
        m = _RANGE.match(rng.strip()) if rng else None
        if m and (m.group(1) or m.group(2)):
            size = len(data)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                return _error(416, "RANGE_INVALID", rng or "", {"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return _body_response(request, data[start : end + 1], headers, status=206)
        return _body_response(request, data, headers)

    def _tags(self, request: web.Request, repo: str) -> web.Response:
        with self._data_lock:
            if repo not in self.tags:
                return _error(404, "NAME_UNKNOWN", f"repository {repo} not known")
            tags = sorted(self.tags[repo])
        last = request.query.get("last")
        if last:
            tags = [t for t in tags if t > last]
        headers = dict(API_HEADERS)
        # Like ghcr.io and Docker Hub, `tags_page` pages even a client that did not ask for it.
        n = request.query.get("n") or (str(self.tags_page) if self.tags_page else None)
        if n and n.isdigit() and len(tags) > int(n):
            tags = tags[: int(n)]
            if tags:  # n=0: an empty list and no Link (the spec)
                headers["Link"] = f'</v2/{repo}/tags/list?n={n}&last={tags[-1]}>; rel="next"'
        return web.json_response({"name": repo, "tags": tags}, headers=headers)

    def _referrers(self, repo: str, digest: str) -> web.Response:
        if not self.referrers:
            return _error(404, "NOT_FOUND", "referrers API not supported")
        found = []
        with self._data_lock:
            stored = list(self.manifests.get(repo, {}).items())
        for d, (body, mt) in stored:
            doc = json.loads(body)
            if (doc.get("subject") or {}).get("digest") == digest:
                desc = {"mediaType": mt, "digest": d, "size": len(body)}
                art = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
                if art:
                    desc["artifactType"] = art
                found.append(desc)
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": found}
        return web.Response(
            body=json.dumps(index).encode(), headers={**API_HEADERS, "Content-Type": MT_OCI_INDEX}
        )

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        rec = self._new_record(request, "cdn")
        try:
            if "Authorization" in request.headers:
                # Registry credentials must never be sent to the blob storage host.
                with self._data_lock:
                    self.cdn_auth_leaks.append(rec)
            m = re.match(r"^/cdn/blobs/(sha256:[0-9a-f]{64})$", request.path)
            if m is None or request.method not in ("GET", "HEAD"):
                resp = web.Response(status=404)
            else:
                resp = self._blob(request, m.group(1), redirect=False)
            rec.status = resp.status
            rec.bytes_sent = 0 if request.method == "HEAD" else (resp.content_length or 0)
            return resp
        finally:
            rec.done = True

    def stop(self) -> None:
        self._thread.close()

    def __enter__(self) -> FakeRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _body_response(
    request: web.Request, body: bytes, headers: Mapping[str, str], status: int = 200
) -> web.Response:
    """GET gets the body; HEAD gets the same headers, Content-Length included, and no body."""
    # aiohttp sends no body for HEAD but keeps the Content-Length computed from `body`.
    return web.Response(status=status, body=body, headers=headers)
