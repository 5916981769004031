"""Config values: frozen dataclasses, built only by mirror/config/loader.py from a validated file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mirror.oci.cosign import PublicKey
from mirror.oci.models import Platform
from mirror.oci.routing import DOCKER_HUB


class Secret:
    """A credential that never prints itself (logs, reprs, error bodies, check-config)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# Redirects and token realms an upstream names are never followed into these: link-local
# (169.254.169.254 is the cloud metadata service) and the EC2 IPv6 metadata address.
DEFAULT_REDIRECT_BLOCKLIST = ("169.254.0.0/16", "fd00:ec2::254/128")


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str
    username: str | None = None
    password: Secret | None = None
    aliases: tuple[str, ...] = ()
    max_concurrent_fetches: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    redirect_blocklist: tuple[str, ...] = DEFAULT_REDIRECT_BLOCKLIST
    # None: loopback targets only when the upstream itself is on loopback.
    redirect_to_loopback: bool | None = None

    @property
    def is_docker_hub(self) -> bool:
        return self.name == DOCKER_HUB


@dataclass(frozen=True)
class ObjectStoreConfig:
    url: str
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: Secret | None = None
    allow_http: bool = True
    max_age: float | None = None  # seconds; None keeps cold objects forever
    upload_concurrency: int = 4
    # Longest a client's request waits for the cold tier to say whether it holds something;
    # past it the upstream is asked and the cold tier is skipped for a while (store/tiered.py).
    lookup_timeout: float = 1.0


@dataclass(frozen=True)
class CacheConfig:
    dir: Path = Path("./data")
    max_size: int = 20 * 1024**3
    tag_ttl: float = 300.0
    tags_list_ttl: float = 30.0
    max_stale: float | None = None  # None: serve a stale tag for as long as upstream is down
    keep_deleted_tags: bool = False
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    manifest_memory: int = 64 * 1024 * 1024
    # Blobs of at least this many bytes are written with O_DIRECT (store/temp.py says why);
    # None: every blob through the page cache.
    direct_io: int | None = 16 * 1024 * 1024
    object_store: ObjectStoreConfig | None = None


