"""What a worker process of server.workers > 1 knows of its supervisor (mirror/http/supervisor.py):
its role, the token key it was handed, and the pipe whose end tells it the supervisor is gone."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from mirror.config import Secret

log = logging.getLogger("mirror.http.workers")


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process is told by the supervisor (WORKER_ENV in its environment)."""

    index: int
    metrics_dir: Path  # PROMETHEUS_MULTIPROC_DIR
    supervisor_fd: int | None = None  # read end of a pipe: end of file when the supervisor died
    # The key signing Bearer tokens when none is configured: one per supervisor start, so a
    # token any worker issued is valid on all of them (and on a restarted worker).
    token_key: Secret | None = None

    @property
    def primary(self) -> bool:
        """Worker 0 keeps the hot tier's budget and runs the warm rules."""
        return self.index == 0


WORKER = web.AppKey("worker", WorkerRole)
def read_token_key(fd: int) -> Secret:
    """The key the supervisor wrote into the pipe `fd` (then closed): read to the end."""
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    finally:
        os.close(fd)
    if not data:
        raise OSError("the supervisor sent no token key")
    return Secret(data.decode())


def supervisor_watch(role: WorkerRole) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: exit gracefully (as on SIGTERM) when the supervisor's pipe closes."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        fd = role.supervisor_fd
        if fd is None:
            yield
            return
        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(fd)
            log.warning("the supervisor is gone: worker %d stops", role.index)
            os.kill(os.getpid(), signal.SIGTERM)  # aiohttp turns it into a graceful exit

        loop.add_reader(fd, gone)
        try:
            yield
        finally:
            loop.remove_reader(fd)

    return ctx
