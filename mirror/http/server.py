"""Run the app on a listening socket: aiohttp's run_app, plus what it cannot do for us.

run_app builds its own sites, so there is no place in it for TLS certificate reloads or for
the connection limit, which must sit between the listening socket and aiohttp's protocol
factory. This module does the same steps (runner, site, signals, graceful shutdown) with a
`ConnectionGate` in front, and turns SIGHUP into a reload of everything registered under
`RELOAD` (TLS certificates, the htpasswd file)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable

from aiohttp import web

from mirror.config import LimitsConfig
from mirror.http.keys import CONFIG, METRICS
from mirror.http.limits import ConnectionGate
from mirror.http.tls import ServerTLS

log = logging.getLogger("mirror.http.server")

RELOAD = web.AppKey("reload", list[Callable[[], object]])
SERVER_TLS = web.AppKey("server_tls", ServerTLS)


def reload_all(app: web.Application) -> None:
    for hook in app.get(RELOAD, []):
        try:
            hook()
        except Exception:
            log.exception("reload failed")


class GatedSockSite(web.SockSite):
    """A SockSite whose protocol factory is wrapped in the connection gate (if any)."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, limits: LimitsConfig,
                 **kwargs: object) -> None:
        super().__init__(runner, sock, **kwargs)  # type: ignore[arg-type]
        self._limits = limits

    async def start(self) -> None:
        # BaseSite.start registers the site with the runner; SockSite.start would also create
        # the server, which we do ourselves to put the gate in front.
        await web.BaseSite.start(self)
        runner = self._runner
        assert isinstance(runner, web.AppRunner) and runner.server is not None
        factory = ConnectionGate(runner.server, self._limits, runner.app[METRICS].registry)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._limits.client_timeout if self._ssl_context else None)


async def _serve(app: web.Application, sock: socket.socket, banner: Callable[[str], None],
                 shutdown_timeout: float) -> None:
    runner = web.AppRunner(app, handle_signals=True, access_log=None,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        limits = app[CONFIG].limits
        tls = app.get(SERVER_TLS)
        site = GatedSockSite(runner, sock, limits,
                             ssl_context=tls.context if tls is not None else None,
                             shutdown_timeout=shutdown_timeout)
        await site.start()
        with contextlib.suppress(NotImplementedError):  # no signals on Windows
            loop.add_signal_handler(signal.SIGHUP, reload_all, app)
        banner(site.name)
        await asyncio.Event().wait()  # until SIGINT/SIGTERM raise GracefulExit
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGHUP)
        await runner.cleanup()


def run(app: web.Application, sock: socket.socket, banner: Callable[[str], None],
        shutdown_timeout: float = 5.0) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (like web.run_app)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, sock, banner, shutdown_timeout))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