@dataclass(frozen=True)
class PrefetchConfig:
    enabled: bool = True
    parallel: int = 4
    # Children of an index fetched when the index is served. Empty: none; the client's next
    # request (its platform's manifest) names the one to prefetch.
    platforms: tuple[Platform, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"  # text | json
    audit: str | None = None  # "-" for stdout, or a file path; None disables


@dataclass(frozen=True)
class TlsConfig:
    """TLS on the listen address; `client_ca` turns on mTLS (clients must present a cert)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class AccessRule:
    """One access rule (mirror/access.py evaluates them). Patterns are globs: `*` stays within
    one path component, `**` crosses them. Users: names from htpasswd, `*` (any authenticated
    user) or `anonymous`; empty means everyone."""

    action: Literal["allow", "deny"]
    users: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ("*",)
    repositories: tuple[str, ...] = ("**",)


@dataclass(frozen=True)
class TokenConfig:
    """Short-lived Bearer tokens (Docker token auth) issued by the mirror itself at /auth/token."""

    ttl: float = 300.0
    realm: str | None = None  # absolute token URL; default: derived from the request's Host
    # The signing key (key_file or key_env): the same on every replica and across restarts.
    # None: one key per start, shared by a supervisor's workers (mirror/http/supervisor.py).
    key: Secret | None = None
    key_source: str | None = None  # where the key came from, for check-config (never the key)


@dataclass(frozen=True)
class AuthConfig:
    htpasswd: Path | None = None  # bcrypt entries only; None: everyone is anonymous
    realm: str = "mirror"
    rules: tuple[AccessRule, ...] = (AccessRule("allow", users=("*",)),)
    policy: Literal["first-match", "deny-overrides"] = "first-match"
    default: Literal["allow", "deny"] = "deny"  # when no rule matches
    protect_metrics: bool = True
    protect_status: bool = True
    token: TokenConfig | None = None


@dataclass(frozen=True)
class RateLimitConfig:
    rate: float  # requests per second per client address, refilled continuously
    burst: int


@dataclass(frozen=True)
class LimitsConfig:
    max_header_size: int = 8190  # one request line or header field, in bytes
    max_headers: int = 100
    max_connections: int | None = 1024  # None (0 in YAML): unlimited
    client_timeout: float = 60.0  # to receive a complete request head (and TLS handshake)
    rate_limit: RateLimitConfig | None = None
    send_timeout: float = 60.0  # a response whose client takes no bytes for this long is cut
    max_connections_per_client: int | None = 256  # per client address; None (0): unlimited


@dataclass(frozen=True)
class ServerConfig:
    """How the listen address is served. workers > 1: that many processes share the port
    (SO_REUSEPORT) and the cache directory, with one upstream download per blob across all of
    them (mirror/http/supervisor.py, mirror/store/xprocess.py)."""

    workers: int = 1


MAX_WORKERS = 64


@dataclass(frozen=True)
class WarmConfig:
    """Images the server keeps cached: seeded at start and every `interval` (mirror/warm.py).
    Unchanged tags cost one HEAD each, which Docker Hub does not count as a pull."""

    images: tuple[str, ...] = ()  # references as users write them; tag globs/ranges allowed
    interval: float = 3600.0
    platforms: tuple[str, ...] = ()  # empty: every platform
    with_referrers: bool = False


@dataclass(frozen=True)
class SignatureRule:
    """One `signatures` rule (mirror/pull/signatures.py applies them): images of matching
    upstreams and repositories are served only with a valid cosign signature by one of `keys`
    (mode enforce), or served and counted when they have none (mode warn). Globs as in
    auth.rules. `name` labels metrics and messages; default `signatures[<index>]`."""

    name: str
    keys: tuple[PublicKey, ...]
    upstreams: tuple[str, ...] = ("*",)
    repositories: tuple[str, ...] = ("**",)
    mode: Literal["enforce", "warn"] = "enforce"

    @property
    def fingerprint(self) -> str:
        """What a cached verdict depends on: the keys (by content, so replacing a key file
        re-evaluates). Globs and mode only decide which rule applies and what a verdict does."""
        return ",".join(sorted(k.fingerprint for k in self.keys))


@dataclass(frozen=True)
class ClusterConfig:
    """Several mirrors acting as one cache (mirror/fetch/peers.py). `peers` are base URLs, or
    `dns` is one URL whose host name resolves (A/AAAA, re-read every `resolve_interval`) to the
    peers' addresses, as a Kubernetes headless Service gives. `secret` goes with every peer
    request; a node answers peer requests only with it."""

    self_url: str
    secret: Secret
    peers: tuple[str, ...] = ()
    dns: str | None = None
    peer_timeout: float = 3.0  # connect, and longest silence from a peer, before it is skipped
    down_for: float = 30.0  # a peer that failed is not asked again for this long
    resolve_interval: float = 5.0
    secret_source: str = ""  # where the secret came from, for check-config (never the value)


@dataclass(frozen=True)
class Config:
    listen_host: str = "0.0.0.0"
    listen_port: int = 5000
    default_upstream: str | None = DOCKER_HUB
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    cache: CacheConfig = field(default_factory=CacheConfig)
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    offline: bool = False
    finish_abandoned_fetches: bool = True
    tls: TlsConfig | None = None
    auth: AuthConfig | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    warm: WarmConfig = field(default_factory=WarmConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    signatures: tuple[SignatureRule, ...] = ()
    cluster: ClusterConfig | None = None
    source: str = "<default>"

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    def alias_table(self) -> dict[str, str]:
        """Every name a client may use for a registry (lowercase) -> its upstream's name."""
        table: dict[str, str] = {}
        for up in self.upstreams.values():
            table[up.name.lower()] = up.name
            for alias in up.aliases:
                table[alias.lower()] = up.name
        return table
