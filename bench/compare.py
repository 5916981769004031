"""mirror beside the caches people run today, same upstream, same machine, same run.

    python -m bench.compare [--big-mb 512] [--runs 7] [--workers 2] [--wrk-seconds 10]

Starts CNCF distribution as the upstream and pushes images to it (large single layers,
multi-layer images for real-client pulls and for herds). Then starts, side by side, each
cache in front of it: mirror with server.workers: --workers, mirror as one process (`mirror1`),
distribution in proxy mode and nginx proxy_cache (bench/nginx.py). Only one is measured at a
time (the machine has two cores); repeated measurements go round-robin across the caches, so a
change in background load hits all of them alike. Measured:

- cold blob: first GET of a large layer (curl to /dev/null); median over --cold-blobs layers;
  in every round the same layer is also fetched straight from the upstream ("direct"), and
  each cache's cold figure is given as a share of that too; also the CPU seconds per GB the
  cache spent until curl had the last byte and after it (until the machine is quiet), and
  the bytes the upstream sent per byte of the layer (distribution's proxy answers with a
  plain copy of one upstream GET and stores the blob from a second GET:
  registry/proxy/proxyblobstore.go, ServeBlob)
- cold blob from an https upstream: the same layers, served over TLS from the same storage by a
  second upstream instance (as Docker Hub and its CDN serve), through caches of their own and
  straight from it with curl (--no-tls skips it); the TLS work (the upstream's encryption, the
  cache's and curl's decryption) shares the same two cores
- warm blob: GET of the first layer, --runs times more; the median is reported
- manifest by tag: HEAD (ab -i) and GET (wrk) requests/s, with the one Accept line containerd
  sends (the client that HEADs)
- real-client pull of a multi-layer image, two ways: `skopeo copy docker://... dir:`, which
  fetches one layer after another, and `skopeo copy ... oci:`, which fetches the layers at once
  (as containerd and dockerd do); cold (median of --cold-pulls images each, same shape, other
  bytes; rounds rotate which cache goes first, and the rounds each cache won are counted), then
  warm (median of three); plus the CPU seconds the cache's processes spent per cold pull
- client ceiling: what curl receives here from a server that sends the same number of bytes
  from one cache-hot 1 MiB buffer, touching no file: no cache can serve a single curl faster
- herd: 20 clients pull a cold image at once (manifest, config, layers), through a fresh
  instance of each cache whose upstream traffic passes a RecordingProxy tap that counts the
  bytes; --herds images one after the other, median wall time, bytes per herd
- before every cold measurement, the upstream's file of the layer is read into the page cache
  (else the first cache of a round, or the caches given older layers, wait for the upstream's
  disk), then os.sync() and a wait until the machine is idle: dirty pages another step left
  (pushes, another cache's download) and a cache still busy after its answer would otherwise
  slow down the next cache measured
- peak RSS: VmHWM summed over the cache's processes (master and workers)

Run by hand on a quiet machine (check `uptime`); never in CI."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import mmap
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import MiB, concurrently, get_hashed, table
from bench.measure import (
    ColdGet,
    cold_get,
    curl_time,
    process_tree,
    settle,
    tree_cpu_seconds,
    tree_rss_mib,
)
from bench.nginx import NginxCache
from tests.support.certs import TestCA
from tests.support.daemons import Containerd
from tests.support.images import MT_DOCKER_MANIFEST, ImagePusher, PushedImage, big_layer
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.registry import RegistryProcess
from tests.support.tap import RecordingProxy

# containerd's HEAD by tag (the client that revalidates tags with HEAD): one comma-joined line.
CONTAINERD_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
                     "application/vnd.docker.distribution.manifest.list.v2+json, "
                     "application/vnd.oci.image.manifest.v1+json, "
                     "application/vnd.oci.image.index.v1+json, */*")
CACHES = ("mirror", "mirror1", "distribution", "nginx")
# Real-client pulls: skopeo 1.9 into dir: takes one layer after another, into oci: all at
# once; `ctr content fetch` is containerd's own pull (all at once), without the unpacking.
LAYOUTS = ("dir", "oci", "ctr")
PULL_NAMES = {"dir": "skopeo pull, layers in turn", "oci": "skopeo pull, layers at once",
              "ctr": "containerd fetch"}


@dataclass
class Images:
    bigs: list[PushedImage]  # one large layer each: the first for warm GETs, each GET cold once
    pull: PushedImage
    cold_pulls: list[PushedImage]  # same shape as `pull`, other bytes: each pulled cold once
    par_pulls: list[PushedImage]  # same shape: each pulled cold once with layers in parallel
    ctr_pulls: list[PushedImage]  # same shape: each pulled cold once by containerd
    herds: list[PushedImage]  # same shape, other bytes: one herd each

    def cold_images(self, layout: str) -> list[PushedImage]:
        return {"dir": [self.pull, *self.cold_pulls], "oci": self.par_pulls,
                "ctr": self.ctr_pulls}[layout]

    @property
    def big(self) -> PushedImage:
        return self.bigs[0]

    @property
    def big_layer(self) -> tuple[str, int]:
        layer = self.big.layers[0]
        return layer.digest, layer.size


@dataclass
class Pulls:
    """Real-client pulls of one kind through one cache."""

    cold_runs: list[float] = field(default_factory=list)  # seconds, one per image
    cold_cpu: list[float] = field(default_factory=list)  # CPU seconds of the cache per pull
    warm_runs: list[float] = field(default_factory=list)
    # rounds in which a mirror's cold pull ("mirror", "mirror1") was faster than this cache's
    beaten_by: dict[str, int] = field(default_factory=dict)

    @property
    def cold(self) -> float:
        return statistics.median(self.cold_runs) if self.cold_runs else 0.0

    @property
    def warm(self) -> float:
        return statistics.median(self.warm_runs) if self.warm_runs else 0.0

    @property
    def cpu(self) -> float:
        return statistics.mean(self.cold_cpu) if self.cold_cpu else 0.0


@dataclass
class Result:
    cache: str
    cold: list[ColdGet] = field(default_factory=list)  # each cold GET: MB/s and what it cost
    cold_tls: list[ColdGet] = field(default_factory=list)  # the same from the https upstream
    warm_blob: float = 0.0  # MB/s, median of runs
    warm_runs: list[float] = field(default_factory=list)
    head_rps: float = 0.0
    head_errors: int = 0
    get_rps: float = 0.0
    # skopeo pulls by layout: "dir" (one layer after another), "oci" (layers at once)
    pulls: dict[str, Pulls] = field(default_factory=dict)
    herd_wall: float = 0.0  # median
    herd_walls: list[float] = field(default_factory=list)
    herd_upstream_mib: float = 0.0  # per herd (mean)
    herd_upstream_gets: float = 0.0  # per herd (mean)
    rss_mib: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def cold_runs(self) -> list[float]:  # MB/s of each cold GET
        return [g.mbs for g in self.cold]

    @property
    def cold_blob(self) -> float:  # MB/s, median of the cold GETs
        return statistics.median(self.cold_runs) if self.cold else 0.0

    @property
    def cold_tls_blob(self) -> float:  # MB/s, median of the cold GETs from the https upstream
        return statistics.median(g.mbs for g in self.cold_tls) if self.cold_tls else 0.0


# -- the caches ---------------------------------------------------------------------------------

@dataclass
class Running:
    name: str
    hostport: str
    pid: int


@contextmanager
def start_cache(name: str, upstream_url: str, work: Path, workers: int) -> Iterator[Running]:
    """`mirror` runs server.workers: `workers`; `mirror1` one process."""
    root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    if name.startswith("mirror"):
        workers = 1 if name == "mirror1" else workers
        extra: dict[str, object] = {"server": {"workers": workers}} if workers > 1 else {}
        cfg = mirror_config({"docker.io": upstream_url}, root / "cache",
                            log={"level": "warning"}, **extra)
        with MirrorProcess(cfg, workdir=root / "proc") as m:
            assert m.proc is not None
            _wait_workers(m.proc.pid, workers)
            yield Running(name, m.hostport, m.proc.pid)
    elif name == "distribution":
        with RegistryProcess(proxy_remote_url=upstream_url, root=root, log_level="error") as reg:
            assert reg.pid is not None
            yield Running(name, f"127.0.0.1:{reg.port}", reg.pid)
    else:
        with NginxCache(upstream_url, root / "nginx") as ng:
            assert ng.pid is not None
            yield Running(name, f"127.0.0.1:{ng.port}", ng.pid)
    shutil.rmtree(root, ignore_errors=True)


def _wait_workers(pid: int, workers: int) -> None:
    """With workers > 1 the supervisor answers /healthz only through its workers; give every
    worker time to bind before measuring, so none of them is still importing."""
    if workers <= 1:
        return
    deadline = time.monotonic() + 30
    while len(process_tree(pid)) < workers + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)


# -- measurements ------------------------------------------------------------------------------

@dataclass
class Direct:
    """Cold layers fetched straight from the upstream, one per round of cold GETs."""

    url: str
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else 0.0

    def measure(self, image: PushedImage, upstream: RegistryProcess) -> None:
        scheme, hostport = self.url.split("://", 1)
        self.runs.append(cold_get(hostport, 0, image, upstream, scheme).mbs)


class CeilingServer:
    """The client ceiling: an HTTP server on a thread that answers every GET with `size` bytes
    sent from one 1 MiB buffer in memory, over and over (no file, no parsing beyond the request
    line). The buffer stays in the CPU cache, which no server sending a file's bytes has: what
    curl receives from it is more than any cache can deliver to one curl here. (Sends of 1 MiB
    were the fastest of 64 KiB to 16 MiB on this machine; bench/README.md.)

    With `path`, the file ceiling instead: the same server sends that file's bytes (the
    layer's, in the page cache) in 1 MiB slices of a mapping with blocking `sendall`, the
    fastest of the ways a sender of a file's bytes was measured here (bench/README.md): what
    one curl receives of this blob from a server that does nothing else."""

    def __init__(self, size: int, path: Path | None = None) -> None:
        self.size = size
        self.path = path
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.runs: list[float] = []  # MB/s
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n"
                             "Connection: close\r\n\r\n".encode())
                if self.path is None:
                    self._send_buffer(conn)
                else:
                    self._send_file(conn, self.path)

    def _send_buffer(self, conn: socket.socket) -> None:
        buf = memoryview(bytes(MiB))
        left = self.size
        while left:
            n = min(left, len(buf))
            conn.sendall(buf[:n])
            left -= n

    def _send_file(self, conn: socket.socket, path: Path) -> None:
        with path.open("rb") as f, mmap.mmap(f.fileno(), self.size, prot=mmap.PROT_READ) as m, \
                memoryview(m) as view:
            for pos in range(0, self.size, MiB):
                with view[pos:pos + MiB] as piece:
                    conn.sendall(piece)

    def measure(self) -> None:
        status, n, secs = curl_time(self.url)
        if (status, n) != (200, self.size):
            what = "memory" if self.path is None else "file"
            raise SystemExit(f"{what} ceiling server: {status} with {n} of {self.size} bytes")
        self.runs.append(self.size / secs / 1e6)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else 0.0

    def close(self) -> None:
        self.sock.close()


class Ceilings:
    """The two client ceilings, measured together: from memory, and from the layer's file."""

    def __init__(self, size: int, path: Path | None) -> None:
        self.memory = CeilingServer(size)
        self.file = CeilingServer(size, path) if path is not None else None

    def measure(self) -> None:
        self.memory.measure()
        if self.file is not None:
            self.file.measure()

    def close(self) -> None:
        self.memory.close()
        if self.file is not None:
            self.file.close()


