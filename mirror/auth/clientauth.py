"""Client authentication and access control on the listen address (config `auth`).

Who is asking: `Authorization: Basic` checked against the htpasswd file, or (with `auth.token`)
a short-lived Bearer token the mirror issued itself at /auth/token, Docker token-auth style. No
credentials, or Basic with an empty user name (containers/image sends that when it has none),
is the anonymous client. The middleware stores a logged-in user's name in `request[USER]`
(the request key "user", mirror/keys.py); anonymous requests have none.

What they may do: after routing, before the pull service is called, mirror/access.py decides.
An anonymous client that is refused gets 401 with a challenge (logging in may help); a known
user gets 403 DENIED. Either way no upstream request is made.

Always open: /healthz and /readyz (probes carry no credentials). /metrics and the status pages
need a valid user when `auth.protect_metrics` / `auth.protect_status` are on and an htpasswd
file is configured. Credentials are never logged, never echoed in error bodies, and never
forwarded: the upstream clients build their own Authorization headers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from mirror.auth.access import AccessPolicy
from mirror.auth.htpasswd import HtpasswdFile
from mirror.config import AuthConfig, Secret
from mirror.observe.record import record_of
from mirror.oci.apipath import API_VERSION_HEADER, PEER_PREFIX, parse_api_path
from mirror.oci.errors import Denied, MirrorError, TooManyRequests, Unauthorized
from mirror.oci.routing import Route

log = logging.getLogger("mirror.auth")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
TOKEN_PATH = "/auth/token"
PULL_METHODS = ("GET", "HEAD")
AUTH_RESULTS = ("ok", "anonymous", "bad_credentials", "denied", "token_issued")


@dataclass(frozen=True, slots=True)
class Identity:
    user: str | None  # None: anonymous
    valid: bool  # False: credentials were sent and are wrong (or a token expired)


ANONYMOUS = Identity(None, True)
INVALID = Identity(None, False)


class TokenIssuer:
    """Bearer tokens: `<payload>.<hmac>` with the user and expiry, signed with `key`.

    Every process that must accept a token needs the key it was signed with: the configured
    one (auth.token.key_file / key_env: all replicas, across restarts), else the one the
    supervisor made for its workers, else (one process) a key made here. Without a configured
    key a restart invalidates all tokens; clients just ask for a new one on the 401."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.time,
                 key: bytes | None = None) -> None:
        self.ttl = ttl
        self._key = key if key is not None else secrets.token_bytes(32)
        self._clock = clock

    def _sign(self, payload: bytes) -> str:
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, user: str | None) -> str:
        doc = {"sub": user or "", "exp": int(self._clock() + self.ttl), "jti": secrets.token_hex(8)}
        payload = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=")
        return f"{payload.decode()}.{self._sign(payload)}"

    def verify(self, token: str) -> Identity:
        payload, _, sig = token.strip().partition(".")
        if not sig or not hmac.compare_digest(sig, self._sign(payload.encode())):
            return INVALID
        try:
            doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            user, exp = str(doc["sub"]), float(doc["exp"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return INVALID
        if exp < self._clock():
            return INVALID
        return Identity(user or None, True)


def _basic_credentials(value: str) -> tuple[str, str] | None:
    try:
        raw = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = raw.partition(":")
    return (user, password) if sep else None


class ClientAuth:
    def __init__(self, config: AuthConfig, registry: CollectorRegistry,
                 route: Callable[[str, str | None], Route], token_key: Secret | None = None) -> None:
        """`token_key`: the supervisor's key for its workers, used when none is configured."""
        self.config = config
        self.route = route  # the app's routing: access rules apply to the upstream repository
        self.users = HtpasswdFile(config.htpasswd) if config.htpasswd is not None else None
        self.policy = AccessPolicy(config.rules, config.policy, config.default)
        self.tokens: TokenIssuer | None = None
        if config.token is not None:
            key = config.token.key or token_key
            self.tokens = TokenIssuer(config.token.ttl,
                                      key=key.reveal().encode() if key is not None else None)
        self.results = Counter("mirror_client_auth", "Client authentication and access decisions",
                               ["result"], registry=registry)

    @property
    def can_log_in(self) -> bool:
        return self.users is not None or self.tokens is not None

    def reload(self) -> None:
        if self.users is not None:
            self.users.reload()

    async def ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the password-check threads stop with the app."""
        yield
        if self.users is not None:
            self.users.close()

    # -- who is asking ---------------------------------------------------------------------

    async def _check_basic(self, value: str) -> Identity:
        creds = _basic_credentials(value)
        if creds is None:
            return INVALID
        user, password = creds
        if not user and not password:
            return ANONYMOUS
        if self.users is None:
            return ANONYMOUS  # no user database: everyone is anonymous
        try:
            ok = await self.users.check(user, password)
        except TooManyRequests:
            self.results.labels("busy").inc()
            raise
        if ok:
            return Identity(user, True)
        # A name that is not a user may be a password typed into the wrong field: not logged.
        log.warning("client auth failed for %s", f"user {user}" if user in self.users.users
                    else "an unknown user")
        return INVALID

    async def identify(self, request: web.Request) -> Identity:
        header = request.headers.get("Authorization")
        if not header:
            return ANONYMOUS
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            return await self._check_basic(value)
        if scheme.lower() == "bearer" and self.tokens is not None:
            ident = self.tokens.verify(value)
            if ident.user is not None and self.users is not None and ident.user not in self.users.users:
                return INVALID  # removed from htpasswd since the token was issued
            return ident
        return INVALID

    # -- answers ---------------------------------------------------------------------------

    def _token_realm(self, request: web.Request) -> str:
        assert self.config.token is not None
        if self.config.token.realm:
            return self.config.token.realm
        host = "".join(c for c in request.host if c not in '"\\')
        return f"{request.scheme}://{host}{TOKEN_PATH}"

    def challenge(self, request: web.Request, scope: str | None, basic: bool = False) -> str:
        realm = self.config.realm
        if self.tokens is None or basic:
            return f'Basic realm="{realm}"'
        value = f'Bearer realm="{self._token_realm(request)}",service="{realm}"'
        return value + (f',scope="{scope}"' if scope else "")

    def unauthorized(self, request: web.Request, message: str, scope: str | None = None,
                     basic: bool = False) -> web.Response:
        headers = {**API_VERSION_HEADER, "WWW-Authenticate": self.challenge(request, scope, basic)}
        return web.json_response(Unauthorized(message).body(), status=401, headers=headers)

    async def token_endpoint(self, request: web.Request) -> web.Response:
        """GET /auth/token?service=...&scope=...: Basic credentials in, a Bearer token out."""
        assert self.tokens is not None
        header = request.headers.get("Authorization", "")
        ident = await self._check_basic(header[6:]) if header[:6].lower() == "basic " else ANONYMOUS
        if not ident.valid:
            self.results.labels("bad_credentials").inc()
            return self.unauthorized(request, "invalid username or password", basic=True)
        self.results.labels("token_issued").inc()
        token = self.tokens.issue(ident.user)
        return web.json_response({
            "token": token, "access_token": token, "expires_in": int(self.tokens.ttl),
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, headers={"Cache-Control": "no-store"})

    def protected(self, path: str) -> bool:
        if self.users is None:
            return False  # nobody could log in; protecting would only lock everyone out
        if path == "/metrics":
            return self.config.protect_metrics
        return self.config.protect_status

    async def check_pull(self, request: web.Request, user: str | None) -> web.Response | None:
        """The access rules, after routing: None to go on, or the refusal to send."""
        tail = request.match_info.get("tail")
        if tail is None or request.method not in PULL_METHODS:
            return None  # /v2/ itself, or a push the handler refuses with 405
        try:
            api = parse_api_path(tail)  # bad names fail here exactly as in the handler: 4xx
            route = self.route(api.name, request.query.get("ns"))
        except MirrorError:
            if user is None and self.can_log_in:
                # Which registries are configured is nobody's business before logging in.
                return self.unauthorized(request, "authentication required")
            raise
        decision = self.policy.decide(user, route.upstream, route.repo)
        if decision.allowed:
            return None
        self.results.labels("denied").inc()
        log.info("pull of %s/%s by %s denied (%s)", route.upstream, route.repo,
                 user or "anonymous", decision.describe())
        if user is None and self.can_log_in:
            return self.unauthorized(request, "authentication required",
                                     f"repository:{route.repo}:pull")
        raise Denied(f"access to {route.upstream}/{route.repo} is denied")


CLIENT_AUTH = web.AppKey("client_auth", ClientAuth)


@web.middleware
async def client_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[CLIENT_AUTH]
    path = request.path
    if path in OPEN_PATHS or path.startswith(PEER_PREFIX):
        return await handler(request)  # a peer request carries the cluster secret instead
    if path == TOKEN_PATH and auth.tokens is not None:
        return await auth.token_endpoint(request)
    ident = await auth.identify(request)
    if not ident.valid:
        auth.results.labels("bad_credentials").inc()
        return auth.unauthorized(request, "invalid username or password",
                                 basic=not path.startswith("/v2"))
    if ident.user is not None:
        record_of(request).user = ident.user  # the audit log says who pulled
    auth.results.labels("ok" if ident.user else "anonymous").inc()
    if path == "/v2" or path.startswith("/v2/"):
        if ident.user is None and path in ("/v2", "/v2/") and auth.can_log_in:
            # The ping: clients learn the challenge here (docker login needs it to be a 401).
            return auth.unauthorized(request, "authentication required")
        refusal = await auth.check_pull(request, ident.user)
        if refusal is not None:
            return refusal
    elif ident.user is None and auth.protected(path):
        return auth.unauthorized(request, "authentication required", basic=True)
    return await handler(request)
