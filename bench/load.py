"""Load test: C concurrent connections pulling a mix of images through mirror for T seconds.

    python -m bench.load [--connections 500] [--seconds 60] [--big-mb 64]

Starts the CNCF distribution registry (upstream) with the standard test images, a mirror
process in front of it, then C client tasks (one aiohttp connection each) that loop: pick an
image, GET its manifest by tag (index -> amd64 child), GET its config and layers, verifying
every blob's sha256. The first pulls are cold, so coalescing and streaming are exercised
under load too. Prints requests, bytes, errors, latency percentiles and the mirror's RSS."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from bench.common import MiB, peak_rss_mib, table
from tests.support.images import push_standard_set
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.registry import RegistryProcess

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json"])
IMAGES = ["library/busybox:latest", "library/busybox:1.36", "library/alpine-ish:3.19",
          "library/alpine-ish:3.19-oci", "library/multiarch:latest", "org/team/app:1.0",
          "library/big:latest"]


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []


async def get(session: aiohttp.ClientSession, url: str, stats: Stats, accept: bool = False,
              digest: str | None = None) -> bytes:
    t0 = time.perf_counter()
    headers = {"Accept": ACCEPT} if accept else {}
    async with session.get(url, headers=headers) as r:
        h = hashlib.sha256()
        body = bytearray()
        async for chunk in r.content.iter_chunked(1 << 20):
            h.update(chunk)
            if digest is None:
                body += chunk
            stats.bytes += len(chunk)
        stats.requests += 1
        stats.latencies.append(time.perf_counter() - t0)
        if r.status != 200:
            stats.errors.append(f"{r.status} {url}")
        elif digest is not None and "sha256:" + h.hexdigest() != digest:
            stats.errors.append(f"digest mismatch {url}")
        return bytes(body)


async def pull(session: aiohttp.ClientSession, base: str, ref: str, stats: Stats) -> None:
    repo, tag = ref.split(":")
    doc = json.loads(await get(session, f"{base}/v2/{repo}/manifests/{tag}", stats, accept=True))
    if "manifests" in doc:
        amd64 = next(m for m in doc["manifests"] if m["platform"]["architecture"] == "amd64")
        doc = json.loads(await get(session, f"{base}/v2/{repo}/manifests/{amd64['digest']}",
                                   stats, accept=True))
    for blob in [doc["config"], *doc["layers"]]:
        await get(session, f"{base}/v2/{repo}/blobs/{blob['digest']}", stats,
                  digest=blob["digest"])


async def client(base: str, deadline: float, stats: Stats, rnd: random.Random) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        while time.monotonic() < deadline:
            # the big image is pulled less often, as a real mix of small and large images
            ref = rnd.choice(IMAGES if rnd.random() < 0.1 else IMAGES[:-1])
            try:
                await pull(session, base, ref, stats)
            except (aiohttp.ClientError, TimeoutError) as e:
                stats.errors.append(f"{type(e).__name__} {ref}")


async def run(base: str, connections: int, seconds: float) -> Stats:
    stats = Stats()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client(base, deadline, stats, random.Random(i))
                           for i in range(connections)))
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--big-mb", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    with RegistryProcess() as upstream:
        push_standard_set(upstream.url, big_mb=args.big_mb, cache_dir=work / "images")
        cfg = mirror_config({"docker.io": upstream.url}, work / "cache")
        with MirrorProcess(cfg, workdir=work / "mirror") as mirror:
            assert mirror.proc is not None
            pid = mirror.proc.pid
            rss: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            rss.append(int(line.split()[1]) / 1024)

            threading.Thread(target=sample, daemon=True).start()
            t0 = time.perf_counter()
            stats = asyncio.run(run(mirror.url, args.connections, args.seconds))
            wall = time.perf_counter() - t0
            stop.set()
            peak = peak_rss_mib(pid)
            alive = mirror.proc.poll() is None
    lat = sorted(stats.latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
    print(f"\nLoad: {args.connections} connections for {args.seconds:.0f} s "
          f"(standard images, big layer {args.big_mb} MiB)\n")
    print(table(["requests", "req/s", "MiB served", "MiB/s", "errors", "p50 ms", "p99 ms",
                 "RSS max MiB", "RSS end MiB", "peak RSS MiB", "mirror alive"],
                [[stats.requests, stats.requests / wall, stats.bytes / MiB,
                  stats.bytes / MiB / wall, len(stats.errors), q[49] * 1000, q[98] * 1000,
                  max(rss) if rss else 0.0, rss[-1] if rss else 0.0, peak, alive]]))
    if stats.errors:
        print("first errors:", stats.errors[:5])


if __name__ == "__main__":
    main()
