"""N concurrent clients on one cold large blob: mirror vs CNCF distribution in proxy mode.

    python -m bench.herd [--clients 20] [--mb 256]

Both caches sit in front of the same upstream (distribution), each behind its own recording
tap, so the upstream bytes each one pulled are counted on the wire. Prints wall time, upstream
GETs and bytes, peak RSS, and the time of one single cold fetch for reference."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import MiB, concurrently, curl_get, get_hashed, peak_rss_mib, table
from tests.support.blobs import push_random_blob
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.registry import RegistryProcess
from tests.support.tap import RecordingProxy


def run_herd(hostport: str, path: str, clients: int, digest: str, size: int) -> float:
    """Wall time of `clients` curl processes (cheap clients: no hashing on this 2-core host) on
    one URL; then one hashed GET checks that the bytes the cache kept are the right ones.
    The test suite (tests/e2e/test_coalescing.py) hashes what every concurrent client got."""
    wall, results = concurrently(clients, lambda i: curl_get(f"http://{hostport}{path}"))
    bad = [r for r in results if r != (200, size)]
    if bad:
        raise SystemExit(f"{len(bad)} clients failed on {hostport}: {bad[:3]}")
    status, n, got = get_hashed(hostport, path)
    if status != 200 or got != digest:
        raise SystemExit(f"{hostport} served wrong bytes: {status} {n} {got}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--mb", type=int, default=256)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-herd-"))
    rows = []
    with RegistryProcess() as upstream:
        blobs = {name: push_random_blob(upstream.url, f"bench/{name}", args.mb * MiB, work)
                 for name in ("single", "mirror", "distribution")}
        # reference: one client, cold, through mirror
        with RecordingProxy(upstream.url) as tap, MirrorProcess(
                mirror_config({"docker.io": tap.url}, work / "m0", prefetch={"enabled": False}),
                workdir=work / "p0") as m:
            b = blobs["single"]
            single = run_herd(m.hostport, f"/v2/{b.repo}/blobs/{b.digest}", 1, b.digest, b.size)
        with RecordingProxy(upstream.url) as tap, MirrorProcess(
                mirror_config({"docker.io": tap.url}, work / "m1", prefetch={"enabled": False}),
                workdir=work / "p1") as m:
            b = blobs["mirror"]
            wall = run_herd(m.hostport, f"/v2/{b.repo}/blobs/{b.digest}", args.clients, b.digest,
                            b.size)
            tap.wait_idle()
            assert m.proc is not None
            # The same herd again, all from the hot tier: the floor set by moving clients x size
            # bytes over loopback on this host, whatever the cache does.
            warm = run_herd(m.hostport, f"/v2/{b.repo}/blobs/{b.digest}", args.clients, b.digest,
                            b.size)
            rows.append(["mirror", args.clients, wall, wall / single, wall / warm,
                         tap.count(method="GET", kind="blob"),
                         tap.bytes_sent(kind="blob") / MiB, peak_rss_mib(m.proc.pid)])
        with RecordingProxy(upstream.url) as tap, RegistryProcess(
                proxy_remote_url=tap.url) as proxy:
            b = blobs["distribution"]
            wall = run_herd(f"127.0.0.1:{proxy.port}", f"/v2/{b.repo}/blobs/{b.digest}",
                            args.clients, b.digest, b.size)
            tap.wait_idle()
            warm = run_herd(f"127.0.0.1:{proxy.port}", f"/v2/{b.repo}/blobs/{b.digest}",
                            args.clients, b.digest, b.size)
            rows.append(["distribution proxy", args.clients, wall, wall / single, wall / warm,
                         tap.count(method="GET", kind="blob"),
                         tap.bytes_sent(kind="blob") / MiB,
                         peak_rss_mib(proxy.pid) if proxy.pid is not None else float("nan")])
    print(f"\nHerd: {args.clients} clients, one cold {args.mb} MiB blob "
          f"(single cold fetch through mirror: {single:.2f} s)\n")
    print(table(["cache", "clients", "wall s", "x single cold", "x same herd warm",
                 "upstream GETs", "upstream MiB", "peak RSS MiB"], rows))


if __name__ == "__main__":
    main()
