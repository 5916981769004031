"""An asyncio loop on a daemon thread, hosting aiohttp servers for tests.

Servers live on their own thread so they keep answering while the test thread blocks
(sync tests, a mirror subprocess, a blocking http.client call) and so they do not care
which event loop pytest-asyncio gives an async test.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that need a number).

    Prefer binding port 0 yourself: another process may take the port before it is used.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bound_socket() -> socket.socket:
    """A listening 127.0.0.1 socket on a kernel-chosen port: no race with other processes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class LoopThread:
    """Runs one event loop forever on a daemon thread; `call()` runs a coroutine there."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def serve(self, app: web.Application) -> int:
        """Start `app` on a fresh 127.0.0.1 port (must run on this loop); returns the port."""
        # A short shutdown timeout: stalled fault-mode handlers must not delay stop() for 60 s.
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        sock = bound_socket()
        await web.SockSite(runner, sock).start()
        self._runners.append(runner)
        port: int = sock.getsockname()[1]
        return port

    async def _shutdown(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        # Whatever is still pending (e.g. a handler sleeping in a stall fault) is cancelled so
        # the loop can be closed without "Task was destroyed but it is pending" noise.
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self, extra: Coroutine[Any, Any, None] | None = None) -> None:
        """Stop the servers (and run `extra` first, e.g. closing a ClientSession), then the loop."""
        if self.loop.is_closed():
            return
        if extra is not None:
            self.call(extra)
        self.call(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
