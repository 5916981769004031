"""A cached layer served from the disk (not in the page cache), and what the server's other
clients wait meanwhile: an A/B of checkouts beside distribution in proxy mode.

    python -m bench.disk [--mb 1024] [--layers 4] [--tree DIR ...] [--only mirror distribution]

Every cache (this checkout as `mirror`, one process; the --tree checkouts as tree1, ...;
distribution) gets each layer once cold, so it holds it on its disk. Then, per layer and cache,
the page cache is dropped (root: /proc/sys/vm/drop_caches) and the layer is fetched with curl
twice: alone, and while another client sends `GET /v2/` on one keep-alive connection as fast
as it is answered. Reported: MB/s of both GETs (median), and for the second the /v2/ answers
that came meanwhile, their median, 99th percentile and longest wait. A server that reads the
file by page faults in its event loop holds every other client for as long as the disk takes.

Run by hand (check `uptime`), as root; never in CI."""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.cold import start
from bench.common import table
from bench.compare import rotated
from bench.measure import curl_time, settle
from tests.support.images import ImagePusher, big_layer
from tests.support.registry import RegistryProcess

CACHES = ("mirror", "distribution")


@dataclass
class Runs:
    alone: list[float] = field(default_factory=list)  # MB/s
    busy: list[float] = field(default_factory=list)  # MB/s with the /v2/ client
    waits: list[float] = field(default_factory=list)  # seconds, every /v2/ answer
    answers: list[int] = field(default_factory=list)  # /v2/ answers per GET
    longest: list[float] = field(default_factory=list)  # per GET


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    settle()


def while_asking(hostport: str, url: str) -> tuple[float, list[float]]:
    """GET `url` with curl while one client asks `GET /v2/` of `hostport` in turn: the GET's
    seconds and every /v2/ answer's wait."""
    host, port = hostport.split(":")
    waits: list[float] = []
    done = threading.Event()

    def ask() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while not done.is_set():
            t0 = time.perf_counter()
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            waits.append(time.perf_counter() - t0)
        conn.close()

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.2)  # the asker's connection is open and answered
    try:
        _, _, seconds = curl_time(url)
    finally:
        done.set()
        asker.join()
    return seconds, waits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tree", type=Path, nargs="*", default=[])
    ap.add_argument("--only", nargs="*", choices=CACHES, default=list(CACHES))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.disk drops the page cache: run it as root")
    names = list(args.only)
    names[1:1] = [f"tree{i + 1}" for i in range(len(args.tree))]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    runs = {n: Runs() for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as tmp, \
            RegistryProcess(log_level="error") as upstream, ExitStack() as stack:
        work = Path(tmp)
        p = ImagePusher(upstream.url)
        layers = [big_layer(args.mb, seed=f"disk{i}-{args.mb}") for i in range(args.layers)]
        images = [p.push_image(f"bench/disk{i}", "1", [layer]) for i, layer in enumerate(layers)]
        running = {n: stack.enter_context(start(n, upstream, work, args.tree)) for n in names}
        for i, image in enumerate(images):
            layer = image.layers[0]
            path = f"/v2/bench/disk{i}/blobs/{layer.digest}"
            for n in names:  # cold: each cache stores the layer
                status, size, _ = curl_time(f"http://{running[n].hostport}{path}")
                assert (status, size) == (200, layer.size), (n, status, size)
            for n in rotated(names, i):
                url = f"http://{running[n].hostport}{path}"
                drop_page_cache()
                status, size, seconds = curl_time(url)
                assert (status, size) == (200, layer.size), (n, status, size)
                runs[n].alone.append(layer.size / 1e6 / seconds)
                drop_page_cache()
                seconds, waits = while_asking(running[n].hostport, url)
                runs[n].busy.append(layer.size / 1e6 / seconds)
                runs[n].waits += waits
                runs[n].answers.append(len(waits))
                runs[n].longest.append(max(waits, default=0.0))
            print(f"   round {i}: " + ", ".join(
                f"{n} {runs[n].alone[-1]:.0f} / {runs[n].busy[-1]:.0f} MB/s, longest /v2/ "
                f"{runs[n].longest[-1] * 1000:.0f} ms" for n in names), flush=True)

    def ms(x: float) -> str:
        return f"{x * 1000:.2f}"
    rows = []
    for n in names:
        r = runs[n]
        waits = sorted(r.waits)
        rows.append([n, f"{statistics.median(r.alone):.0f}", f"{statistics.median(r.busy):.0f}",
                     f"{statistics.median(r.answers):.0f}", ms(statistics.median(waits)),
                     ms(waits[int(len(waits) * 0.99)]), str([round(x * 1000) for x in r.longest])])
    print(f"\none {args.mb} MiB layer from the cache's disk, page cache dropped, median of "
          f"{args.layers} (load average at end: {os.getloadavg()})")
    print(table(["cache", "MB/s alone", "MB/s beside /v2/ client", "/v2/ answers per GET",
                 "/v2/ median ms", "/v2/ p99 ms", "longest /v2/ wait per GET, ms"], rows))


if __name__ == "__main__":
    main()