def measure_cold_blob(c: Running, image: PushedImage, upstream: RegistryProcess, r: Result) -> None:
    g = cold_get(c.hostport, c.pid, image, upstream)
    r.cold.append(g)


def check_warm_blob(c: Running, images: Images) -> None:
    digest, _ = images.big_layer
    status, _, got = get_hashed(c.hostport, f"/v2/{images.big.repo}/blobs/{digest}")
    if (status, got) != (200, digest):
        raise SystemExit(f"{c.name}: warm blob served wrong bytes ({status}, {got})")


def warm_blob(c: Running, images: Images, r: Result) -> None:
    digest, size = images.big_layer
    status, n, secs = curl_time(f"http://{c.hostport}/v2/{images.big.repo}/blobs/{digest}")
    if (status, n) != (200, size):
        raise SystemExit(f"{c.name}: warm blob GET gave {status} with {n} of {size} bytes")
    r.warm_runs.append(size / secs / 1e6)
    r.warm_blob = statistics.median(r.warm_runs)


WRK_SCRIPT = """
wrk.headers["Accept"] = "%s"
"""


def head_rps(c: Running, image: PushedImage, seconds: int, work: Path, r: Result) -> None:
    """Requests/s of HEAD and GET of a manifest by tag, with containerd's Accept line.

    HEAD is measured with ApacheBench (`ab -i`): Debian's wrk 4.1.0 waits for a body after a
    HEAD response that carries Content-Length (every registry's does), so it counts 0
    requests. wrk measures GET by tag, the same lookup plus the body."""
    url = f"http://{c.hostport}/v2/{image.repo}/manifests/{image.tag}"
    req = urllib.request.Request(url, method="HEAD", headers={"Accept": CONTAINERD_ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as resp:
        if resp.headers.get("Docker-Content-Digest") != image.digest:
            raise SystemExit(f"{c.name}: HEAD by tag gave digest "
                             f"{resp.headers.get('Docker-Content-Digest')}, want {image.digest}")
    # 32 connections on one client thread: the other core is the server's.
    out = subprocess.run(["ab", "-i", "-k", "-q", "-c", "32", "-t", str(seconds), "-n", "10000000",
                          "-H", f"Accept: {CONTAINERD_ACCEPT}", url],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests per second:"):
            r.head_rps = float(line.split()[3])
        elif line.startswith(("Non-2xx responses:", "Failed requests:")):
            r.head_errors += int(line.split()[-1])
    script = work / "get.lua"
    script.write_text(WRK_SCRIPT % CONTAINERD_ACCEPT)
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            r.get_rps = float(line.split()[1])
        elif "Non-2xx" in line:
            r.head_errors += int(line.split()[-1])
        elif "Socket errors" in line:
            r.notes.append("wrk " + line.strip())


def skopeo_pull(hostport: str, image: PushedImage, dest: Path, layout: str = "dir") -> float:
    """Seconds for `skopeo copy` of the image. layout "dir": skopeo 1.9 fetches one blob after
    another; "oci" (an OCI layout, which takes blobs concurrently): all layers at once."""
    shutil.rmtree(dest, ignore_errors=True)
    target = f"dir:{dest}" if layout == "dir" else f"oci:{dest}:pulled"
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", "--quiet",
         f"docker://{hostport}/{image.repo}:{image.tag}", target],
        capture_output=True, text=True, check=False)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"skopeo pull from {hostport} failed: {proc.stderr.strip()[-500:]}")
    if layout == "dir":
        manifest = json.loads((dest / "manifest.json").read_bytes())
    else:
        index = json.loads((dest / "index.json").read_bytes())
        algo, hexd = index["manifests"][0]["digest"].split(":")
        manifest = json.loads((dest / "blobs" / algo / hexd).read_bytes())
        for b in [manifest["config"], *manifest["layers"]]:  # skopeo checked these; once more
            algo, hexd = b["digest"].split(":")
            if (dest / "blobs" / algo / hexd).stat().st_size != b["size"]:
                raise SystemExit(f"skopeo pull from {hostport}: {b['digest']} has a wrong size")
    # Into an OCI layout skopeo converts a Docker manifest, and the config with it (new
    # digest); the layers are copied as they are.
    blobs = manifest["layers"] if layout == "oci" else [manifest["config"], *manifest["layers"]]
    got = {b["digest"] for b in blobs}
    want = {b.digest for b in (image.layers if layout == "oci" else image.blobs)}
    if got != want:
        raise SystemExit(f"skopeo pull from {hostport}: blobs {got} != {want}")
    shutil.rmtree(dest, ignore_errors=True)
    return secs


