"""A herd across a cluster of three mirrors against the same herd on one mirror (issue 18).

    python -m bench.cluster_herd [--clients 12] [--mb 64] [--rate-mb 40]

The upstream (distribution) sits behind a recording tap with a slow link (`--rate-mb` MiB/s),
so the upstream GETs and bytes each setup caused are counted on the wire. The three nodes share
one SeaweedFS bucket and are peers (cluster.*); the clients are spread over them round-robin.
Each setup gets its own cold blob; "shared bucket only" is three nodes without `cluster`.
Prints wall time, upstream blob GETs and MiB."""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

from bench.common import MiB, concurrently, curl_get, get_hashed, table
from tests.support.blobs import push_random_blob
from tests.support.mirror_proc import MirrorProcess, free_port, mirror_config
from tests.support.registry import RegistryProcess
from tests.support.seaweed import SeaweedS3
from tests.support.tap import Fault, RecordingProxy

SECRET = "bench-cluster-secret-0123456789abcdef"


def nodes(n: int, peers: bool, tap: str, s3: SeaweedS3, work: Path) -> list[MirrorProcess]:
    bucket = f"herd-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    ports = [free_port() for _ in range(n)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    (work / "secret").write_text(SECRET)
    made = []
    for i, port in enumerate(ports):
        extra = {"cluster": {"self": urls[i], "peers": urls,
                             "secret_file": str(work / "secret")}} if peers else {}
        cfg = mirror_config({"docker.io": tap}, work / f"c{bucket}-{i}", prefetch={"enabled": False},
                            cache={"object_store": s3.mirror_config(bucket)}, **extra)
        node = MirrorProcess(cfg, work / f"p{bucket}-{i}", env=s3.env())
        node.port = port
        made.append(node.start(timeout=30))
    return made


def herd(ms: list[MirrorProcess], path: str, clients: int, digest: str,
         size: int) -> float:
    wall, results = concurrently(clients, lambda i: curl_get(f"{ms[i % len(ms)].url}{path}"))
    bad = [r for r in results if r != (200, size)]
    if bad:
        raise SystemExit(f"{len(bad)} clients failed: {bad[:3]}")
    for m in ms:  # what every node kept verifies
        status, _, got = get_hashed(m.hostport, path)
        if status != 200 or got != digest:
            raise SystemExit(f"{m.url} served wrong bytes: {status} {got}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--rate-mb", type=int, default=40)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    rows = []
    with RegistryProcess() as upstream, SeaweedS3(work / "s3") as s3:
        for n, peers in ((1, False), (3, False), (3, True)):
            b = push_random_blob(upstream.url, f"bench/c{n}{'p' if peers else 's'}", args.mb * MiB, work)
            with RecordingProxy(upstream.url) as tap:
                tap.set_fault(Fault(mode="slow", rate=args.rate_mb * MiB, match="/blobs/",
                                    method="GET"))
                ms = nodes(n, peers, tap.url, s3, work)
                try:
                    wall = herd(ms, f"/v2/{b.repo}/blobs/{b.digest}", args.clients, b.digest,
                                b.size)
                    tap.wait_idle()
                    setup = ("1 node" if n == 1 else
                             f"{n} nodes, {'cluster (peers)' if peers else 'shared bucket only'}")
                    rows.append([setup, args.clients, f"{wall:.2f}",
                                 tap.count(kind="blob", method="GET"),
                                 f"{tap.bytes_sent(kind='blob', method='GET') / MiB:.0f}"])
                finally:
                    for m in ms:
                        m.stop()
    print(f"{args.clients} clients on one cold {args.mb} MiB blob, upstream at "
          f"{args.rate_mb} MiB/s")
    print(table(["setup", "clients", "wall s", "upstream blob GETs", "upstream MiB"], rows))


if __name__ == "__main__":
    main()
