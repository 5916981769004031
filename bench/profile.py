"""Profile mirror's hot paths with py-spy and print where the time goes.

    python -m bench.profile [--mb 512] [--workers 1] [--seconds 8] [--only cold warm head]

For each path a fresh mirror process runs in front of a local distribution upstream while
py-spy samples it (all threads, idle ones left out): `cold` is one client's first GET of a
large blob, `warm` repeated GETs of it, `herd` 20 clients on one cold blob, `head` HEAD of a
manifest by tag with ApacheBench. Printed per path: throughput, then the functions with the
most samples on top of the stack ("self") and on the stack at all ("total"), per thread kind
(the event loop, or a worker thread: executor, database writer, audit writer). py-spy must be
on PATH or next to the Python running this."""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import concurrently, curl_get
from bench.compare import CONTAINERD_ACCEPT
from bench.measure import curl_time
from tests.support.certs import write_htpasswd
from tests.support.images import ImagePusher, PushedImage, big_layer, layer_bytes
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.registry import RegistryProcess

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found (pip install py-spy)")
    return found


def thread_seconds(pid: int, tid: int) -> float:
    """User + system CPU time of one thread of `pid` so far."""
    return _stat_seconds(Path(f"/proc/{pid}/task/{tid}/stat"))


def _stat_seconds(stat: Path) -> float:
    fields = stat.read_text().rpartition(")")[2].split()  # past the name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(raw: Path, top: int) -> str:
    """Self and total samples per function from py-spy's raw (collapsed stack) output."""
    selfs: collections.Counter[str] = collections.Counter()
    totals: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        kind = "loop"
        if frames and frames[0].startswith("thread"):
            frames = frames[1:]
        names = []
        for f in frames:
            m = FRAME.match(f.strip())
            name = f"{m.group('func')} ({m.group('file')})" if m else f.strip()
            names.append(name)
            if "_worker (concurrent/futures/thread.py)" in name:
                kind = "thread"  # executor, database writer, audit writer
        if not names:
            continue
        samples += n
        threads[kind] += n
        selfs[f"[{kind}] {names[-1]}"] += n
        for name in set(names):
            totals[f"[{kind}] {name}"] += n
    out = [f"{samples} samples: " + ", ".join(f"{k} {v / samples:.0%}"
                                              for k, v in threads.most_common())]
    out.append("  self:")
    out += [f"    {v / samples:6.1%}  {k}" for k, v in selfs.most_common(top)]
    out.append("  total (on the stack):")
    interesting = [(k, v) for k, v in totals.most_common() if "mirror/" in k or "aiohttp" in k]
    out += [f"    {v / samples:6.1%}  {k}" for k, v in interesting[:top]]
    return "\n".join(out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    return _stat_seconds(Path(f"/proc/{pid}/stat"))


def profiled(pid: int, out: Path, rate: int, work: Callable[[], str]) -> str:
    spy = subprocess.Popen([py_spy(), "record", "-p", str(pid), "-f", "raw", "-o", str(out),
                            "-r", str(rate), "--nonblocking", "-t"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    try:
        cpu = cpu_seconds(pid)
        figure = work()
        cpu = cpu_seconds(pid) - cpu
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    return f"{figure}; mirror used {cpu:.2f} CPU-s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rate", type=int, default=400, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--only", nargs="*", default=["cold", "warm", "herd", "head"])
    ap.add_argument("--keep", type=Path, help="keep the raw py-spy files in this directory")
    ap.add_argument("--no-spy", action="store_true", help="only the figures and CPU time")
    ap.add_argument("--secure", action="store_true",
                    help="client auth (htpasswd user, Basic credentials on every request) and an "
                         "audit log file: the middlewares a locked-down site runs")
    ap.add_argument("--tree", type=Path, help="run the mirror package found in this directory "
                                              "instead (A/B against another checkout)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    keep = args.keep or work
    keep.mkdir(parents=True, exist_ok=True)
    try:
        with RegistryProcess(log_level="error") as upstream:
            p = ImagePusher(upstream.url)
            big = p.push_image("bench/big", "latest", [big_layer(args.mb, seed="bench-big")])
            small = p.push_image("bench/small", "1", [layer_bytes({"hello": "hi\n"})])
            for path in args.only:
                run_one(path, upstream.url, big, small, args, work, keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_one(path: str, upstream: str, big: PushedImage, small: PushedImage,
            args: argparse.Namespace, work: Path, keep: Path) -> None:
    digest, size = big.layers[0].digest, big.layers[0].size
    extra: dict[str, object] = {"server": {"workers": args.workers}} if args.workers > 1 else {}
    log_cfg: dict[str, object] = {"level": "warning"}
    creds: list[str] = []
    if args.secure:
        htpasswd = write_htpasswd(work / "htpasswd", {"bench": "bench-secret"})
        extra["auth"] = {"htpasswd": str(htpasswd)}
        log_cfg["audit"] = str(work / f"audit-{path}.log")
        creds = ["-A", "bench:bench-secret"]
    cfg = mirror_config({"docker.io": upstream}, work / f"cache-{path}", log=log_cfg, **extra)
    env = {"PYTHONPATH": str(args.tree.resolve())} if args.tree else None
    with MirrorProcess(cfg, workdir=work / f"proc-{path}", env=env) as m:
        assert m.proc is not None
        blob_url = f"{m.url}/v2/{big.repo}/blobs/{digest}"
        curl_auth = ("Authorization: Basic YmVuY2g6YmVuY2gtc2VjcmV0",) if args.secure else ()
        pid = m.proc.pid
        if args.workers > 1:  # profile the first worker
            time.sleep(2)
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])

        def cold() -> str:
            status, n, secs = curl_time(blob_url, curl_auth)
            assert (status, n) == (200, size)
            return f"cold GET {size / secs / 1e6:.0f} MB/s"

        def warm() -> str:
            speeds = []
            for _ in range(max(3, args.seconds * 2)):
                status, n, secs = curl_time(blob_url, curl_auth)
                assert (status, n) == (200, size)
                speeds.append(size / secs / 1e6)
            return f"warm GETs {sorted(speeds)[len(speeds) // 2]:.0f} MB/s (median)"

        def herd() -> str:
            wall, results = concurrently(20, lambda i: curl_get(blob_url, curl_auth))
            assert all(r == (200, size) for r in results), results
            return f"herd of 20 on one cold blob: {wall:.2f}s"

        def head() -> str:
            url = f"{m.url}/v2/{small.repo}/manifests/{small.tag}"
            out = subprocess.run(["ab", "-i", "-k", "-q", "-c", "32", "-t", str(args.seconds), *creds,
                                  "-n", "10000000", "-H", f"Accept: {CONTAINERD_ACCEPT}", url],
                                 capture_output=True, text=True, check=True).stdout
            rps = next(ln for ln in out.splitlines() if ln.startswith("Requests per second"))
            return f"HEAD by tag {rps.split()[3]} req/s"

        if path == "warm":
            cold()
            time.sleep(0.5)
        if path == "head":
            curl_get(f"{m.url}/v2/{small.repo}/manifests/{small.tag}",
                     [f"Accept: {CONTAINERD_ACCEPT}", *curl_auth])
        work_fn = {"cold": cold, "warm": warm, "herd": herd, "head": head}[path]
        raw = keep / f"{path}.txt"
        if args.no_spy:
            cpu, main = cpu_seconds(pid), thread_seconds(pid, pid)
            figure = (f"{work_fn()}; mirror used {cpu_seconds(pid) - cpu:.2f} CPU-s, "
                      f"{thread_seconds(pid, pid) - main:.2f} on the event loop's thread")
        else:
            figure = profiled(pid, raw, args.rate, work_fn)
        print(f"\n== {path}: {figure}  (mirror pid {pid}, load {os.getloadavg()[0]:.1f})")
        if not args.no_spy:
            print(summarize(raw, args.top), flush=True)


if __name__ == "__main__":
    main()