def ctr_pull(daemon: Containerd, hostport: str, image: PushedImage, namespace: str) -> float:
    """Seconds for containerd to fetch the image into a namespace of its own (content is not
    shared between namespaces here, so every blob is fetched), checked by digest."""
    t0 = time.perf_counter()
    proc = daemon.ctr("content", "fetch", "--plain-http", f"{hostport}/{image.repo}:{image.tag}",
                      namespace=namespace, check=False)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ctr content fetch from {hostport} failed: {proc.stderr.strip()[-500:]}")
    listed = daemon.ctr("content", "ls", "-q", namespace=namespace).stdout.split()
    missing = {b.digest for b in image.blobs} - set(listed)
    if missing:
        raise SystemExit(f"ctr content fetch from {hostport}: {sorted(missing)} not stored")
    return secs


def herd(c: Running, image: PushedImage, clients: int, tap: RecordingProxy,
         r: Result) -> None:
    """`clients` clients at once, each: manifest by tag, then config and layers in order on
    one keep-alive connection (curl). Client 0 is a Python client that hashes everything."""
    base = f"http://{c.hostport}/v2/{image.repo}"
    blobs = [f"{base}/blobs/{b.digest}" for b in image.blobs]

    def manifest() -> bytes:
        req = urllib.request.Request(f"{base}/manifests/{image.tag}",
                                     headers={"Accept": MT_DOCKER_MANIFEST})
        with urllib.request.urlopen(req, timeout=300) as resp:
            body: bytes = resp.read()
            return body

    def client(i: int) -> object:
        body = manifest()
        if i == 0:
            if body != image.manifest:
                return "manifest differs"
            for b in image.blobs:
                status, _, got = get_hashed(c.hostport, f"/v2/{image.repo}/blobs/{b.digest}")
                if (status, got) != (200, b.digest):
                    return f"blob {b.digest}: {status} {got}"
            return "ok"
        cmd = ["curl", "-s", "-w", "%{http_code} %{size_download}\\n"]
        for u in blobs:
            cmd += ["-o", "/dev/null", u]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.split()
        want = [x for b in image.blobs for x in ("200", str(b.size))]
        return "ok" if out == want else f"curl got {out}"

    settle()
    tap.clear()
    wall, results = concurrently(clients, client)
    bad = [x for x in results if x != "ok"]
    if bad:
        raise SystemExit(f"{c.name}: {len(bad)} herd clients failed: {bad[:3]}")
    time.sleep(1.0)
    tap.wait_idle(60)
    r.herd_walls.append(wall)
    r.herd_wall = statistics.median(r.herd_walls)
    n = len(r.herd_walls)
    r.herd_upstream_mib += (tap.bytes_sent(kind="blob") / MiB - r.herd_upstream_mib) / n
    r.herd_upstream_gets += (tap.count(method="GET", kind="blob") - r.herd_upstream_gets) / n


