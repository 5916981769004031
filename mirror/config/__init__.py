"""The validated configuration: model (frozen dataclasses), validation (every error names its key),
loading. `load_config(path, env)` is the one way in; everything else here is its vocabulary."""

from mirror.config.loader import TOP_KEYS, default_config_text, load_config, parse_config
from mirror.config.model import (
    MAX_WORKERS,
    AccessRule,
    AuthConfig,
    CacheConfig,
    ClusterConfig,
    Config,
    LimitsConfig,
    LogConfig,
    ObjectStoreConfig,
    PrefetchConfig,
    RateLimitConfig,
    Secret,
    ServerConfig,
    SignatureRule,
    TlsConfig,
    TokenConfig,
    UpstreamConfig,
    WarmConfig,
)
from mirror.config.reader import parse_duration, parse_size
from mirror.oci.errors import ConfigError
from mirror.oci.routing import DOCKER_HUB, DOCKER_HUB_ALIASES

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_ALIASES",
    "MAX_WORKERS",
    "TOP_KEYS",
    "AccessRule",
    "AuthConfig",
    "CacheConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "LogConfig",
    "ObjectStoreConfig",
    "PrefetchConfig",
    "RateLimitConfig",
    "Secret",
    "ServerConfig",
    "SignatureRule",
    "TlsConfig",
    "TokenConfig",
    "UpstreamConfig",
    "WarmConfig",
    "default_config_text",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]
