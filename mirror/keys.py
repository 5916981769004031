"""Typed keys for what the composition root keeps on the aiohttp app (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mirror.config import Config
from mirror.metrics import Metrics
from mirror.pullstats import PullStats
from mirror.router import Route
from mirror.service import PullService

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", PullService)
PULL_STATS = web.AppKey("pull_stats", PullStats)  # history for the status page
RouterFn = Callable[[str, str | None], Route]
StatusFn = Callable[[], dict[str, Any]]
ROUTER: web.AppKey[RouterFn] = web.AppKey("router")
STATUS: web.AppKey[StatusFn] = web.AppKey("status")


@dataclass(slots=True)
class PullRecord:
    """What one pull request did; the audit log and the status page read it."""

    route: Route | None = None
    reference: str = ""
    digest: str = ""
    kind: str = ""
    result: str = ""
    bytes: int = 0


# Per-request storage (aiohttp warns on plain string keys).
PULL_RECORD: web.RequestKey[PullRecord] = web.RequestKey("pull_record")
USER: web.RequestKey[str] = web.RequestKey("user")  # set by client auth when a user logged in