# -- the run ----------------------------------------------------------------------------------

def push_images(upstream: str, args: argparse.Namespace) -> Images:
    p = ImagePusher(upstream)
    bigs = [p.push_image("bench/big" if i == 0 else f"bench/big{i}", "latest",
                         [big_layer(args.big_mb, seed="bench-big" if i == 0 else f"bench-big{i}")])
            for i in range(0 if args.pulls_only else args.cold_blobs)]
    layers = (64, 48, 32, 16, 8)
    pull = p.push_image("bench/app", "1", [big_layer(mb, seed=f"bench-app-{mb}")
                                           for mb in layers])
    cold = [p.push_image(f"bench/app{i}", "1", [big_layer(mb, seed=f"bench-app{i}-{mb}")
                                                for mb in layers])
            for i in range(args.cold_pulls - 1)]
    par, ctr = ([p.push_image(f"bench/{kind}{i}", "1", [big_layer(mb, seed=f"bench-{kind}{i}-{mb}")
                                                        for mb in layers])
                 for i in range(args.cold_pulls)] for kind in ("par", "ctr"))
    herds = [p.push_image(f"bench/herd{i}", "1", [big_layer(mb, seed=f"bench-herd{i}-{mb}")
                                                   for mb in (48, 32, 16)])
             for i in range(0 if args.pulls_only else args.herds)]
    return Images(bigs, pull, cold, par, ctr, herds)


