"""One node of a two-node cluster streams a layer from its peer: an A/B of the peer path.

    python -m bench.peer [--mb 256] [--layers 5] [--tree DIR ...]

For each checkout (this one as `mirror`, then the --tree ones as tree1, tree2, ...) two
`mirror serve` processes run as peers (cluster.*) in front of one distribution upstream. Per
layer (other bytes each) the node that owns the layer's digest (rendezvous order) is asked
first, so it holds the layer (on its disk; for "memory" it is read once more there, into the
page cache); then the other node is asked: cold there, it streams the layer from the owner,
not from the upstream. Reported per checkout and case: that GET's MB/s (median),
the CPU seconds per GB of the asking node until its client has the last byte and of the
owner over the same time, and the bytes the asking node received from its peer per layer
(1.00: all of the layer came from the peer). Rounds interleave the checkouts.

Run by hand (check `uptime`); never in CI."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import table
from bench.compare import rotated
from bench.measure import curl_time, settle, tree_cpu_seconds, tree_rss_mib
from mirror.fetch.rendezvous import ranked
from tests.support.blobs import push_random_blob
from tests.support.mirror_proc import MirrorProcess, free_port, mirror_config
from tests.support.registry import RegistryProcess

SECRET = "bench-peer-secret-0123456789abcdef0123"
MB = 1e6
# Where the owner has the layer when it is asked: its disk (just written, O_DIRECT: not in the
# page cache) or memory (read once since).
WHERE = ("disk", "memory")
Run = tuple[float, float, float, float]  # MB/s, asking CPU-s/GB, owner CPU-s/GB, peer bytes


@dataclass
class Pair:
    nodes: list[MirrorProcess]

    def owner_first(self, digest: str) -> list[MirrorProcess]:
        by_url = {n.url: n for n in self.nodes}
        return [by_url[u] for u in ranked(digest, by_url)]


@contextmanager
def pair(upstream: str, work: Path, tree: Path | None) -> Iterator[Pair]:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    (work / "secret").write_text(SECRET)
    env = {"PYTHONPATH": str(tree.resolve())} if tree is not None else None
    with ExitStack() as stack:
        nodes = []
        for i, url in enumerate(urls):
            cfg = mirror_config({"docker.io": upstream}, work / f"cache{i}",
                                prefetch={"enabled": False}, log={"level": "warning"},
                                cluster={"self": url, "peers": urls,
                                         "secret_file": str(work / "secret")})
            node = MirrorProcess(cfg, work / f"proc{i}", env=env)
            node.port = int(url.rsplit(":", 1)[1])
            nodes.append(stack.enter_context(node))
        yield Pair(nodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--tree", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    trees: dict[str, Path | None] = {"mirror": None}
    trees.update({f"tree{i + 1}": t for i, t in enumerate(args.tree)})
    names = list(trees)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    runs: dict[str, dict[str, list[Run]]] = {n: {w: [] for w in WHERE} for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp, \
            RegistryProcess(log_level="error") as upstream, ExitStack() as stack:
        work = Path(tmp)
        pairs = {}
        for n, tree in trees.items():
            (work / n).mkdir()
            pairs[n] = stack.enter_context(pair(upstream.url, work / n, tree))
        for i in range(args.layers):
            for n in rotated(names, i):
                for where in WHERE:
                    runs[n][where].append(peer_get(upstream, work, pairs[n], args.mb,
                                                   f"bench/peer{i}{where[0]}", where))
            print(f"   round {i}: " + ", ".join(f"{n} {w} {runs[n][w][-1][0]:.0f}" for n in names
                                                for w in WHERE), flush=True)
        rss = {n: max(tree_rss_mib(pid(x)) for x in p.nodes) for n, p in pairs.items()}

    def med(n: str, w: str, k: int) -> float:
        return float(statistics.median(r[k] for r in runs[n][w]))
    rows = [[n, w, f"{med(n, w, 0):.0f}", str([round(r[0]) for r in runs[n][w]]),
             f"{med(n, w, 1):.2f}", f"{med(n, w, 2):.2f}", f"{med(n, w, 3) / (args.mb << 20):.2f}",
             f"{rss[n]:.0f}"] for n in names for w in WHERE]
    print(f"\none {args.mb} MiB layer from the peer that holds it, MB/s, median of {args.layers} "
          f"(load average at end: {os.getloadavg()})")
    print(table(["checkout", "the owner reads it from", "MB/s (median)", "runs",
                 "asking node CPU-s/GB", "owner CPU-s/GB", "peer bytes / layer",
                 "peak RSS MiB (a node)"], rows))


def peer_get(upstream: RegistryProcess, work: Path, nodes: Pair, mb: int, repo: str,
             where: str) -> Run:
    """A new layer: fetched by its owner, then (for "memory") read once more there so that it
    is in the page cache, then asked of the other node; what that GET took."""
    blob = push_random_blob(upstream.url, repo, mb << 20, work)
    blob.path.unlink()
    path = f"/v2/{repo}/blobs/{blob.digest}"
    owner, other = nodes.owner_first(blob.digest)
    for _ in range(2 if where == "memory" else 1):
        status, size, _ = curl_time(owner.url + path)
        assert (status, size) == (200, blob.size), (status, size)
    settle()
    got0 = peer_received(other)
    cpu0 = tree_cpu_seconds(pid(other)), tree_cpu_seconds(pid(owner))
    status, size, seconds = curl_time(other.url + path)
    assert (status, size) == (200, blob.size), (status, size)
    cpu1 = tree_cpu_seconds(pid(other)), tree_cpu_seconds(pid(owner))
    gb = blob.size / 1e9
    return (blob.size / MB / seconds, (cpu1[0] - cpu0[0]) / gb, (cpu1[1] - cpu0[1]) / gb,
            peer_received(other) - got0)


def peer_received(node: MirrorProcess) -> float:
    """mirror_peer_bytes_total{kind="received"} of `node`."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mirror_peer_bytes_total{") and 'kind="received"' in line)


def pid(node: MirrorProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


if __name__ == "__main__":
    main()
