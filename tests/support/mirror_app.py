"""Build an in-process mirror app from a config dict (protocol tests without a subprocess)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from mirror.config import Config, parse_config
from mirror.http.app import create_app

from .mirror_proc import mirror_config

ALL_MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def app_config(upstreams: dict[str, str], cache_dir: Path, **extra: Any) -> Config:
    return parse_config(mirror_config(upstreams, cache_dir, **extra), env={}, base=cache_dir)


def make_app(upstreams: dict[str, str], cache_dir: Path, **extra: Any) -> web.Application:
    return create_app(app_config(upstreams, cache_dir, **extra))


def accept_all() -> list[tuple[str, str]]:
    """Accept as skopeo sends it: one header line per media type."""
    return [("Accept", mt) for mt in ALL_MANIFEST_TYPES]
