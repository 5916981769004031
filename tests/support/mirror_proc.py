"""Run the mirror the way users do: `python -m mirror serve -c FILE` in a subprocess.

End-to-end tests use this (real clients, kill -9, restarts); protocol tests that need no
subprocess use the in-process app from `tests.support.mirror_app`."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mirror_config(upstreams: dict[str, str], cache_dir: Path, **extra: Any) -> dict[str, Any]:
    """A config dict for loopback upstreams: {"docker.io": "http://127.0.0.1:PORT", ...}."""
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstreams": {name: {"url": url} for name, url in upstreams.items()},
        "cache": {"dir": str(cache_dir)},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


LOG_TAIL = 60  # lines of a mirror's log printed when the `with` block around it fails


class MirrorProcess:
    def __init__(
        self, config: dict[str, Any], workdir: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mirror-proc-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.env = env or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mirror.log"
        self.config_path = self.workdir / "mirror.yaml"
        # Set by subclasses that serve https: the readiness poll trusts this context.
        self.ssl_context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> MirrorProcess:
        if not self.port:
            self.port = free_port()
        cfg = dict(self.config)
        cfg["listen"] = f"127.0.0.1:{self.port}"
        self.config_path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "serve", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mirror exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1,
                                            context=self.ssl_context) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mirror did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the crash the cache must survive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> MirrorProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop()
        if exc_type is not None:  # shown with the failure (pytest captures stdout)
            tail = self.log_text().splitlines()[-LOG_TAIL:]
            print(f"--- last {len(tail)} lines of {self.log_path} ---", *tail, sep="\n")


class MirrorFleet:
    """The mirror processes one test starts, each in its own work dir under `root`. On close
    all are stopped; then each that the test did not stop or kill itself must still have been
    up (it survived whatever the test did) and none may have logged a traceback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[MirrorProcess] = []

    def start(self, config: dict[str, Any], name: str = "m") -> MirrorProcess:
        proc = MirrorProcess(config, workdir=self.root / f"{name}{len(self.procs)}")
        self.procs.append(proc)
        return proc.start()

    def close(self) -> None:
        problems = []
        for p in self.procs:
            code = p.proc.poll() if p.proc is not None else None
            try:
                p.stop()
            except Exception as e:  # stop the others, then report it
                problems.append(f"{p.workdir.name} did not stop: {e!r}")
            log = p.log_text()
            if code is not None:
                problems.append(f"{p.workdir.name} exited {code} during the test:\n{log[-3000:]}")
            elif "Traceback" in log:
                problems.append(f"{p.workdir.name} logged a traceback:\n{log[-3000:]}")
        assert not problems, "\n\n".join(problems)

    def __enter__(self) -> MirrorFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
