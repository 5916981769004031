"""mirror beside the caches people run today, same upstream, same machine, same run.

    python -m bench.compare [--big-mb 512] [--runs 7] [--workers 2] [--wrk-seconds 10]

Starts CNCF distribution as the upstream and pushes images to it (large single layers,
multi-layer images for real-client pulls and for herds). Then starts, side by side, each
cache in front of it: mirror with server.workers: --workers, mirror as one process (`mirror1`),
distribution in proxy mode and nginx proxy_cache (bench/nginx.py). Only one is measured at a
time (the machine has two cores); repeated measurements go round-robin across the caches, so a
change in background load hits all of them alike. Measured:

- cold blob: first GET of a large layer (curl to /dev/null); median over --cold-blobs layers
- warm blob: GET of the first layer, --runs times more; the median is reported
- manifest by tag: HEAD (ab -i) and GET (wrk) requests/s, with the one Accept line containerd
  sends (the client that HEADs)
- real-client pull: `skopeo copy docker://... dir:` of a multi-layer image, cold (median of
  --cold-pulls images with the same shape and other bytes), then warm (median of three)
- herd: 20 clients pull a cold image at once (manifest, config, layers), through a fresh
  instance of each cache whose upstream traffic passes a RecordingProxy tap that counts the
  bytes; --herds images one after the other, median wall time, bytes per herd
- before every cold measurement, os.sync(): dirty pages another step left (pushes, another
  cache's download) would otherwise slow down the next cache that writes
- peak RSS: VmHWM summed over the cache's processes (master and workers)

Run by hand on a quiet machine (check `uptime`); never in CI."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import MiB, concurrently, get_hashed, peak_rss_mib, table
from bench.nginx import NginxCache
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


@dataclass
class Images:
    bigs: list[PushedImage]  # one large layer each: the first for warm GETs, each GET cold once
    pull: PushedImage
    cold_pulls: list[PushedImage]  # same shape as `pull`, other bytes: each pulled cold once
    herds: list[PushedImage]  # same shape, other bytes: one herd each

    @property
    def big(self) -> PushedImage:
        return self.bigs[0]

    @property
    def big_layer(self) -> tuple[str, int]:
        layer = self.big.layers[0]
        return layer.digest, layer.size


@dataclass
class Result:
    cache: str
    cold_blob: float = 0.0  # MB/s, median of runs
    cold_runs: list[float] = field(default_factory=list)
    warm_blob: float = 0.0  # MB/s, median of runs
    warm_runs: list[float] = field(default_factory=list)
    head_rps: float = 0.0
    head_errors: int = 0
    get_rps: float = 0.0
    pull_cold: float = 0.0  # seconds, median
    pull_cold_runs: list[float] = field(default_factory=list)
    pull_warm: float = 0.0
    pull_warm_runs: list[float] = field(default_factory=list)
    herd_wall: float = 0.0  # median
    herd_walls: list[float] = field(default_factory=list)
    herd_upstream_mib: float = 0.0  # per herd (mean)
    herd_upstream_gets: float = 0.0  # per herd (mean)
    rss_mib: float = 0.0
    notes: list[str] = field(default_factory=list)


# -- the caches ---------------------------------------------------------------------------------

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

def curl_time(url: str, headers: tuple[str, ...] = ()) -> tuple[int, int, float]:
    """(status, bytes, seconds) of one GET into /dev/null, timed by curl itself."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
           url]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


def settle() -> None:
    """Write back every dirty page first: what the previous step (a push, another cache's
    download) left for the disk would otherwise slow down whoever writes next."""
    os.sync()
    time.sleep(0.5)


def cold_blob(c: Running, image: PushedImage, r: Result) -> None:
    layer = image.layers[0]
    settle()
    status, n, secs = curl_time(f"http://{c.hostport}/v2/{image.repo}/blobs/{layer.digest}")
    if (status, n) != (200, layer.size):
        raise SystemExit(f"{c.name}: cold blob GET gave {status} with {n} of {layer.size} bytes")
    r.cold_runs.append(layer.size / secs / 1e6)
    r.cold_blob = statistics.median(r.cold_runs)


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


