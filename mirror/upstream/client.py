"""One HTTP client per upstream registry: auth, redirects, retries, timeouts, rate limits.

The client returns open aiohttp responses for blobs (the caller streams and releases them) and
whole bodies for the small documents (manifests, tag lists, referrers)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from mirror.config import UpstreamConfig
from mirror.observe.metrics import Metrics
from mirror.oci.errors import (
    TooManyRequests,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamUnavailable,
)
from mirror.oci.models import MANIFEST_TYPES, MAX_MANIFEST_SIZE
from mirror.upstream.auth import Challenge, TokenCache, TokenKey, parse_challenges, pull_scope
from mirror.upstream.redirects import RedirectPolicy

log = logging.getLogger("mirror.upstream")

Kind = Literal["manifest", "blob", "tags", "referrers", "token"]
MAX_REDIRECTS = 5
CONNECT_RETRIES = 2
MAX_DOCUMENT = MAX_MANIFEST_SIZE
DEFAULT_BACKOFF = 60.0


@dataclass(frozen=True, slots=True)
class Document:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def retry_after(value: str | None, now: float) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return DEFAULT_BACKOFF
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return DEFAULT_BACKOFF


def parse_ratelimit(value: str | None) -> int | None:
    """Docker Hub sends `ratelimit-remaining: 76;w=21600`."""
    if not value:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


class UpstreamClient:
    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession,
                 metrics: Metrics) -> None:
        self.config = config
        self.name = config.name
        self.base = config.url
        self._host = urlsplit(config.url).netloc
        self._session = session
        self._metrics = metrics
        self._tokens = TokenCache()
        self._redirects = RedirectPolicy.of(config)
        self._token_fetches: dict[TokenKey, asyncio.Future[str | None]] = {}
        # The last challenge seen: lets us attach credentials up front instead of paying a 401
        # round trip on every new repository.
        self._challenge: Challenge | None = None
        self.backoff_until = 0.0
        self.last_error: str | None = None
        self.last_ok: float | None = None
        # Why the upstream refuses our credentials (None: it does not), for the status page.
        self.auth_error: str | None = None

    # -- public API -------------------------------------------------------------------------

    async def get_manifest(self, repo: str, ref: str, method: str = "GET") -> Document:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        return await self._document(method, repo, f"/v2/{repo}/manifests/{ref}", headers,
                                    "manifest")

    async def get_tags(self, repo: str, query: str) -> Document:
        path = f"/v2/{repo}/tags/list" + (f"?{query}" if query else "")
        return await self._document("GET", repo, path, {}, "tags")

    async def get_referrers(self, repo: str, digest: str, query: str) -> Document:
        path = f"/v2/{repo}/referrers/{digest}" + (f"?{query}" if query else "")
        return await self._document("GET", repo, path, {"Accept": "application/vnd.oci.image.index.v1+json"},
                                    "referrers")

    async def open_blob(self, repo: str, digest: str,
                        headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """GET a blob, following CDN redirects. The caller must release the response."""
        return await self._request("GET", repo, f"/v2/{repo}/blobs/{digest}", headers or {},
                                   "blob", follow=True)

    async def head_blob(self, repo: str, digest: str) -> Document:
        return await self._document("HEAD", repo, f"/v2/{repo}/blobs/{digest}", {}, "blob")

    def status(self) -> dict[str, object]:
        return {
            "name": self.name,
            "url": self.base,
            "last_ok": self.last_ok,
            "last_error": self.last_error,
            "backoff_seconds": max(0.0, self.backoff_until - time.monotonic()),
            "auth_error": self.auth_error,
        }

    # -- internals --------------------------------------------------------------------------

    async def _document(self, method: str, repo: str, path: str, headers: dict[str, str],
                        kind: Kind) -> Document:
        resp = await self._request(method, repo, path, headers, kind, follow=True)
        try:
            if method == "HEAD":
                body = b""
            else:
                if (resp.content_length or 0) > MAX_DOCUMENT:
                    raise UpstreamRejected(f"{self.name}: {kind} larger than {MAX_DOCUMENT} bytes",
                                           resp.status)
                body = await self._read_limited(resp, MAX_DOCUMENT)
            return Document(resp.status, resp.headers, body)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._unavailable(e) from None
        finally:
            resp.release()

    @staticmethod
    async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_chunked(65536):
            total += len(chunk)
            if total > limit:
                raise UpstreamRejected("upstream document too large", resp.status)
            chunks.append(chunk)
        return b"".join(chunks)

    def _unavailable(self, exc: BaseException) -> UpstreamUnavailable:
        what = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        self.last_error = f"{what}"
        self._metrics.upstream_up.labels(self.name).set(0)
        return UpstreamUnavailable(f"upstream {self.name} unreachable: {what}")

    def _check_backoff(self) -> None:
        left = self.backoff_until - time.monotonic()
        if left > 0:
            raise TooManyRequests(f"upstream {self.name} rate-limited us; retrying in {left:.0f}s")

    def _auth_header(self, repo: str) -> str | None:
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self._basic()
        if ch.scheme == "bearer":
            tok = self._tokens.get(self._token_key(ch, repo))
            return f"Bearer {tok}" if tok else None
        return None

    def _basic(self) -> str | None:
        if not self.config.username or self.config.password is None:
            return None
        raw = f"{self.config.username}:{self.config.password.reveal()}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _token_key(self, ch: Challenge, repo: str) -> TokenKey:
        return TokenKey(ch.realm, ch.params.get("service", ""), pull_scope(repo),
                        self.config.username or "")

    async def _request(self, method: str, repo: str, path: str, headers: dict[str, str],
                       kind: Kind, follow: bool) -> aiohttp.ClientResponse:
        self._check_backoff()
        url = self.base + path
        hdrs = CIMultiDict(headers)
        auth = self._auth_header(repo)
        if auth:
            hdrs["Authorization"] = auth
        resp = await self._send(method, url, hdrs, kind)
        if resp.status == 401:
            challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
            resp.release()
            auth = await self._answer_challenge(challenges, repo)
            if auth is None:
                raise self._auth_refused(kind, repo)
            hdrs["Authorization"] = auth
            resp = await self._send(method, url, hdrs, kind)
            if resp.status == 401 and auth.startswith("Basic "):
                resp.release()  # Basic: the registry itself judged the password
                raise self._auth_refused(kind, repo)
        if auth and resp.status != 401 and resp.status < 500:
            self._auth_state(None)  # what we sent was accepted
        hops = 0
        while follow and resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
            hops += 1
            if hops > MAX_REDIRECTS:
                resp.release()
                raise UpstreamRejected(f"upstream {self.name}: too many redirects", resp.status)
            target = urljoin(str(resp.url), resp.headers["Location"])
            resp.release()
            await self._check_target(target, "a redirect", resp.status)
            # Redirect targets (CDNs with signed URLs) never see our credentials, and the
            # redirect itself is never cached: the signature expires.
            hdrs.pop("Authorization", None)
            resp = await self._send("HEAD" if method == "HEAD" else "GET", target, hdrs, kind)
        if resp.status == 429:
            wait = retry_after(resp.headers.get("Retry-After"), time.time())
            self.backoff_until = time.monotonic() + wait
            self._metrics.backoff(self.name, self.backoff_until)
            resp.release()
            raise TooManyRequests(f"upstream {self.name} answered 429; backing off {wait:.0f}s")
        return resp

    async def _check_target(self, url: str, what: str, status: int) -> None:
        refused = await self._redirects.refused(url)
        if refused is None:
            return
        self.last_error = f"{what} to {refused} refused"
        log.warning("upstream %s: %s to %s refused (upstreams.%s.redirect_blocklist / "
                    "redirect_to_loopback)", self.name, what, refused, self.name)
        raise UpstreamRejected(f"upstream {self.name} sent {what} to {refused}, an address this "
                               "mirror does not fetch from (metadata, link-local or loopback)",
                               status)

    def _auth_refused(self, kind: str, repo: str) -> UpstreamAuthFailed:
        """The upstream wants credentials and refused ours (or we have none)."""
        self.last_error = f"HTTP 401 on {kind}"
        if self.config.username:
            reason = (f"the mirror's credentials for upstream {self.name} (user "
                      f"{self.config.username}) were refused: check upstreams.{self.name}."
                      "username and its password")
        else:
            reason = (f"upstream {self.name} requires credentials and the mirror has none for "
                      f"it: set upstreams.{self.name}.username and password_env")
        self._auth_state(reason)
        return UpstreamAuthFailed(f"{reason} (while fetching a {kind} of {repo})", 401)

    def _auth_state(self, reason: str | None) -> None:
        """One log line per change, not per request: a wrong password refuses every pull."""
        if reason == self.auth_error:
            return
        if reason is not None:
            log.warning("upstream %s: %s", self.name, reason)
        else:
            log.info("upstream %s: credentials accepted again", self.name)
        self.auth_error = reason
        self._metrics.upstream_auth_failing.labels(self.name).set(0 if reason is None else 1)

    async def _send(self, method: str, url: str, headers: CIMultiDict[str],
                    kind: Kind) -> aiohttp.ClientResponse:
        attempt = 0
        while True:
            t0 = time.monotonic()
            try:
                resp = await self._session.request(method, url, headers=headers,
                                                   allow_redirects=False)
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                # Nothing reached the client yet, so a retry is invisible to it.
                self._metrics.upstream_requests.labels(self.name, kind, method, "error").inc()
                if attempt >= CONNECT_RETRIES:
                    raise self._unavailable(e) from None
                attempt += 1
                await asyncio.sleep(0.2 * attempt)
                continue
            except aiohttp.ClientError as e:
                raise self._unavailable(e) from None
            self._metrics.upstream_latency.labels(self.name, kind).observe(time.monotonic() - t0)
            self._metrics.upstream_requests.labels(self.name, kind, method, str(resp.status)).inc()
            self._metrics.upstream_up.labels(self.name).set(1)
            self.last_ok = time.time()
            remaining = parse_ratelimit(resp.headers.get("ratelimit-remaining"))
            if remaining is not None:
                self._metrics.ratelimit_remaining.labels(self.name).set(remaining)
            if resp.status >= 500:
                self.last_error = f"HTTP {resp.status} on {kind}"
            return resp

    async def _answer_challenge(self, challenges: list[Challenge], repo: str) -> str | None:
        for ch in challenges:
            if ch.scheme == "bearer" and ch.realm:
                self._challenge = ch
                return await self._bearer(ch, repo)
        for ch in challenges:
            if ch.scheme == "basic":
                self._challenge = ch
                return self._basic()
        return None

    async def _bearer(self, ch: Challenge, repo: str) -> str | None:
        key = self._token_key(ch, repo)
        # We were refused, so a token we hold for this scope was revoked or expired early.
        self._tokens.drop(key)
        pending = self._token_fetches.get(key)
        if pending is None:
            # One token request per scope however many requests were refused at once.
            pending = asyncio.ensure_future(self._fetch_token(ch, key))
            self._token_fetches[key] = pending
            pending.add_done_callback(lambda f: (self._token_fetches.pop(key, None),
                                                 f.cancelled() or f.exception()))
        token = await asyncio.shield(pending)
        return f"Bearer {token}" if token else None

    async def _fetch_token(self, ch: Challenge, key: TokenKey) -> str | None:
        params = {"scope": key.scope}
        if ch.params.get("service"):
            params["service"] = ch.params["service"]
        hdrs: dict[str, str] = {}
        basic = self._basic()
        if basic:
            hdrs["Authorization"] = basic
        realm = ch.realm
        # The realm is named by the upstream, so it may live on another host (auth.docker.io);
        # only http(s) realms, and our credentials only go there because the upstream sent us.
        if urlsplit(realm).scheme not in ("http", "https"):
            return None
        await self._check_target(realm, "a token realm", 401)
        t0 = time.monotonic()
        try:
            async with self._session.get(realm, params=params, headers=hdrs,
                                         allow_redirects=False) as resp:
                self._metrics.upstream_latency.labels(self.name, "token").observe(
                    time.monotonic() - t0)
                self._metrics.upstream_requests.labels(self.name, "token", "GET",
                                                       str(resp.status)).inc()
                if resp.status in (401, 403):
                    return None  # the caller reports the refused credentials
                if resp.status != 200:
                    self.last_error = f"HTTP {resp.status} from the token endpoint"
                    raise UpstreamRejected(f"upstream {self.name}: its token endpoint answered "
                                           f"{resp.status}", resp.status)
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise self._unavailable(e) from None
        if not isinstance(doc, dict):
            return None
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            return None
        self._tokens.put(key, token, doc.get("expires_in"))
        return token
