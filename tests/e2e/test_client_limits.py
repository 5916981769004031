"""Clients that hold connections (issue #16, item 10), against `python -m mirror serve` on real
sockets: one that stops reading a blob is cut after `limits.send_timeout` (its connection,
descriptors, mappings and pins go with it), one that reads slowly is not, and one address cannot
take every connection (`limits.max_connections_per_client`)."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Catalog, PushedImage, fetch
from tests.support.certs import TestCA
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.waiting import wait_for

MiB = 1 << 20


@pytest.fixture
def big(catalog: Catalog) -> PushedImage:
    return catalog["library/big:latest"]


@pytest.fixture
def mirror(catalog: Catalog, big: PushedImage, tmp_path: Path) -> Iterator[MirrorProcess]:
    cfg = mirror_config({"docker.io": catalog.registry_url}, tmp_path / "cache",
                        prefetch={"enabled": False},
                        limits={"max_connections": 4, "send_timeout": "1s",
                                "max_connections_per_client": 3})
    with MirrorProcess(cfg, workdir=tmp_path) as proc:
        layer = big.layers[0]
        h = hashlib.sha256()
        r = fetch(f"{proc.url}/v2/{big.repo}/blobs/{layer.digest}", sink=h.update, timeout=120)
        assert r.status == 200 and "sha256:" + h.hexdigest() == layer.digest  # now a hit
        yield proc


def blob_request(big: PushedImage) -> bytes:
    layer = big.layers[0]
    return f"GET /v2/{big.repo}/blobs/{layer.digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def connect(proc: MirrorProcess, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the kernel holds little
    s.bind((source, 0))
    s.settimeout(30)
    s.connect(("127.0.0.1", proc.port))
    return s


def metric(proc: MirrorProcess, name: str) -> float:
    """The value on /metrics; 0 while the mirror refuses the connection (503)."""
    for line in fetch(f"{proc.url}/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_clients_that_stop_reading_are_cut_and_free_their_connections(
        mirror: MirrorProcess, big: PushedImage) -> None:
    stalled = []
    # As many as limits.max_connections, from four addresses (not the per-address cap).
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
        s = connect(mirror, source)
        s.sendall(blob_request(big))
        assert s.recv(64).startswith(b"HTTP/1.1 200 ")  # the body started; nobody reads it
        stalled.append(s)
    try:
        # They are cut once they took nothing for send_timeout (1s); until then every other
        # connection, /metrics included, is refused (503).
        t0 = time.monotonic()
        wait_for("the server to cut the stalled clients",
                 lambda: metric(mirror, "mirror_send_timeouts_total") == 4, timeout=30)
        assert time.monotonic() - t0 < 20
        # ... and what a client then finds behind them is the connection, reset or closed
        # (the body was never completed: a cut transfer, not a short blob).
        for s in stalled:
            got = 0
            s.settimeout(10)
            try:
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                pass
            assert got < big.layers[0].size
    finally:
        for s in stalled:
            s.close()
    # Their slots are free again: a full pull gets every verified byte.
    layer = big.layers[0]
    h = hashlib.sha256()
    r = fetch(f"{mirror.url}/v2/{big.repo}/blobs/{layer.digest}", sink=h.update, timeout=120)
    assert r.status == 200 and "sha256:" + h.hexdigest() == layer.digest


def test_a_slow_reader_is_not_cut(mirror: MirrorProcess, big: PushedImage) -> None:
    """Progress, however slow, keeps a response alive: ~2 MiB/s for three send_timeouts, with
    pauses shorter than send_timeout, then the rest at full speed; every byte verifies."""
    layer = big.layers[0]
    s = connect(mirror)
    try:
        s.sendall(blob_request(big))
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        head, _, first = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        h = hashlib.sha256(first)
        got = len(first)
        slow_until = time.monotonic() + 3.0
        while got < layer.size:
            chunk = s.recv(64 * 1024 if time.monotonic() < slow_until else 1 << 20)
            assert chunk, f"cut after {got} bytes"
            h.update(chunk)
            got += len(chunk)
            if time.monotonic() < slow_until:
                time.sleep(0.03)  # the pace of a slow link, not a wait for state
        assert got == layer.size and "sha256:" + h.hexdigest() == layer.digest
    finally:
        s.close()
    assert metric(mirror, "mirror_send_timeouts_total") == 0


def test_one_address_cannot_take_every_connection(mirror: MirrorProcess) -> None:
    held = [connect(mirror) for _ in range(3)]  # max_connections_per_client: 3
    try:
        def refused() -> bool:
            with connect(mirror) as extra:
                extra.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                return extra.recv(4096).startswith(b"HTTP/1.1 503 ")

        # The three are registered once a fourth from the same address is refused.
        wait_for("a fourth connection from 127.0.0.1 to be refused", refused, timeout=10)
        with connect(mirror, "127.0.0.2") as other:  # another address still gets in
            other.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert other.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()
    # Closed connections no longer count.
    wait_for("127.0.0.1 to be admitted again",
             lambda: fetch(f"{mirror.url}/v2/").status == 200, timeout=10)


class _TlsMirror(MirrorProcess):
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def test_a_tls_client_that_stops_reading_is_cut(catalog: Catalog, big: PushedImage,
                                                tmp_path: Path) -> None:
    """Over TLS the response waits on the TLS transport: a client that stops reading is cut
    all the same."""
    ca = TestCA(tmp_path / "pki")
    server = ca.server()
    cfg = mirror_config({"docker.io": catalog.registry_url}, tmp_path / "cache",
                        prefetch={"enabled": False}, limits={"send_timeout": "1s"},
                        tls={"cert": str(server.cert), "key": str(server.key)})
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    proc = _TlsMirror(cfg, workdir=tmp_path / "tls")
    proc.ssl_context = ctx
    layer = big.layers[0]

    def tls_metric(name: str) -> float:
        with urllib.request.urlopen(f"{proc.url}/metrics", context=ctx, timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.split()[1]) for line in text.splitlines()
                   if line.startswith(name + " "))

    with proc:
        url = f"{proc.url}/v2/{big.repo}/blobs/{layer.digest}"
        h = hashlib.sha256()
        with urllib.request.urlopen(url, context=ctx, timeout=120) as r:
            while chunk := r.read(1 << 20):
                h.update(chunk)
        assert "sha256:" + h.hexdigest() == layer.digest  # a hit from now on
        with ctx.wrap_socket(connect(proc), server_hostname="127.0.0.1") as s:
            s.sendall(blob_request(big))
            assert s.recv(64).startswith(b"HTTP/1.1 200 ")  # then nobody reads
            wait_for("the server to cut the stalled TLS client",
                     lambda: tls_metric("mirror_send_timeouts_total") == 1, timeout=30)