def rotated(names: list[str], i: int) -> list[str]:
    """Round i starts with another cache: none is always first after a pause."""
    k = i % len(names)
    return names[k:] + names[:k]


def side_by_side(names: list[str], upstream: RegistryProcess, images: Images,
                 args: argparse.Namespace, work: Path, ceiling: Ceilings,
                 direct: Direct, tls: tuple[RegistryProcess, Direct] | None) -> dict[str, Result]:
    """Every cache running at once, idle while another is measured; repeated measurements go
    round-robin (each round starting with the next cache), so a change in the machine's
    background load hits every cache alike."""
    results = {n: Result(n) for n in names}
    if tls is not None:
        tls_blobs(names, images, args, work, results, *tls)
    with ExitStack() as stack:
        running = {n: stack.enter_context(start_cache(n, upstream.url, work, args.workers))
                   for n in names}
        if not args.pulls_only:
            blobs(names, running, images, args, ceiling, results, direct, upstream)
        daemon = None
        if shutil.which("containerd") and shutil.which("ctr"):
            daemon = Containerd(work / "containerd")
            daemon.start()
            stack.callback(daemon.stop)
        for layout in LAYOUTS:
            if layout == "ctr" and daemon is None:
                print("   containerd or ctr not installed: no ctr pulls", flush=True)
                continue
            pull_rounds(names, running, images, layout, work, results, daemon)
        if args.pulls_only:
            return results
        for n in names:
            r = results[n]
            head_rps(running[n], images.pull, args.wrk_seconds, work, r)
            print(f"   {n}: by tag: HEAD {r.head_rps:.0f} req/s, GET {r.get_rps:.0f} req/s "
                  f"({r.head_errors} errors)", flush=True)
        for n in names:
            results[n].rss_mib = tree_rss_mib(running[n].pid)
    for n in names:  # a fresh instance each, its upstream traffic counted by a tap
        r = results[n]
        with RecordingProxy(upstream.url) as tap, start_cache(n, tap.url, work,
                                                              args.workers) as c:
            for image in images.herds:
                herd(c, image, args.clients, tap, r)
            r.rss_mib = max(r.rss_mib, tree_rss_mib(c.pid))
        print(f"   {n}: herd of {args.clients}: {r.herd_wall:.2f}s "
              f"{[round(x, 2) for x in r.herd_walls]}, upstream {r.herd_upstream_mib:.0f} MiB "
              f"in {r.herd_upstream_gets:.0f} GETs per herd", flush=True)
    return results


