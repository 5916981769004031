"""Shared pieces of the real-client end-to-end tests (tests/e2e/clients/).

The chain under test:  client -> client tap -> mirror process -> upstream tap -> registry.
Both taps are RecordingProxy instances: the client tap shows what the client sent (ns=, paths),
the upstream tap counts what the mirror asked the registry (zero on a warm pull). Clients are
configured with mirror.cli.clientconf, the generator behind deploy/clients/, pointed at the client
tap, with every fallback at a dead loopback port."""

from __future__ import annotations

import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mirror.cli.clientconf import client_files, write_files
from mirror.config import parse_config

from .images import Catalog, PushedImage
from .mirror_proc import MirrorProcess, mirror_config
from .tap import RecordingProxy


def need_tools(*tools: str) -> None:
    """Fail (never skip) when a real client is missing: the tests exist to run it."""
    import pytest

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (make system-deps)", pytrace=False)


@contextmanager
def dead_loopback_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound (so nobody else can take it) but never
    listening. Client fallbacks point here instead of at a real registry."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


@dataclass
class PassFigures:
    client: str
    image: str
    phase: str  # cold | warm
    seconds: float
    client_requests: int  # requests the client sent to the mirror
    upstream_requests: int  # requests the mirror sent to the registry
    upstream_bytes: int  # body bytes the registry sent to the mirror

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SecondRegistry:
    """A second real registry, named ghcr.io in the mirror's config: library/busybox pushed
    with a salt, so the same name has other digests than on the docker.io upstream."""

    url: str
    images: dict[str, PushedImage]


class E2EMirror:
    """A mirror process with a fresh cache, a tap on each side, and generated client files."""

    def __init__(self, catalog: Catalog, workdir: Path, dead_port: int,
                 more_upstreams: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None,
                 upstream_settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.catalog = catalog
        self.workdir = workdir
        self.dead_port = dead_port
        # a tap in front of every upstream registry: docker.io's is `upstream_tap`
        self.upstream_taps = {name: RecordingProxy(url, name=f"upstream-tap-{name}")
                              for name, url in {"docker.io": catalog.registry_url,
                                                **(more_upstreams or {})}.items()}
        self.upstream_tap = self.upstream_taps["docker.io"]
        raw = mirror_config({n: t.url for n, t in self.upstream_taps.items()}, workdir / "cache",
                            **(extra or {}))
        for name, settings in (upstream_settings or {}).items():  # e.g. credentials
            raw["upstreams"][name].update(settings)
        self.proc = MirrorProcess(raw, workdir=workdir)
        self.config = parse_config(raw, env={}, base=workdir)
        self.client_tap: RecordingProxy | None = None

    def start(self) -> E2EMirror:
        self.proc.start()
        self.client_tap = RecordingProxy(self.proc.url, name="client-tap")
        return self

    def stop(self) -> None:
        if self.client_tap is not None:
            self.client_tap.stop()
        self.proc.stop()
        for tap in self.upstream_taps.values():
            tap.stop()

    @property
    def tap(self) -> RecordingProxy:
        assert self.client_tap is not None, "start() first"
        return self.client_tap

    @property
    def url(self) -> str:
        """What clients are configured with (the client tap in front of the mirror)."""
        return self.tap.url

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.tap.port}"

    @property
    def dead(self) -> str:
        return f"127.0.0.1:{self.dead_port}"

    def client_config(self, out: Path) -> dict[str, str]:
        """Write the generated client files under `out` (as `mirror client-config -o` does)."""
        files = client_files(self.config, self.url, fallback=f"http://{self.dead}")
        write_files(files, out)
        return files

    def measure(self, client: str, image: str, phase: str, pull: Callable[[], None]) -> PassFigures:
        taps = list(self.upstream_taps.values())
        for tap in (self.tap, *taps):
            tap.clear()
        t0 = time.monotonic()
        pull()
        seconds = time.monotonic() - t0
        for tap in (self.tap, *taps):
            tap.wait_idle(30)
        return PassFigures(client, image, phase, round(seconds, 2), self.tap.count(),
                           sum(t.count() for t in taps), sum(t.bytes_sent() for t in taps))


@contextmanager
def e2e_mirror(catalog: Catalog, dead_port: int, workdir: Path,
               more_upstreams: Mapping[str, str] | None = None,
               extra: Mapping[str, Any] | None = None,
               upstream_settings: Mapping[str, Mapping[str, Any]] | None = None
               ) -> Iterator[E2EMirror]:
    """A mirror for docker.io (the session registry) and, optionally, more registries, with
    its config (plus `extra` top-level sections), cache and log under `workdir` (a pytest temp
    dir: kept for a look after a failure, removed by pytest a few runs later)."""
    m = E2EMirror(catalog, workdir, dead_port, more_upstreams, extra, upstream_settings)
    try:
        yield m.start()
    finally:
        m.stop()


_URL_RE = re.compile(r"\b(?:GET|HEAD) (https?://[^\s\"]+)")


def request_hosts(log: str) -> set[str]:
    """host:port of every registry request a containers/image client logged with --debug."""
    return {re.sub(r"^https?://", "", u).split("/", 1)[0] for u in _URL_RE.findall(log)}


def assert_only_mirror_contacted(log: str, mirror_hostport: str, dead: str) -> None:
    """containers/image (skopeo, podman) debug log: every request went to the mirror, none to
    the primary location (the dead port) or anywhere else."""
    hosts = request_hosts(log)
    assert hosts == {mirror_hostport}, f"requests went to {hosts}, not only {mirror_hostport}"
    assert dead not in log, f"the client tried its fallback {dead}"
    assert "docker.io/v2" not in log and "registry-1.docker.io" not in log
