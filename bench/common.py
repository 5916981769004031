"""Shared pieces of the benchmarks: start things on loopback, measure, print tables.

Benchmarks are run by hand (`python -m bench.<name>`), never in CI; they reuse the test
infrastructure (real distribution registry, recording tap, mirror subprocess)."""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Sequence
from pathlib import Path

from tests.support.blobs import concurrently as concurrently  # shared with the tests

MiB = 1024 * 1024


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def get_hashed(hostport: str, path: str, headers: dict[str, str] | None = None,
               verify: bool = True) -> tuple[int, int, str]:
    """GET on a fresh connection; returns (status, bytes, sha256 or '')."""
    host, port = hostport.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    h = hashlib.sha256() if verify else None
    n = 0
    while chunk := resp.read(1 << 20):
        n += len(chunk)
        if h is not None:
            h.update(chunk)
    conn.close()
    return resp.status, n, ("sha256:" + h.hexdigest()) if h is not None else ""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.2f}"
    return str(c)


def curl_get(url: str, headers: Sequence[str] = ()) -> tuple[int, int]:
    """GET with curl into /dev/null: a client that costs the benchmark host little CPU.
    Returns (status, bytes)."""
    import subprocess

    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.split()
    return (int(out[0]), int(out[1])) if len(out) == 2 else (0, 0)