def tls_blobs(names: list[str], images: Images, args: argparse.Namespace, work: Path,
              results: dict[str, Result], upstream: RegistryProcess, direct: Direct) -> None:
    """The large layers cold once more, from the same storage served over https (as Docker Hub
    and its CDN serve), through caches of their own, and straight from it."""
    with ExitStack() as stack:
        running = {n: stack.enter_context(start_cache(n, upstream.url, work, args.workers))
                   for n in names}
        for i, image in enumerate(images.bigs):
            for n in rotated([*names, "direct"], i):
                if n == "direct":
                    direct.measure(image, upstream)
                else:
                    results[n].cold_tls.append(cold_get(running[n].hostport, running[n].pid,
                                                        image, upstream))
    print(f"   https upstream: straight from it {direct.median:.0f} MB/s "
          f"{[round(x) for x in direct.runs]}; " + ", ".join(
              f"{n} {results[n].cold_tls_blob:.0f} {[round(g.mbs) for g in results[n].cold_tls]}"
              for n in names), flush=True)


def blobs(names: list[str], running: dict[str, Running], images: Images,
          args: argparse.Namespace, ceiling: Ceilings, results: dict[str, Result],
          direct: Direct, upstream: RegistryProcess) -> None:
    """Each large layer cold once through every cache and straight from the upstream, then
    the first one warm, round-robin, with the client ceiling measured in every round."""
    for i, image in enumerate(images.bigs):  # round-robin, each blob cold
        for n in rotated([*names, "direct"], i):
            if n == "direct":
                direct.measure(image, upstream)
            else:
                measure_cold_blob(running[n], image, upstream, results[n])
    for n in names:
        check_warm_blob(running[n], images)
    for i in range(args.runs):
        for n in rotated(names, i):
            warm_blob(running[n], images, results[n])
        ceiling.measure()
    print(f"   straight from the upstream (cold layers): {direct.median:.0f} MB/s "
          f"{[round(x) for x in direct.runs]}", flush=True)
    print(f"   client ceiling (memory -> curl): {ceiling.memory.median:.0f} MB/s "
          f"{[round(x) for x in ceiling.memory.runs]}", flush=True)
    if ceiling.file is not None:
        print(f"   file ceiling (page-cached layer -> curl): {ceiling.file.median:.0f} MB/s "
              f"{[round(x) for x in ceiling.file.runs]}", flush=True)
    for n in names:
        r = results[n]
        print(f"   {n}: blob cold {r.cold_blob:.0f} MB/s {[round(x) for x in r.cold_runs]}, "
              f"warm {r.warm_blob:.0f} MB/s {[round(x) for x in r.warm_runs]}", flush=True)


def pull_rounds(names: list[str], running: dict[str, Running], images: Images, layout: str,
                work: Path, results: dict[str, Result], daemon: Containerd | None) -> None:
    """Each cold image through every cache (round i starts with cache i), then three warm
    pulls of the first. CPU seconds are read a second after the pull: distribution stores a
    blob with a second download after it answered, and that is part of its cost."""
    for n in names:
        results[n].pulls[layout] = Pulls()
    cold = images.cold_images(layout)
    count = itertools.count()

    def pull(n: str, image: PushedImage) -> float:
        if layout != "ctr":
            return skopeo_pull(running[n].hostport, image, work / f"pull-{n}", layout)
        assert daemon is not None
        return ctr_pull(daemon, running[n].hostport, image, f"{n}-{next(count)}")

    for i, image in enumerate(cold):
        secs: dict[str, float] = {}
        for n in rotated(names, i):
            settle()
            f = results[n].pulls[layout]
            cpu0 = tree_cpu_seconds(running[n].pid)
            secs[n] = pull(n, image)
            time.sleep(1.0)
            f.cold_runs.append(secs[n])
            f.cold_cpu.append(tree_cpu_seconds(running[n].pid) - cpu0)
        for mine in ("mirror", "mirror1"):
            for n, t in secs.items():
                if mine in secs and not n.startswith("mirror"):
                    beaten = results[n].pulls[layout].beaten_by
                    beaten[mine] = beaten.get(mine, 0) + (secs[mine] < t)
    time.sleep(1.0)
    for i in range(3):
        for n in rotated(names, i):
            results[n].pulls[layout].warm_runs.append(pull(n, cold[0]))
    for n in names:
        f = results[n].pulls[layout]
        print(f"   {n}: {layout} pull: cold {f.cold:.2f}s {[round(x, 2) for x in f.cold_runs]}"
              f" ({f.cpu:.2f} CPU-s each), warm {f.warm:.2f}s "
              f"{[round(x, 2) for x in f.warm_runs]}", flush=True)


