"""server.workers > 1: a supervisor process and N worker processes on one port.

The supervisor binds nothing it serves: it reserves the port, sweeps the cache's tmp/ once (no
worker is downloading yet), makes the directory where prometheus_client's multiprocess mode
keeps every worker's metric values, and starts `mirror serve` N times with MIRROR_WORKER in the
environment. Each worker is an ordinary server process that binds the port with SO_REUSEPORT
(the kernel spreads new connections across them) and shares the cache directory with the
others:

- blob downloads are single-flight across workers (mirror/store/xprocess.py,
  mirror/fetch/shared.py);
- tag records and manifests other workers stored are found in the index and on disk
  (mirror/pull/);
- worker 0 keeps the hot tier's budget (it catches up with every worker's index rows before it
  evicts) and runs the warm rules; the others only serve, and learn what it evicted from the
  index's eviction log (mirror/store/evictlog.py);
- Bearer tokens (auth.token) are signed with one key: the configured one, else one the
  supervisor makes at start and hands to each worker through a pipe of its own;
- /metrics on any worker merges the values of all of them.

A worker that dies is started again (after a pause if it keeps dying). SIGTERM/SIGINT stop all
workers gracefully; SIGHUP is passed on (TLS certificates, htpasswd, audit log reopen). Workers
watch a pipe from the supervisor and leave when it is gone, so kill -9 of the supervisor leaves
no orphans."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

# Nothing here imports aiohttp or the app: the supervisor only starts and watches processes,
# and each of the N+1 processes' memory counts (the app's imports are ~20 MiB).
from mirror.config import Config, Secret
from mirror.store.db import Database
from mirror.store.dirlock import CacheDirBusy, CacheDirLock

log = logging.getLogger("mirror.http.supervisor")
STOP_TIMEOUT = 15.0  # seconds a worker gets to finish after SIGTERM
QUICK_DEATH = 10.0  # a worker that dies sooner than this after its start is restarted slowly
MAX_BACKOFF = 30.0
READY_TIMEOUT = 60.0


# In a worker's environment: "<index>,<fd of the supervisor pipe>[,<fd to read the token key
# from>]" (read by mirror/cli/main.py). The key goes through a pipe of its own: not the
# environment or the command line (other tools show those), nor a file (it outlives the run).
WORKER_ENV = "MIRROR_WORKER"


def needs_token_key(config: Config) -> bool:
    """Token auth without a configured key: the supervisor makes one for its workers."""
    return (config.auth is not None and config.auth.token is not None
            and config.auth.token.key is None)


def reuseport_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def sweep_tmp(cache_dir: Path) -> int:
    """Remove what earlier runs left in tmp/ (unfinished downloads, locks): before any worker
    starts, nothing there is in use."""
    tmp = cache_dir / "tmp"
    removed = 0
    if tmp.is_dir():
        for p in tmp.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    backoff: float = 0.0


class Supervisor:
    """Starts, watches and stops the worker processes. `command(index, pipe_fd, key_fd)` gives
    the argv and extra environment of one worker (`mirror serve`, with WORKER_ENV set)."""

    def __init__(self, config: Config,
                 command: Callable[[int, int, int | None], tuple[list[str], dict[str, str]]]
                 ) -> None:
        self.config = config
        # One token key per start (never logged): a restart invalidates tokens, as with one
        # process; a worker started again gets the same key, so its tokens stay valid.
        self._token_key = Secret(secrets.token_hex(32)) if needs_token_key(config) else None
        self.count = config.server.workers
        self._command = command
        self._slots = [_Slot(i) for i in range(self.count)]
        self._stop = False
        self._hup = False
        self.port = config.listen_port
        self.metrics_dir: Path | None = None
        self._pipe_r = -1
        self._pipe_w = -1

    def run(self, banner: Callable[[str], None]) -> int:
        host = self.config.listen_host
        try:
            # A plain bind first: SO_REUSEPORT would let us share the port with another
            # server that happens to be on it, silently.
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, self.port))
                self.port = probe.getsockname()[1]
            reserve = reuseport_socket(host, self.port)  # held (not listening) until we exit
        except OSError as e:
            log.error("cannot listen on %s: %s", self.config.listen, e.strerror)
            return 1
        try:  # before the sweep: never under a maintenance tool (mirror/store/dirlock.py)
            dirlock = CacheDirLock.shared(self.config.cache.dir)
        except CacheDirBusy as e:
            log.error("%s", e)
            reserve.close()
            return 1
        swept = sweep_tmp(self.config.cache.dir)
        if swept:
            log.info("removed %d unfinished downloads from %s", swept, self.config.cache.dir / "tmp")
        try:
            # Create the index (schema, WAL mode) once: two workers switching a new database
            # to WAL at the same moment fail with "database is locked".
            Database(self.config.cache.dir / "index.db").close_sync()
        except (OSError, sqlite3.Error) as e:
            log.error("cannot open the cache index in %s: %s", self.config.cache.dir, e)
            reserve.close()
            dirlock.release()
            return 1
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="mirror-metrics-"))
        self._pipe_r, self._pipe_w = os.pipe()
        old = {sig: signal.signal(sig, self._on_signal)
               for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            for slot in self._slots:
                self._spawn(slot)
            code = self._wait_ready()
            if code is None:
                banner(f"{host}:{self.port}")
                code = self._watch()
            return code
        finally:
            self._stop_all()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            reserve.close()
            dirlock.release()
            os.close(self._pipe_r)
            os.close(self._pipe_w)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    # -- signals ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop = True

    # -- workers ----------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        assert self.metrics_dir is not None
        key_fd = None
        if self._token_key is not None:
            # 64 bytes fit in the pipe's buffer: written and closed before the worker starts.
            key_fd, key_w = os.pipe()
            os.write(key_w, self._token_key.reveal().encode())
            os.close(key_w)
        argv, extra = self._command(slot.index, self._pipe_r, key_fd)
        # PROMETHEUS_MULTIPROC_DIR is read when prometheus_client is imported: it must be in
        # the environment the worker starts with.
        env = {**os.environ, **extra, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        try:
            slot.proc = subprocess.Popen(argv, env=env, pass_fds=(
                self._pipe_r, *((key_fd,) if key_fd is not None else ())))
        finally:
            if key_fd is not None:
                os.close(key_fd)
        slot.started = time.monotonic()
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.poll() is None]

    def _reap(self, slot: _Slot) -> int | None:
        """The exit status of a worker that died (and is cleaned up after), else None."""
        if slot.proc is None or (code := slot.proc.poll()) is None:
            return None
        from prometheus_client.multiprocess import mark_process_dead

        assert self.metrics_dir is not None
        mark_process_dead(slot.proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        slot.proc = None
        return code

    def _wait_ready(self) -> int | None:
        """Until a worker accepts connections. An exit code when they cannot start at all
        (a worker exiting at once is a config or port problem, not worth restarting)."""
        deadline = time.monotonic() + READY_TIMEOUT
        host = "127.0.0.1" if self.config.listen_host in ("0.0.0.0", "") else (
            "::1" if self.config.listen_host == "::" else self.config.listen_host)
        while time.monotonic() < deadline and not self._stop:
            for slot in self._slots:
                code = self._reap(slot)
                if code is not None:
                    log.error("worker %d exited with status %d while starting", slot.index, code)
                    return code or 1
            with contextlib.suppress(OSError), socket.create_connection((host, self.port), 0.5):
                return None
            time.sleep(0.05)
        return None if not self._stop else 0

    def _watch(self) -> int:
        while not self._stop:
            if self._hup:
                self._hup = False
                self._signal_all(signal.SIGHUP)
            now = time.monotonic()
            for slot in self._slots:
                pid = slot.proc.pid if slot.proc is not None else 0
                code = self._reap(slot)
                if code is not None:
                    quick = now - slot.started < QUICK_DEATH
                    slot.backoff = min(MAX_BACKOFF, max(1.0, slot.backoff * 2)) if quick else 0.0
                    slot.restart_at = now + slot.backoff
                    log.warning("worker %d (pid %d) exited with status %d; starting it again%s",
                                slot.index, pid, code,
                                f" in {slot.backoff:.0f}s" if slot.backoff else "")
                if slot.proc is None and now >= slot.restart_at:
                    self._spawn(slot)
            time.sleep(0.1)
        return 0

    def _signal_all(self, sig: int) -> None:
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)

    def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot in self._slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in %.0fs: killed", slot.index, STOP_TIMEOUT)
                slot.proc.kill()
                slot.proc.wait()
            slot.proc = None
