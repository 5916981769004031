"""Typed keys for what the composition root keeps on the aiohttp app (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from mirror.config import Config
from mirror.metrics import Metrics
from mirror.router import Route
from mirror.service import PullService

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", PullService)
ROUTER = web.AppKey("router", Callable[[str, str | None], Route])
STATUS = web.AppKey("status", Callable[[], dict[str, Any]])