def pulls(r: Result, layout: str) -> Pulls:
    return r.pulls.get(layout) or Pulls()


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(results: dict[str, Result], images: Images, args: argparse.Namespace,
           ceiling: Ceilings, direct: Direct, tls_direct: Direct | None) -> str:
    m, d, n = results.get("mirror"), results.get("distribution"), results.get("nginx")
    m1 = results.get("mirror1")
    herd_mib = sum(b.size for b in images.herds[0].blobs) / MiB if images.herds else 0.0

    def row(label: str, get: Callable[[Result], float], fmt: str,
            lower_is_better: bool = False) -> list[object]:
        vals = [get(results[c]) for c in results]
        cells: list[object] = [label]
        cells += [format(v, fmt) for v in vals]
        for mine, other in ((m, d), (m, n), (m1, d)):
            if mine is None or other is None:
                cells.append("-")
            elif lower_is_better:
                cells.append(ratio(get(other), get(mine)))
            else:
                cells.append(ratio(get(mine), get(other)))
        return cells

    def pull_rows(layout: str, name: str) -> list[list[object]]:
        def of(r: Result) -> Pulls:
            return pulls(r, layout)
        return [row(f"{name} cold s (median)", lambda r: of(r).cold, ".2f", True),
                row("  cache CPU-s per cold pull (mean)", lambda r: of(r).cpu, ".2f", True),
                row(f"{name} warm s (median)", lambda r: of(r).warm, ".2f", True)]

    rows = [
        row("warm blob MB/s (median)", lambda r: r.warm_blob, ".0f"),
        row("cold blob MB/s (median)", lambda r: r.cold_blob, ".0f"),
        row(f"cold blob, share of direct upstream ({direct.median:.0f} MB/s, same rounds)",
            lambda r: r.cold_blob / direct.median if direct.median else 0.0, ".2f"),
        row("  cache CPU-s/GB of a cold blob, to the answer (median)",
            lambda r: statistics.median(g.cpu for g in r.cold) if r.cold else 0.0, ".2f", True),
        row("  cache CPU-s/GB of a cold blob, after the answer (median)",
            lambda r: statistics.median(g.after for g in r.cold) if r.cold else 0.0, ".2f", True),
        row("  upstream bytes sent per byte of a cold blob (median)",
            lambda r: statistics.median(g.upstream_sent for g in r.cold) if r.cold else 0.0,
            ".2f", True),
        *([row("cold blob from an https upstream MB/s (median)", lambda r: r.cold_tls_blob,
               ".0f"),
           row(f"cold blob from https, share of direct ({tls_direct.median:.0f} MB/s, same "
               "rounds)", lambda r: r.cold_tls_blob / tls_direct.median
               if tls_direct.median else 0.0, ".2f"),
           row("  cache CPU-s/GB of a cold blob from https, to the answer + after (median)",
               lambda r: statistics.median(g.cpu + g.after for g in r.cold_tls)
               if r.cold_tls else 0.0, ".2f", True),
           row("  upstream bytes sent per byte of a cold blob from https (median)",
               lambda r: statistics.median(g.upstream_sent for g in r.cold_tls)
               if r.cold_tls else 0.0, ".2f", True)]
          if tls_direct is not None and tls_direct.runs else []),
        row("HEAD manifest by tag req/s (ab)", lambda r: r.head_rps, ".0f"),
        row("GET manifest by tag req/s (wrk)", lambda r: r.get_rps, ".0f"),
        *(pull_row for layout, name in PULL_NAMES.items() for pull_row in pull_rows(layout, name)),
        row(f"herd of {args.clients} wall s (median)", lambda r: r.herd_wall, ".2f",
            lower_is_better=True),
        row("herd upstream MiB (per herd)", lambda r: r.herd_upstream_mib, ".0f",
            lower_is_better=True),
        row("herd upstream blob GETs (per herd)", lambda r: r.herd_upstream_gets, ".0f",
            lower_is_better=True),
        row("peak RSS MiB (all processes)", lambda r: r.rss_mib, ".0f", lower_is_better=True),
    ]
    if args.pulls_only:
        rows = [r for r in rows if "pull" in str(r[0]) or "CPU-s" in str(r[0])
                or "fetch" in str(r[0])]
    big_mib = images.big_layer[1] / MiB if images.bigs else 0.0
    herd_layers = len(images.herds[0].layers) if images.herds else 0
    head = (f"large layer {big_mib:.0f} MiB; pull image "
            f"{len(images.pull.layers)} layers, {sum(b.size for b in images.pull.blobs) / MiB:.0f}"
            f" MiB; herd image {herd_layers} layers, {herd_mib:.0f} MiB; mirror "
            f"server.workers: {args.workers}; ratios are mirror's advantage (>1 is better)")
    notes = [f"{r.cache}: {x}" for r in results.values() for x in r.notes]
    mem, fil = ceiling.memory, ceiling.file
    if mem.runs:
        notes.append(f"client ceiling: curl receives {mem.median:.0f} MB/s (median of "
                     f"{len(mem.runs)}, best {max(mem.runs):.0f}) from a server "
                     "sending one cache-hot 1 MiB buffer, no file involved")
    if fil is not None and fil.runs:
        notes.append(f"file ceiling: curl receives {fil.median:.0f} MB/s (median of "
                     f"{len(fil.runs)}, best {max(fil.runs):.0f}) from a server that does "
                     "nothing but send the page-cached layer (1 MiB slices of a mapping, "
                     "blocking sendall)")
    if direct.runs:
        notes.append(f"direct: curl receives each cold layer straight from the upstream at "
                     f"{direct.median:.0f} MB/s (median of {len(direct.runs)}, "
                     f"{[round(x) for x in direct.runs]})")
    if d is not None and m is not None and mem.runs:
        share = (f", {m.warm_blob / fil.median:.0%} of the file ceiling"
                 if fil is not None and fil.runs else "")
        notes.append(f"2x distribution's warm blob would be {2 * d.warm_blob:.0f} MB/s; mirror "
                     f"serves {m.warm_blob:.0f} MB/s, {m.warm_blob / mem.median:.0%} of the "
                     f"client ceiling{share}")
    for layout, how in PULL_NAMES.items():
        for r in results.values():
            f = r.pulls.get(layout)
            if f is None:
                continue
            for mine, won in f.beaten_by.items():
                label = "mirror (1 process)" if mine == "mirror1" else f"mirror ({args.workers} workers)"
                notes.append(f"cold pull, {how}: {label} faster than {r.cache} in {won} of "
                             f"{len(f.cold_runs)} rounds")
    columns = [f"mirror ({args.workers} workers)" if c == "mirror" else
               "mirror (1 process)" if c == "mirror1" else c for c in results]
    return "\n".join([head, "", table(["measure", *columns, "mirror vs distribution",
                                       "mirror vs nginx", "mirror (1 process) vs distribution"],
                                      rows),
                      *(["", *notes] if notes else [])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mb", type=int, default=512)
    ap.add_argument("--runs", type=int, default=7, help="warm blob GETs per cache")
    ap.add_argument("--workers", type=int, default=2, help="mirror server.workers")
    ap.add_argument("--clients", type=int, default=20, help="herd size")
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--cold-pulls", type=int, default=6,
                    help="cold skopeo pulls per cache and layout, each of another image (median)")
    ap.add_argument("--cold-blobs", type=int, default=2,
                    help="cold GETs of a large layer per cache, each of another layer (median)")
    ap.add_argument("--herds", type=int, default=2,
                    help="herds per cache, each on another cold image (median wall time)")
    ap.add_argument("--only", nargs="*", choices=CACHES, default=list(CACHES),
                    help="mirror1: mirror as one process, beside server.workers: --workers")
    ap.add_argument("--pulls-only", action="store_true",
                    help="only the real-client pulls (no large blobs, HEAD or herds first): an "
                         "A/B of cold pulls without the memory churn of the other steps")
    ap.add_argument("--no-tls", action="store_true",
                    help="skip the cold layers from an https upstream")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"warning: load average {load:.2f}; figures from a busy machine are noise")
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    results: dict[str, Result] = {}
    try:
        with RegistryProcess(log_level="error", root=work / "upstream") as upstream, \
                ExitStack() as tls_stack:
            images = push_images(upstream.url, args)
            ceiling = Ceilings(images.big_layer[1] if images.bigs else MiB,
                               upstream.blob_path(images.big_layer[0])
                               if images.bigs else None)
            direct = Direct(upstream.url)
            tls = None
            if not args.no_tls and not args.pulls_only and images.bigs:
                # The same storage served over https by a second instance; the caches and
                # curl trust its test CA.
                ca = TestCA(work / "ca")
                issued = ca.server()
                os.environ["SSL_CERT_FILE"] = os.environ["CURL_CA_BUNDLE"] = str(ca.cert)
                https = tls_stack.enter_context(RegistryProcess(
                    log_level="error", root=work / "upstream", tls=(issued.cert, issued.key)))
                tls = (https, Direct(https.url))
            results = side_by_side(list(args.only), upstream, images, args, work, ceiling,
                                   direct, tls)
            ceiling.close()
        print()
        print(report(results, images, args, ceiling, direct, tls[1] if tls else None))
        if args.json:
            raw = {k: dataclasses.asdict(v) for k, v in results.items()}
            raw["client_ceiling_mb_s"] = ceiling.memory.runs  # type: ignore[assignment]
            if ceiling.file is not None:
                raw["file_ceiling_mb_s"] = ceiling.file.runs  # type: ignore[assignment]
            raw["direct_cold_mb_s"] = direct.runs  # type: ignore[assignment]
            if tls is not None:
                raw["direct_cold_https_mb_s"] = tls[1].runs  # type: ignore[assignment]
            args.json.write_text(json.dumps(raw, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
