"""One cold layer through each cache, side by side, interleaved: an A/B of cold-miss throughput.

    python -m bench.cold [--mb 256] [--layers 5] [--tree DIR ...] [--only mirror distribution ...]

Starts CNCF distribution as the upstream, pushes --layers layers of --mb MiB (other bytes each)
and starts every cache at once in front of it: `mirror` (this checkout, one process),
`zerocopy` (bench/zerocopy.py, a probe of what the cold path could cost; not in the default set),
`tree1`, `tree2`, ... (the checkouts given with --tree, for an A/B), distribution in proxy
mode, nginx proxy_cache, and `direct` (curl straight from the upstream). Each layer is fetched
once through every cache, round-robin (round i starts with the next cache), after
bench.measure.settle();
reported: MB/s per cache, median over the layers, mirror's ratio to each, the CPU seconds per
GB of each cache's processes until the client has the last byte and after it (until the
machine is quiet), the upstream's CPU seconds per GB and the bytes it
sent per byte of the layer, and the peak RSS of each cache's processes.

Run by hand (check `uptime`); never in CI."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.common import table
from bench.compare import Running, rotated, start_cache
from bench.measure import ColdGet, cold_get, tree_rss_mib
from tests.support.certs import TestCA
from tests.support.images import ImagePusher, big_layer
from tests.support.mirror_proc import MirrorProcess, free_port, mirror_config
from tests.support.registry import RegistryProcess

CACHES = ("mirror", "zerocopy", "zerothreads", "distribution", "nginx", "direct")


@contextmanager
def start(name: str, upstream: RegistryProcess, work: Path, trees: list[Path]) -> Iterator[Running]:
    if name == "direct":
        yield Running(name, f"127.0.0.1:{upstream.port}", 0)
    elif name in ("zerocopy", "zerothreads"):  # probes of what the cold path could cost
        port = free_port()
        root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
        with subprocess.Popen([sys.executable, "-m", f"bench.{name}", str(port),
                               str(upstream.port), str(root)], stdout=subprocess.PIPE,
                              text=True) as proc:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            try:
                yield Running(name, f"127.0.0.1:{port}", proc.pid)
            finally:
                proc.kill()
    elif name.startswith("tree"):
        tree = trees[int(name[4:]) - 1]
        root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
        cfg = mirror_config({"docker.io": upstream.url}, root / "cache", log={"level": "warning"})
        with MirrorProcess(cfg, workdir=root / "proc",
                           env={"PYTHONPATH": str(tree.resolve())}) as m:
            assert m.proc is not None
            yield Running(name, m.hostport, m.proc.pid)
    else:
        with start_cache("mirror1" if name == "mirror" else name, upstream.url, work, 1) as c:
            yield Running(name, c.hostport, c.pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--tree", type=Path, nargs="*", default=[],
                    help="checkouts run as tree1, tree2, ...")
    ap.add_argument("--only", nargs="*", choices=CACHES,
                    default=["mirror", "distribution", "nginx", "direct"])
    ap.add_argument("--tls", action="store_true",
                    help="the upstream serves https (as Docker Hub and its CDN do); the caches "
                         "and curl trust its test CA through SSL_CERT_FILE / CURL_CA_BUNDLE")
    args = ap.parse_args()
    if args.tls and {"zerocopy", "zerothreads"} & set(args.only):
        ap.error("the probes speak plain HTTP only")
    names = list(args.only)
    names[1:1] = [f"tree{i + 1}" for i in range(len(args.tree))]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp, ExitStack() as up_stack:
        work = Path(tmp)
        # Pushed over plain HTTP (the pusher speaks nothing else); with --tls the same storage
        # is then served by an https instance.
        root = work / "upstream"
        with RegistryProcess(log_level="error", root=root) as plain:
            p = ImagePusher(plain.url)
            images = [p.push_image(f"bench/cold{i}", "1",
                                   [big_layer(args.mb, seed=f"cold{i}-{args.mb}")])
                      for i in range(args.layers)]
        tls = None
        if args.tls:
            ca = TestCA(work / "ca")
            issued = ca.server()
            tls = (issued.cert, issued.key)
            os.environ["SSL_CERT_FILE"] = os.environ["CURL_CA_BUNDLE"] = str(ca.cert)
        upstream = up_stack.enter_context(RegistryProcess(log_level="error", root=root, tls=tls))
        scheme = "https" if args.tls else "http"
        runs: dict[str, list[ColdGet]] = {n: [] for n in names}
        with ExitStack() as stack:
            running = {n: stack.enter_context(start(n, upstream, work, args.tree)) for n in names}
            for i, image in enumerate(images):
                for n in rotated(names, i):
                    runs[n].append(cold_get(running[n].hostport, running[n].pid, image, upstream,
                                            scheme if n == "direct" else "http"))
                print(f"   round {i}: " + ", ".join(f"{n} {runs[n][-1].mbs:.0f}" for n in names),
                      flush=True)
            rss = {n: tree_rss_mib(c.pid) for n, c in running.items() if c.pid}
    def med(n: str, field: str) -> float:
        return float(statistics.median(getattr(g, field) for g in runs[n]))
    m = med("mirror", "mbs") if "mirror" in runs else None
    rows = [[n, f"{med(n, 'mbs'):.0f}", str([round(g.mbs) for g in runs[n]]),
             f"{m / med(n, 'mbs'):.2f}x" if m else "-",
             f"{med(n, 'cpu'):.2f} + {med(n, 'after'):.2f}" if n != "direct" else "-",
             f"{med(n, 'upstream_cpu'):.2f}", f"{med(n, 'upstream_sent'):.2f}"] for n in names]
    print(f"\none {args.mb} MiB layer cold{' from an https upstream' if args.tls else ''}, MB/s, "
          f"median of {args.layers} "
          f"(load average at end: {os.getloadavg()})")
    print(table(["cache", "MB/s (median)", "runs", "mirror vs it",
                 "cache CPU-s/GB: to the answer + after", "upstream CPU-s/GB",
                 "upstream sent / layer"], rows))
    print("peak RSS MiB (all processes): " + ", ".join(f"{n} {v:.0f}" for n, v in rss.items()))


if __name__ == "__main__":
    main()
