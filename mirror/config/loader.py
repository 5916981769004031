"""Config: YAML in, frozen dataclasses out. Validated once, here; every problem names its key.

`load_config(path, env)` never raises anything but ConfigError, whose `problems` list holds one
line per problem, so `mirror check-config` can print them all at once."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mirror.config.cluster import _cluster
from mirror.config.model import (
    DEFAULT_REDIRECT_BLOCKLIST,
    MAX_WORKERS,
    CacheConfig,
    Config,
    LogConfig,
    ObjectStoreConfig,
    PrefetchConfig,
    Secret,
    ServerConfig,
    UpstreamConfig,
    WarmConfig,
)
from mirror.config.reader import (
    _REGISTRY_NAME_RE,
    _password,
    _Reader,
    _url,
    parse_duration,
    parse_size,
)
from mirror.config.security import _auth, _limits, _tls
from mirror.config.signatures import _signatures
from mirror.oci.errors import ConfigError
from mirror.oci.models import Platform
from mirror.oci.routing import DOCKER_HUB, DOCKER_HUB_ALIASES


def _upstream(reader: _Reader, name: str, raw: Any) -> UpstreamConfig | None:
    path = f"upstreams.{name}"
    if not _REGISTRY_NAME_RE.match(name):
        reader.problem(path, "registry name must be a host name, e.g. ghcr.io or registry:5000")
        return None
    if isinstance(raw, str):
        raw = {"url": raw}
    sec = reader.section(raw, path, {"url", "username", "password_env", "password_file",
                                     "password", "aliases", "max_concurrent_fetches",
                                     "connect_timeout", "read_timeout",
                                     "redirect_blocklist", "redirect_to_loopback"})
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
    blocklist = _networks(reader, sec.get("redirect_blocklist", list(DEFAULT_REDIRECT_BLOCKLIST)),
                          f"{path}.redirect_blocklist")
    to_loopback = reader.get(sec, "redirect_to_loopback", f"{path}.redirect_to_loopback", bool,
                             None)
    if url is None:
        return None
    return UpstreamConfig(name, url, username, password, aliases, max(limit, 1), connect, read,
                          blocklist, to_loopback)


def _networks(reader: _Reader, raw: Any, path: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        reader.problem(path, "must be a list of networks, e.g. [169.254.0.0/16, fd00:ec2::254/128]")
        return DEFAULT_REDIRECT_BLOCKLIST
    out: list[str] = []
    for n in raw:
        try:
            out.append(str(ipaddress.ip_network(n, strict=False)))
        except ValueError:
            reader.problem(path, f"{n!r} is not an IP network (address/prefix)")
    return tuple(out)


def _object_store(reader: _Reader, raw: Any) -> ObjectStoreConfig | None:
    if raw is None:
        return None
    path = "cache.object_store"
    sec = reader.section(raw, path, {"url", "endpoint", "region", "access_key_id",
                                     "secret_access_key_env", "allow_http", "max_age",
                                     "upload_concurrency", "lookup_timeout"})
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
    lookup_timeout = reader.convert(sec, "lookup_timeout", f"{path}.lookup_timeout", parse_duration,
                                    ObjectStoreConfig.lookup_timeout)
    if lookup_timeout <= 0:
        reader.problem(f"{path}.lookup_timeout", "must be longer than 0")
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
        lookup_timeout=lookup_timeout,
        upload_concurrency=max(concurrency, 1),
    )


def _cache(reader: _Reader, raw: Any) -> CacheConfig:
    sec = reader.section(raw, "cache", {"dir", "max_size", "tag_ttl", "tags_list_ttl", "max_stale",
                                        "keep_deleted_tags", "high_watermark", "low_watermark",
                                        "manifest_memory", "direct_io", "object_store"})
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
        direct_io=reader.convert(sec, "direct_io", "cache.direct_io", _size_or_off, d.direct_io),
        object_store=_object_store(reader, sec.get("object_store")),
    )


def _size_or_off(value: Any) -> int | None:
    """A size, or off/false for none (YAML reads a bare `off` as False)."""
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "false")):
        return None
    size = parse_size(value)
    if size <= 0:
        raise ValueError("must be a size greater than 0, or off")
    return size


def _listen(reader: _Reader, value: Any) -> tuple[str, int]:
    if value is None:
        return "0.0.0.0", 5000
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        reader.problem("listen", f"must be host:port, e.g. 0.0.0.0:5000, got {value!r}")
        return "0.0.0.0", 5000
    return host.strip("[]") or "0.0.0.0", int(port)


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
            "finish_abandoned_fetches", "tls", "auth", "server", "warm", "limits", "signatures",
            "cluster"}


def _warm(reader: _Reader, raw: Any, names: Mapping[str, str], default: str | None) -> WarmConfig:
    # Imported here: imageref builds on the router, which imports this module.
    from mirror.oci.imageref import ImageRefError, parse_image_ref

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
    platforms = [str(p) for p in sec.get("platforms") or []] if _platforms(
        reader, sec, "warm.platforms") else []
    interval = reader.convert(sec, "interval", "warm.interval", parse_duration, 3600.0)
    if interval < 1:
        reader.problem("warm.interval", "must be at least 1s")
    return WarmConfig(tuple(str(t) for t in images), interval, tuple(platforms),
                      reader.get(sec, "with_referrers", "warm.with_referrers", bool, False))


def _platforms(reader: _Reader, sec: dict[str, Any], path: str) -> tuple[Platform, ...]:
    raw = sec.get("platforms") or []
    if not isinstance(raw, list):
        reader.problem(path, "must be a list like [linux/amd64, linux/arm64]")
        return ()
    found = []
    for i, plat in enumerate(raw):
        try:
            found.append(Platform.parse(str(plat)))
        except ValueError as e:
            reader.problem(f"{path}[{i}]", str(e))
    return tuple(found)


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
    pre = reader.section(top.get("prefetch"), "prefetch", {"enabled", "parallel", "platforms"})
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
                                max(parallel, 1), _platforms(reader, pre, "prefetch.platforms")),
        log=LogConfig(level, fmt, audit if audit in (None, "-") else str(reader.path(audit))),
        offline=reader.get(top, "offline", "offline", bool, False),
        finish_abandoned_fetches=reader.get(top, "finish_abandoned_fetches",
                                            "finish_abandoned_fetches", bool, True),
        tls=_tls(reader, top.get("tls")),
        auth=_auth(reader, top.get("auth"), upstreams),
        limits=_limits(reader, top.get("limits")),
        warm=_warm(reader, top.get("warm"), seen, default),
        server=_server(reader, top.get("server")),
        signatures=_signatures(reader, top.get("signatures"), upstreams),
        cluster=_cluster(reader, top.get("cluster")),
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
