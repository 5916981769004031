"""Measuring caches from outside: their processes' CPU, memory and writes, a quiet machine
between measurements, one timed GET with curl, one cold GET and what it cost."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import peak_rss_mib
from tests.support.images import PushedImage
from tests.support.registry import RegistryProcess


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx workers, mirror workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        todo += [int(k) for k in kids]
    return out


def tree_rss_mib(pid: int) -> float:
    return sum(peak_rss_mib(p) for p in process_tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of pid and its descendants (all threads)."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def curl_time(url: str, headers: tuple[str, ...] = ()) -> tuple[int, int, float]:
    """(status, bytes, seconds) of one GET into /dev/null, timed by curl itself."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
           url]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


def settle(quiet: float = 0.1, longest: float = 30.0) -> None:
    """Write back every dirty page, then wait until the machine is idle (under `quiet` of
    its CPU busy over a quarter second, at most `longest` seconds): what the previous step
    left behind would otherwise slow down whoever is measured next. Dirty pages are one such
    thing; work a cache goes on with after its answer is another (distribution's proxy
    stores a cold blob with a second upstream fetch in the background, after the client
    already has its copy: registry/proxy/proxyblobstore.go, ServeBlob)."""
    os.sync()
    time.sleep(0.5)
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline and _busy(0.25) > quiet:
        pass


def _busy(window: float) -> float:
    """The share of all CPUs busy (not idle, not waiting for I/O) over `window` seconds."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        return ticks[3] + ticks[4], sum(ticks)
    idle0, all0 = sample()
    time.sleep(window)
    idle1, all1 = sample()
    return 1 - (idle1 - idle0) / max(1, all1 - all0)


@dataclass
class ColdGet:
    mbs: float  # MB/s the client saw
    cpu: float  # the cache's CPU-s per GB until the client had the last byte
    after: float  # ... and after that, until the machine was quiet again
    upstream_cpu: float  # the upstream's CPU-s per GB, both periods
    upstream_sent: float  # bytes the upstream wrote to sockets, per byte of the layer


def cold_get(hostport: str, pid: int, image: PushedImage, upstream: RegistryProcess,
             scheme: str = "http") -> ColdGet:
    """One cold GET, and what it cost the cache and the upstream, counted until the machine
    is quiet again: a cache may go on working after its answer (distribution's proxy fetches
    the blob a second time to store it, bench/README.md)."""
    layer = image.layers[0]
    warm_file(upstream.blob_path(layer.digest))
    settle()
    assert upstream.pid is not None
    upstream_pid = upstream.pid
    c0 = tree_cpu_seconds(pid) if pid else 0.0
    u0, w0 = tree_cpu_seconds(upstream_pid), written_bytes(upstream_pid)
    status, n, secs = curl_time(f"{scheme}://{hostport}/v2/{image.repo}/blobs/{layer.digest}")
    c1 = tree_cpu_seconds(pid) if pid else 0.0
    if (status, n) != (200, layer.size):
        raise SystemExit(f"{hostport}: cold GET gave {status} with {n} of {layer.size} bytes")
    settle()
    c2 = tree_cpu_seconds(pid) if pid else 0.0
    gb = layer.size / 1e9
    return ColdGet(layer.size / secs / 1e6, (c1 - c0) / gb, (c2 - c1) / gb,
                   (tree_cpu_seconds(upstream_pid) - u0) / gb,
                   (written_bytes(upstream_pid) - w0) / layer.size)


def warm_file(path: Path) -> None:
    """Read a file into the page cache: the upstream then serves each cold layer from memory,
    whichever cache asks (a layer pushed long ago may have left the page cache)."""
    with open(path, "rb") as f:
        while f.read(8 * 1024 * 1024):
            pass


def written_bytes(pid: int) -> int:
    """Bytes the process wrote through write-like system calls, sockets included."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0