def skopeo_pull(hostport: str, image: PushedImage, dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", "--quiet",
         f"docker://{hostport}/{image.repo}:{image.tag}", f"dir:{dest}"],
        capture_output=True, text=True, check=False)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"skopeo pull from {hostport} failed: {proc.stderr.strip()[-500:]}")
    manifest = json.loads((dest / "manifest.json").read_bytes())
    got = {b["digest"] for b in [manifest["config"], *manifest["layers"]]}
    want = {b.digest for b in image.blobs}
    if got != want:
        raise SystemExit(f"skopeo pull from {hostport}: blobs {got} != {want}")
    shutil.rmtree(dest, ignore_errors=True)
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
            for i in range(args.cold_blobs)]
    layers = (64, 48, 32, 16, 8)
    pull = p.push_image("bench/app", "1", [big_layer(mb, seed=f"bench-app-{mb}")
                                           for mb in layers])
    cold = [p.push_image(f"bench/app{i}", "1", [big_layer(mb, seed=f"bench-app{i}-{mb}")
                                                for mb in layers])
            for i in range(args.cold_pulls - 1)]
    herds = [p.push_image(f"bench/herd{i}", "1", [big_layer(mb, seed=f"bench-herd{i}-{mb}")
                                                   for mb in (48, 32, 16)])
             for i in range(args.herds)]
    return Images(bigs, pull, cold, herds)


def rotated(names: list[str], i: int) -> list[str]:
    """Round i starts with another cache: none is always first after a pause."""
    k = i % len(names)
    return names[k:] + names[:k]


