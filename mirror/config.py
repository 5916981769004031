"""Config: YAML in, frozen dataclasses out. Validated once, here; every problem names its key.

`load_config(path, env)` never raises anything but ConfigError, whose `problems` list holds one
line per problem, so `mirror check-config` can print them all at once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from mirror.errors import ConfigError

DOCKER_HUB = "docker.io"
# Names people write for Docker Hub; all of them mean the `docker.io` upstream entry.
DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_REGISTRY_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$")


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
    object_store: ObjectStoreConfig | None = None


@dataclass(frozen=True)
class PrefetchConfig:
    enabled: bool = True
    parallel: int = 4


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


@dataclass(frozen=True)
class ServerConfig:
    """How the listen address is served. workers > 1: that many processes share the port
    (SO_REUSEPORT) and the cache directory, with one upstream download per blob across all of
    them (mirror/workers.py, mirror/cache/xprocess.py)."""

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
    source: str = "<default>"

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size like 20GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size like 20GiB or 500MB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    text = str(value).strip()
    total, pos = 0.0, 0
    for m in re.finditer(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|)", text):
        if m.start() != pos or (not m.group(2) and m.end() != len(text)):
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m, got {value!r}")
    return total


class _Reader:
    """Walks the YAML tree collecting problems instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str], base: Path) -> None:
        self.problems: list[str] = []
        self.env = env
        self.base = base

    def problem(self, key: str, msg: str) -> None:
        self.problems.append(f"{key}: {msg}")

    def section(self, raw: Any, key: str, known: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(key, f"must be a mapping, got {type(raw).__name__}")
            return {}
        for k in raw:
            if str(k) not in known:
                self.problem(f"{key}.{k}" if key else str(k), "unknown key")
        return raw

    def get(self, raw: dict[str, Any], key: str, path: str, kind: type, default: Any) -> Any:
        if key not in raw or raw[key] is None:
            return default
        value = raw[key]
        if kind is bool and not isinstance(value, bool):
            self.problem(path, f"must be true or false, got {value!r}")
            return default
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.problem(path, f"must be an integer, got {value!r}")
            return default
        if kind is str and not isinstance(value, str):
            self.problem(path, f"must be a string, got {value!r}")
            return default
        return value

    def convert(self, raw: dict[str, Any], key: str, path: str, fn: Any, default: Any) -> Any:
        if key not in raw or raw[key] is None:
            return default
        try:
            return fn(raw[key])
        except ValueError as e:
            self.problem(path, str(e))
            return default

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.base / p


def _url(reader: _Reader, path: str, value: Any, schemes: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or not value:
        reader.problem(path, "is required (a URL)")
        return None
    u = urlsplit(value)
    if u.scheme not in schemes or not (u.netloc or u.scheme == "file"):
        reader.problem(path, f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return None
    if u.username or u.password:
        reader.problem(path, "must not contain credentials; use username and password_env")
        return None
    return value.rstrip("/")


def _password(reader: _Reader, raw: dict[str, Any], path: str) -> Secret | None:
    env_name = reader.get(raw, "password_env", f"{path}.password_env", str, None)
    file_name = reader.get(raw, "password_file", f"{path}.password_file", str, None)
    if "password" in raw:
        reader.problem(f"{path}.password", "secrets are not read from the config file; "
                       "use password_env or password_file")
    if env_name and file_name:
        reader.problem(path, "give password_env or password_file, not both")
        return None
    if env_name:
        if env_name not in reader.env:
            reader.problem(f"{path}.password_env", f"environment variable {env_name} is not set")
            return None
        return Secret(reader.env[env_name])
    if file_name:
        try:
            return Secret(reader.path(file_name).read_text().strip())
        except OSError as e:
            reader.problem(f"{path}.password_file", f"cannot read: {e.strerror}")
    return None


def _upstream(reader: _Reader, name: str, raw: Any) -> UpstreamConfig | None:
    path = f"upstreams.{name}"
    if not _REGISTRY_NAME_RE.match(name):
        reader.problem(path, "registry name must be a host name, e.g. ghcr.io or registry:5000")
        return None
    if isinstance(raw, str):
        raw = {"url": raw}
    sec = reader.section(raw, path, {"url", "username", "password_env", "password_file",
                                     "password", "aliases", "max_concurrent_fetches",
                                     "connect_timeout", "read_timeout"})
    url = _url(reader, f"{path}.url", sec.get("url"), ("http", "https"))
    username = reader.get(sec, "username", f"{path}.username", str, None)
    password = _password(reader, sec, path)
    if password is not None and not username:
        reader.problem(f"{path}.username", "is required when a password is given")
    aliases_raw = sec.get("aliases") or []
    if not isinstance(aliases_raw, list) or not all(isinstance(a, str) for a in aliases_raw):
        reader.problem(f"{path}.aliases", "must be a list of registry names")
        aliases_raw = []
    aliases = tuple(aliases_raw) + (DOCKER_HUB_ALIASES if name == DOCKER_HUB else ())
    limit = reader.get(sec, "max_concurrent_fetches", f"{path}.max_concurrent_fetches", int, 8)
    if limit < 1:
        reader.problem(f"{path}.max_concurrent_fetches", "must be at least 1")
    connect = reader.convert(sec, "connect_timeout", f"{path}.connect_timeout", parse_duration, 10.0)
    read = reader.convert(sec, "read_timeout", f"{path}.read_timeout", parse_duration, 60.0)
    if url is None:
        return None
    return UpstreamConfig(name, url, username, password, aliases, max(limit, 1), connect, read)


def _object_store(reader: _Reader, raw: Any) -> ObjectStoreConfig | None:
    if raw is None:
        return None
    path = "cache.object_store"
    sec = reader.section(raw, path, {"url", "endpoint", "region", "access_key_id",
                                     "secret_access_key_env", "allow_http", "max_age",
                                     "upload_concurrency"})
    url = _url(reader, f"{path}.url", sec.get("url"), ("s3", "gs", "az", "file", "memory"))
    endpoint = sec.get("endpoint")
    if endpoint is not None:
        endpoint = _url(reader, f"{path}.endpoint", endpoint, ("http", "https"))
    secret_env = reader.get(sec, "secret_access_key_env", f"{path}.secret_access_key_env", str, None)
    secret = None
    if secret_env:
        if secret_env not in reader.env:
            reader.problem(f"{path}.secret_access_key_env", f"environment variable {secret_env} is not set")
        else:
            secret = Secret(reader.env[secret_env])
    access_key_id = reader.get(sec, "access_key_id", f"{path}.access_key_id", str, None)
    if bool(access_key_id) != bool(secret_env):
        reader.problem(f"{path}.access_key_id", "give access_key_id and secret_access_key_env "
                       "together (or neither: then the store's standard environment variables)")
    max_age = reader.convert(sec, "max_age", f"{path}.max_age", parse_duration, None)
    if max_age is not None and max_age <= 0:
        reader.problem(f"{path}.max_age", "must be longer than 0 (leave it out to keep cold "
                       "objects forever)")
    concurrency = reader.get(sec, "upload_concurrency", f"{path}.upload_concurrency", int, 4)
    if concurrency < 1:
        reader.problem(f"{path}.upload_concurrency", "must be at least 1")
    if url is not None and url.startswith("file:"):
        u = urlsplit(url)
        if u.netloc not in ("", "localhost") or not u.path.startswith("/"):
            reader.problem(f"{path}.url", "a local directory is written file:///absolute/path")
            url = None
    if url is None:
        return None
    return ObjectStoreConfig(
        url=url,
        endpoint=endpoint,
        region=reader.get(sec, "region", f"{path}.region", str, None),
        access_key_id=access_key_id,
        secret_access_key=secret,
        allow_http=reader.get(sec, "allow_http", f"{path}.allow_http", bool, True),
        max_age=max_age,
        upload_concurrency=max(concurrency, 1),
    )


def _cache(reader: _Reader, raw: Any) -> CacheConfig:
    sec = reader.section(raw, "cache", {"dir", "max_size", "tag_ttl", "tags_list_ttl", "max_stale",
                                        "keep_deleted_tags", "high_watermark", "low_watermark",
                                        "manifest_memory", "object_store"})
    d = CacheConfig()
    dir_value = reader.get(sec, "dir", "cache.dir", str, None)
    high = reader.convert(sec, "high_watermark", "cache.high_watermark", float, d.high_watermark)
    low = reader.convert(sec, "low_watermark", "cache.low_watermark", float, d.low_watermark)
    if not 0 < low <= high <= 1:
        reader.problem("cache.low_watermark", "need 0 < low_watermark <= high_watermark <= 1")
    max_size = reader.convert(sec, "max_size", "cache.max_size", parse_size, d.max_size)
    if max_size <= 0:
        reader.problem("cache.max_size", "must be greater than 0")
    return CacheConfig(
        dir=reader.path(dir_value) if dir_value else reader.path(str(d.dir)),
        max_size=max_size,
        tag_ttl=reader.convert(sec, "tag_ttl", "cache.tag_ttl", parse_duration, d.tag_ttl),
        tags_list_ttl=reader.convert(sec, "tags_list_ttl", "cache.tags_list_ttl", parse_duration,
                                     d.tags_list_ttl),
        max_stale=reader.convert(sec, "max_stale", "cache.max_stale", parse_duration, None),
        keep_deleted_tags=reader.get(sec, "keep_deleted_tags", "cache.keep_deleted_tags", bool, False),
        high_watermark=high,
        low_watermark=low,
        manifest_memory=reader.convert(sec, "manifest_memory", "cache.manifest_memory", parse_size,
                                       d.manifest_memory),
        object_store=_object_store(reader, sec.get("object_store")),
    )


def _listen(reader: _Reader, value: Any) -> tuple[str, int]:
    if value is None:
        return "0.0.0.0", 5000
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        reader.problem("listen", f"must be host:port, e.g. 0.0.0.0:5000, got {value!r}")
        return "0.0.0.0", 5000
    return host.strip("[]") or "0.0.0.0", int(port)


def _readable(reader: _Reader, raw: dict[str, Any], key: str, path: str) -> Path | None:
    value = reader.get(raw, key, path, str, None)
    if not value:
        return None
    p = reader.path(value)
    try:
        p.read_bytes()
    except OSError as e:
        reader.problem(path, f"cannot read {p}: {e.strerror}")
        return None
    return p


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal; fail instead.
    raise ValueError("encrypted private keys are not supported")


def _tls(reader: _Reader, raw: Any) -> TlsConfig | None:
    if raw is None:
        return None
    sec = reader.section(raw, "tls", {"cert", "key", "client_ca"})
    cert = _readable(reader, sec, "cert", "tls.cert")
    key = _readable(reader, sec, "key", "tls.key")
    client_ca = _readable(reader, sec, "client_ca", "tls.client_ca")
    for k in ("cert", "key"):
        if not sec.get(k):
            reader.problem(f"tls.{k}", "is required (a PEM file)")
    if cert is None or key is None:
        return None
    import ssl  # only configs with TLS pay for it

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, _no_password)
    except (ssl.SSLError, ValueError) as e:
        reader.problem("tls.key", f"cert and key do not load as a pair: {getattr(e, 'reason', e)}")
        return None
    if client_ca is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(client_ca)
        except ssl.SSLError as e:
            reader.problem("tls.client_ca", f"not a PEM CA bundle: {e.reason}")
    return TlsConfig(cert, key, client_ca)


def _str_list(reader: _Reader, raw: dict[str, Any], key: str, path: str,
              default: tuple[str, ...]) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        reader.problem(path, "must be a non-empty list of strings")
        return default
    return tuple(value)


def _rules(reader: _Reader, raw: Any, upstreams: Mapping[str, UpstreamConfig],
           users: frozenset[str] | None) -> tuple[AccessRule, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        reader.problem("auth.rules", "must be a list of rules")
        return None
    rules = []
    for i, item in enumerate(raw):
        path = f"auth.rules[{i}]"
        sec = reader.section(item, path, {"allow", "deny", "users", "upstreams", "repositories"})
        if ("allow" in sec) == ("deny" in sec):
            reader.problem(path, "needs exactly one of allow: true or deny: true")
            continue
        verb: Literal["allow", "deny"] = "allow" if "allow" in sec else "deny"
        if sec[verb] is not True:
            reader.problem(f"{path}.{verb}", "must be true")
        who = _str_list(reader, sec, "users", f"{path}.users", ())
        ups = _str_list(reader, sec, "upstreams", f"{path}.upstreams", ("*",))
        repos = _str_list(reader, sec, "repositories", f"{path}.repositories", ("**",))
        for up in ups:
            if not any(c in up for c in "*?[") and up not in upstreams:
                reader.problem(f"{path}.upstreams", f"{up!r} is not one of upstreams")
        for user in who:
            if users is not None and user not in ("*", "anonymous") and user not in users:
                reader.problem(f"{path}.users", f"{user!r} is not in auth.htpasswd")
        rules.append(AccessRule(verb, who, ups, repos))
    return tuple(rules)


def _auth(reader: _Reader, raw: Any, upstreams: Mapping[str, UpstreamConfig]) -> AuthConfig | None:
    if raw is None:
        return None
    from mirror.htpasswd import parse_htpasswd

    sec = reader.section(raw, "auth", {"htpasswd", "realm", "rules", "policy", "default",
                                       "protect_metrics", "protect_status", "token"})
    d = AuthConfig()
    htpasswd = _readable(reader, sec, "htpasswd", "auth.htpasswd")
    users: frozenset[str] | None = None
    if htpasswd is not None:
        try:
            users = frozenset(parse_htpasswd(htpasswd.read_text()))
        except (ValueError, UnicodeDecodeError) as e:
            reader.problem("auth.htpasswd", str(e))
    realm = reader.get(sec, "realm", "auth.realm", str, d.realm)
    if '"' in realm or "\\" in realm:
        reader.problem("auth.realm", "must not contain quotes or backslashes")
        realm = d.realm
    policy = reader.get(sec, "policy", "auth.policy", str, d.policy)
    if policy not in ("first-match", "deny-overrides"):
        reader.problem("auth.policy", "must be first-match or deny-overrides")
        policy = d.policy
    default = reader.get(sec, "default", "auth.default", str, d.default)
    if default not in ("allow", "deny"):
        reader.problem("auth.default", "must be allow or deny")
        default = d.default
    rules = _rules(reader, sec.get("rules"), upstreams, users)
    token = None
    if sec.get("token") is not None:
        tok = reader.section(sec["token"], "auth.token", {"ttl", "realm"})
        ttl = reader.convert(tok, "ttl", "auth.token.ttl", parse_duration, TokenConfig.ttl)
        if ttl < 1:
            reader.problem("auth.token.ttl", "must be at least 1s")
        token_realm = tok.get("realm")
        if token_realm is not None:
            token_realm = _url(reader, "auth.token.realm", token_realm, ("http", "https"))
        token = TokenConfig(max(ttl, 1.0), token_realm)
    return AuthConfig(
        htpasswd=htpasswd,
        realm=realm,
        rules=d.rules if rules is None else rules,
        policy=policy,
        default=default,
        protect_metrics=reader.get(sec, "protect_metrics", "auth.protect_metrics", bool, True),
        protect_status=reader.get(sec, "protect_status", "auth.protect_status", bool, True),
        token=token,
    )


def _limits(reader: _Reader, raw: Any) -> LimitsConfig:
    sec = reader.section(raw, "limits", {"max_header_size", "max_headers", "max_connections",
                                         "client_timeout", "rate_limit"})
    d = LimitsConfig()
    header = reader.convert(sec, "max_header_size", "limits.max_header_size", parse_size,
                            d.max_header_size)
    if not 1024 <= header <= 1024 * 1024:
        reader.problem("limits.max_header_size", "must be between 1KiB and 1MiB")
        header = d.max_header_size
    count = reader.get(sec, "max_headers", "limits.max_headers", int, d.max_headers)
    if count < 16:
        reader.problem("limits.max_headers", "must be at least 16")
        count = d.max_headers
    conns = reader.get(sec, "max_connections", "limits.max_connections", int, d.max_connections)
    if conns == 0:
        conns = None  # explicitly unlimited
    elif conns is not None and conns < 0:
        reader.problem("limits.max_connections", "must be a positive number, or 0 for unlimited")
        conns = d.max_connections
    timeout = reader.convert(sec, "client_timeout", "limits.client_timeout", parse_duration,
                             d.client_timeout)
    if timeout < 1:
        reader.problem("limits.client_timeout", "must be at least 1s")
        timeout = d.client_timeout
    rate_limit = None
    if sec.get("rate_limit") is not None:
        rl = reader.section(sec["rate_limit"], "limits.rate_limit", {"rate", "burst"})
        rate = reader.convert(rl, "rate", "limits.rate_limit.rate", float, 0.0)
        if rate <= 0:
            reader.problem("limits.rate_limit.rate", "is required: requests per second (> 0)")
        burst = reader.get(rl, "burst", "limits.rate_limit.burst", int, max(1, int(rate * 10)))
        if burst < 1:
            reader.problem("limits.rate_limit.burst", "must be at least 1")
        rate_limit = RateLimitConfig(max(rate, 0.001), max(burst, 1))
    return LimitsConfig(header, count, conns, timeout, rate_limit)


def _server(reader: _Reader, raw: Any) -> ServerConfig:
    sec = reader.section(raw, "server", {"workers"})
    workers = sec.get("workers", 1)
    if workers == "auto":
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        reader.problem("server.workers", f"must be a whole number from 1 to {MAX_WORKERS}, or "
                                         f"auto (one per CPU), got {workers!r}")
        workers = 1
    return ServerConfig(min(workers, MAX_WORKERS))


TOP_KEYS = {"listen", "default_upstream", "upstreams", "cache", "prefetch", "log", "offline",
            "finish_abandoned_fetches", "tls", "auth", "server", "warm", "limits"}


def _warm(reader: _Reader, raw: Any, names: Mapping[str, str], default: str | None) -> WarmConfig:
    # Imported here: imageref builds on the router, which imports this module.
    from mirror.imageref import ImageRefError, parse_image_ref
    from mirror.models import Platform

    if isinstance(raw, list):
        raw = {"images": raw}
    sec = reader.section(raw, "warm", {"images", "interval", "platforms", "with_referrers"})
    images = sec.get("images") or []
    if not isinstance(images, list):
        reader.problem("warm.images", "must be a list of image references")
        images = []
    aliases = {k.lower(): v for k, v in names.items()}
    for i, text in enumerate(images):
        try:
            if not isinstance(text, str):
                raise ImageRefError(f"must be a string, got {text!r}")
            parse_image_ref(text, aliases, default)
        except ImageRefError as e:
            reader.problem(f"warm.images[{i}]", str(e))
    platforms = sec.get("platforms") or []
    if not isinstance(platforms, list):
        reader.problem("warm.platforms", "must be a list like [linux/amd64, linux/arm64]")
        platforms = []
    for i, plat in enumerate(platforms):
        try:
            Platform.parse(str(plat))
        except ValueError as e:
            reader.problem(f"warm.platforms[{i}]", str(e))
    interval = reader.convert(sec, "interval", "warm.interval", parse_duration, 3600.0)
    if interval < 1:
        reader.problem("warm.interval", "must be at least 1s")
    return WarmConfig(tuple(str(t) for t in images), interval, tuple(str(p) for p in platforms),
                      reader.get(sec, "with_referrers", "warm.with_referrers", bool, False))


def parse_config(raw: Any, env: Mapping[str, str] | None = None, base: Path | None = None,
                 source: str = "<config>") -> Config:
    reader = _Reader(os.environ if env is None else env, base or Path.cwd())
    top = reader.section(raw, "", TOP_KEYS)
    host, port = _listen(reader, top.get("listen"))
    ups_raw = top.get("upstreams")
    if ups_raw is not None and not isinstance(ups_raw, dict):
        reader.problem("upstreams", "must be a mapping of registry name to settings")
        ups_raw = {}
    upstreams: dict[str, UpstreamConfig] = {}
    for name, up_raw in (ups_raw or {}).items():
        up = _upstream(reader, str(name), up_raw)
        if up is not None:
            upstreams[up.name] = up
    seen: dict[str, str] = {}
    for up in upstreams.values():
        for n in (up.name, *up.aliases):
            if n in seen and seen[n] != up.name:
                reader.problem(f"upstreams.{up.name}.aliases", f"{n} already names {seen[n]}")
            seen[n] = up.name
    default = top.get("default_upstream", DOCKER_HUB if DOCKER_HUB in upstreams else None)
    if default is not None:
        if not isinstance(default, str):
            reader.problem("default_upstream", "must be a registry name")
            default = None
        elif default not in seen:
            reader.problem("default_upstream", f"{default!r} is not one of upstreams")
        else:
            default = seen[default]
    if not upstreams and not top.get("offline"):
        reader.problem("upstreams", "at least one upstream is required (or offline: true)")
    pre = reader.section(top.get("prefetch"), "prefetch", {"enabled", "parallel"})
    parallel = reader.get(pre, "parallel", "prefetch.parallel", int, 4)
    if parallel < 1:
        reader.problem("prefetch.parallel", "must be at least 1")
    lg = reader.section(top.get("log"), "log", {"level", "format", "audit"})
    level = reader.get(lg, "level", "log.level", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        reader.problem("log.level", "must be one of debug, info, warning, error")
    fmt = reader.get(lg, "format", "log.format", str, "text")
    if fmt not in ("text", "json"):
        reader.problem("log.format", "must be text or json")
    audit = reader.get(lg, "audit", "log.audit", str, None)
    if audit not in (None, "-") and not reader.path(audit).parent.is_dir():
        reader.problem("log.audit", f"directory {reader.path(audit).parent} does not exist "
                                    "(or use - for stdout)")
    config = Config(
        listen_host=host,
        listen_port=port,
        default_upstream=default,
        upstreams=upstreams,
        cache=_cache(reader, top.get("cache")),
        prefetch=PrefetchConfig(reader.get(pre, "enabled", "prefetch.enabled", bool, True),
                                max(parallel, 1)),
        log=LogConfig(level, fmt, audit if audit in (None, "-") else str(reader.path(audit))),
        offline=reader.get(top, "offline", "offline", bool, False),
        finish_abandoned_fetches=reader.get(top, "finish_abandoned_fetches",
                                            "finish_abandoned_fetches", bool, True),
        tls=_tls(reader, top.get("tls")),
        auth=_auth(reader, top.get("auth"), upstreams),
        limits=_limits(reader, top.get("limits")),
        warm=_warm(reader, top.get("warm"), seen, default),
        server=_server(reader, top.get("server")),
        source=source,
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def default_config_text() -> str:
    return resources.files("mirror").joinpath("default.yaml").read_text()


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load from `path`, else $MIRROR_CONFIG, else the default config embedded in the package."""
    env = os.environ if env is None else env
    path = path or env.get("MIRROR_CONFIG") or None
    if path is None:
        text, source, base = default_config_text(), "<embedded default>", Path.cwd()
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError([f"config: cannot read {p}: {e.strerror}"]) from None
        source, base = str(p), p.resolve().parent
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"config: not valid YAML{where}: {getattr(e, 'problem', e)}"]) from None
    return parse_config(raw or {}, env, base, source)
