"""The one composition root: everything is built here from a validated Config."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from mirror.airgap.warm import start_warming
from mirror.auth.clientauth import CLIENT_AUTH, ClientAuth, client_auth_middleware
from mirror.config import Config, Secret
from mirror.http.keys import CONFIG, FILE_READS, METRICS, PULL_STATS, ROUTER, SERVICE, STATUS
from mirror.http.limits import RateLimiter, rate_limit_middleware, server_handler_args
from mirror.http.middlewares import errors_middleware
from mirror.http.peer_routes import PEERS, add_peer_routes
from mirror.http.routes import add_routes
from mirror.http.server import RELOAD, SERVER_TLS
from mirror.http.status import add_status_routes
from mirror.http.tls import ServerTLS
from mirror.http.workers import WORKER, WorkerRole, supervisor_watch
from mirror.observe.audit import AuditLog, audit_middleware
from mirror.observe.metrics import Metrics
from mirror.observe.pullstats import PullStats
from mirror.oci.routing import Route, resolve_route
from mirror.pull.stack import build_services
from mirror.store.dirlock import CacheDirLock

log = logging.getLogger("mirror.http.app")
EVICTION_INTERVAL = 5.0
# Each client served from the disk keeps up to two reads in flight (the window it sends and the
# next): four threads keep a disk busy for two such clients, and more queue rather than hold up
# anything else.
FILE_READ_THREADS = 4
USER_AGENT = "mirror/0.1 (pull-through cache)"


def create_app(config: Config, metrics: Metrics | None = None,
               worker: WorkerRole | None = None) -> web.Application:
    """`worker`: this process is one of server.workers (mirror/http/workers.py)."""
    metrics = metrics or Metrics(multiprocess_dir=worker.metrics_dir if worker else None)
    stats = PullStats(metrics.totals)
    audit = AuditLog(config.log.audit, metrics) if config.log.audit else None
    # The audit middleware is outermost: it sees the final status and the whole transfer.
    app = web.Application(middlewares=[audit_middleware(stats, audit), errors_middleware,
                                       *_guards(config, metrics)],
                          client_max_size=1024, handler_args=server_handler_args(config.limits))
    app[CONFIG] = config
    app[METRICS] = metrics
    aliases = config.alias_table()

    def route(name: str, ns: str | None) -> Route:
        return resolve_route(name, ns, aliases, config.default_upstream)

    app[ROUTER] = route
    app[FILE_READS] = ThreadPoolExecutor(FILE_READ_THREADS, thread_name_prefix="mirror-read")
    app.cleanup_ctx.append(_file_reads)
    _security(app, config, worker.token_key if worker is not None else None)
    app[PULL_STATS] = stats
    app.cleanup_ctx.append(stats.ctx)
    if audit is not None:
        app.cleanup_ctx.append(audit.ctx)
        app[RELOAD].append(audit.reopen)  # SIGHUP after logrotate
    if worker is not None:
        app[WORKER] = worker
        app.cleanup_ctx.append(supervisor_watch(worker))
    app.cleanup_ctx.append(_service_ctx(audit))
    add_routes(app)
    add_peer_routes(app)
    add_status_routes(app)
    return app


async def _file_reads(app: web.Application) -> AsyncIterator[None]:
    yield
    app[FILE_READS].shutdown(wait=True)  # every response is done: nothing left running


def _guards(config: Config, metrics: Metrics) -> list[Middleware]:
    """Middlewares that refuse requests before any work: rate limit, then client auth (which
    also applies the access rules after routing, before the service is called)."""
    guards: list[Middleware] = []
    if config.limits.rate_limit is not None:
        guards.append(rate_limit_middleware(RateLimiter(config.limits.rate_limit, metrics.registry)))
    if config.auth is not None:
        guards.append(client_auth_middleware)
    return guards


def _security(app: web.Application, config: Config, token_key: Secret | None) -> None:
    app[RELOAD] = []  # run on SIGHUP by mirror/server.py
    if config.auth is not None:
        app[CLIENT_AUTH] = ClientAuth(config.auth, app[METRICS].registry, app[ROUTER], token_key)
        app[RELOAD].append(app[CLIENT_AUTH].reload)
        app.cleanup_ctx.append(app[CLIENT_AUTH].ctx)
    if config.tls is not None:
        app[SERVER_TLS] = ServerTLS(config.tls)
        app[RELOAD].append(app[SERVER_TLS].reload)


def _service_ctx(audit: AuditLog | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx building the pull stack; signature refusals go to `audit`."""
    return functools.partial(_services, audit=audit)


async def _services(app: web.Application, audit: AuditLog | None) -> AsyncIterator[None]:
    config, metrics = app[CONFIG], app[METRICS]
    worker = app.get(WORKER)
    # Held while serving: `mirror gc`/`import`/`seed` refuse to run on a live cache.dir (they
    # would sweep tmp/ under our downloads); raises CacheDirBusy while one of them runs.
    dirlock = CacheDirLock.shared(config.cache.dir)
    try:
        parts = await build_services(config, metrics, shared_dir=worker is not None,
                                     evicting=worker is None or worker.primary, audit=audit)
    except BaseException:
        dirlock.release()
        raise
    tier, clients, service = parts.tier, parts.clients, parts.service
    app[SERVICE] = service
    if parts.peers is not None:
        app[PEERS] = parts.peers
    if service.signatures is not None:
        app[RELOAD].append(service.signatures.reload)  # SIGHUP: rules and keys read again
    started = time.time()

    def status() -> dict[str, Any]:
        return {
            "started": started,
            "offline": config.offline,
            "hot": {"used": tier.used, "max": tier.max_size,
                    "objects": tier.objects},
            "inflight": service.blobs.inflight(),
            "upstreams": [c.status() for c in clients.values()],
            **({"cluster": parts.peers.status()} if parts.peers is not None else {}),
            **({"signatures": service.signatures.status()}
               if service.signatures is not None and service.signatures.rules else {}),
        }

    app[STATUS] = status
    primary = worker is None or worker.primary  # with several workers, one keeps the budget
    # Every worker catches up with the index (its usage figures); only tier.evicting evicts.
    background = [asyncio.create_task(parts.evictor.run(), name="evictor")]
    warmer = start_warming(service, config) if primary else None  # None when there are none
    if warmer is not None:
        background.append(warmer)
    if parts.peers is not None and parts.peers.config.dns is not None:
        background.append(asyncio.create_task(parts.peers.run(), name="peers"))
    for task in background:
        task.add_done_callback(_report_end)
    if parts.tiers is not None and primary:
        parts.tiers.start_periodic()  # cold tier usage and max_age expiry
    log.info("cache at %s: %d objects, %d bytes of %d", config.cache.dir, tier.objects,
             tier.used, tier.max_size)
    try:
        yield
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await parts.close()
        dirlock.release()


def _report_end(task: asyncio.Task[None]) -> None:
    """A background task must run until shutdown: say so at once if one ends otherwise."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped: %r", task.get_name(), task.exception())
