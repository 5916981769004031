"""Typed keys for what the composition root keeps on the aiohttp app (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from mirror.config import Config
from mirror.observe.metrics import Metrics
from mirror.observe.pullstats import PullStats
from mirror.oci.routing import Route
from mirror.pull.service import PullService

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", PullService)
PULL_STATS = web.AppKey("pull_stats", PullStats)  # history for the status page
# Threads that bring files into the page cache (http/responses.py PageIn): apart from the
# default executor, where download lanes and fsyncs run, so that clients read from the disk
# never hold up a download.
FILE_READS = web.AppKey("file_reads", Executor)
RouterFn = Callable[[str, str | None], Route]
StatusFn = Callable[[], dict[str, Any]]
ROUTER: web.AppKey[RouterFn] = web.AppKey("router")
STATUS: web.AppKey[StatusFn] = web.AppKey("status")