def side_by_side(names: list[str], upstream: RegistryProcess, images: Images,
                 args: argparse.Namespace, work: Path) -> dict[str, Result]:
    """Every cache running at once, idle while another is measured; repeated measurements go
    round-robin (each round starting with the next cache), so a change in the machine's
    background load hits every cache alike."""
    results = {n: Result(n) for n in names}
    with ExitStack() as stack:
        running = {n: stack.enter_context(start_cache(n, upstream.url, work, args.workers))
                   for n in names}
        for i, image in enumerate(images.bigs):  # round-robin, each blob cold
            for n in rotated(names, i):
                cold_blob(running[n], image, results[n])
        time.sleep(1.0)  # distribution and nginx finish writing their cache file after replying
        for n in names:
            check_warm_blob(running[n], images)
        for i in range(args.runs):
            for n in rotated(names, i):
                warm_blob(running[n], images, results[n])
        for n in names:
            r = results[n]
            print(f"   {n}: blob cold {r.cold_blob:.0f} MB/s {[round(x) for x in r.cold_runs]}, "
                  f"warm {r.warm_blob:.0f} MB/s {[round(x) for x in r.warm_runs]}", flush=True)
        for i, image in enumerate([images.pull, *images.cold_pulls]):  # each image cold
            for n in rotated(names, i):
                r = results[n]
                settle()
                r.pull_cold_runs.append(skopeo_pull(running[n].hostport, image,
                                                    work / f"pull-{n}"))
                r.pull_cold = statistics.median(r.pull_cold_runs)
        time.sleep(1.0)
        for i in range(3):
            for n in rotated(names, i):
                r = results[n]
                r.pull_warm_runs.append(skopeo_pull(running[n].hostport, images.pull,
                                                    work / f"pull-{n}"))
                r.pull_warm = statistics.median(r.pull_warm_runs)
        for n in names:
            r = results[n]
            print(f"   {n}: skopeo pull cold {r.pull_cold:.2f}s "
                  f"{[round(x, 2) for x in r.pull_cold_runs]}, warm {r.pull_warm:.2f}s "
                  f"{[round(x, 2) for x in r.pull_warm_runs]}", flush=True)
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


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(results: dict[str, Result], images: Images, args: argparse.Namespace) -> str:
    m, d, n = results.get("mirror"), results.get("distribution"), results.get("nginx")
    herd_mib = sum(b.size for b in images.herds[0].blobs) / MiB

    def row(label: str, get: Callable[[Result], float], fmt: str,
            lower_is_better: bool = False) -> list[object]:
        vals = [get(results[c]) for c in results]
        cells: list[object] = [label] + [format(v, fmt) if v is not None else "-" for v in vals]
        for other in (d, n):
            if m is None or other is None:
                cells.append("-")
            elif lower_is_better:
                cells.append(ratio(get(other), get(m)))
            else:
                cells.append(ratio(get(m), get(other)))
        return cells

    rows = [
        row("warm blob MB/s (median)", lambda r: r.warm_blob, ".0f"),
        row("cold blob MB/s (median)", lambda r: r.cold_blob, ".0f"),
        row("HEAD manifest by tag req/s (ab)", lambda r: r.head_rps, ".0f"),
        row("GET manifest by tag req/s (wrk)", lambda r: r.get_rps, ".0f"),
        row("skopeo pull cold s (median)", lambda r: r.pull_cold, ".2f", lower_is_better=True),
        row("skopeo pull warm s (median)", lambda r: r.pull_warm, ".2f", lower_is_better=True),
        row(f"herd of {args.clients} wall s (median)", lambda r: r.herd_wall, ".2f",
            lower_is_better=True),
        row("herd upstream MiB (per herd)", lambda r: r.herd_upstream_mib, ".0f",
            lower_is_better=True),
        row("herd upstream blob GETs (per herd)", lambda r: r.herd_upstream_gets, ".0f",
            lower_is_better=True),
        row("peak RSS MiB (all processes)", lambda r: r.rss_mib, ".0f", lower_is_better=True),
    ]
    head = (f"large layer {images.big_layer[1] / MiB:.0f} MiB; pull image "
            f"{len(images.pull.layers)} layers, {sum(b.size for b in images.pull.blobs) / MiB:.0f}"
            f" MiB; herd image {len(images.herds[0].layers)} layers, {herd_mib:.0f} MiB; mirror "
            f"server.workers: {args.workers}; ratios are mirror's advantage (>1 is better)")
    notes = [f"{r.cache}: {x}" for r in results.values() for x in r.notes]
    columns = [f"mirror ({args.workers} workers)" if c == "mirror" else
               "mirror (1 process)" if c == "mirror1" else c for c in results]
    return "\n".join([head, "", table(["measure", *columns, "mirror vs distribution",
                                       "mirror vs nginx"], rows),
                      *(["", *notes] if notes else [])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mb", type=int, default=512)
    ap.add_argument("--runs", type=int, default=7, help="warm blob GETs per cache")
    ap.add_argument("--workers", type=int, default=2, help="mirror server.workers")
    ap.add_argument("--clients", type=int, default=20, help="herd size")
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--cold-pulls", type=int, default=4,
                    help="cold skopeo pulls per cache, each of another image (median)")
    ap.add_argument("--cold-blobs", type=int, default=2,
                    help="cold GETs of a large layer per cache, each of another layer (median)")
    ap.add_argument("--herds", type=int, default=2,
                    help="herds per cache, each on another cold image (median wall time)")
    ap.add_argument("--only", nargs="*", choices=CACHES, default=list(CACHES),
                    help="mirror1: mirror as one process, beside server.workers: --workers")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"warning: load average {load:.2f}; figures from a busy machine are noise")
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    results: dict[str, Result] = {}
    try:
        with RegistryProcess(log_level="error") as upstream:
            images = push_images(upstream.url, args)
            results = side_by_side(list(args.only), upstream, images, args, work)
        print()
        print(report(results, images, args))
        if args.json:
            args.json.write_text(json.dumps({k: v.__dict__ for k, v in results.items()},
                                            indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
