"""Pull an image through a mirror with a plain HTTP client, verifying every digest, and watch a
cache directory's disk usage while it happens (tiered cache tests)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .client import fetch
from .images import ALL_MANIFEST_TYPES

ACCEPT = [("Accept", mt) for mt in ALL_MANIFEST_TYPES]


def pull(base: str, repo: str, ref: str, arch: str = "amd64") -> dict[str, int]:
    """GET the manifest (the `arch` child of an index) and every blob, one at a time, each
    verified against its digest. Returns {digest: size} of every blob and manifest pulled."""
    r = fetch(f"{base}/v2/{repo}/manifests/{ref}", headers=ACCEPT)
    assert r.status == 200 and r.error is None, (r.status, r.body[:300], r.error)
    digest = r.header("Docker-Content-Digest")
    assert digest == "sha256:" + hashlib.sha256(r.body).hexdigest()
    got = {digest: len(r.body)}
    doc = json.loads(r.body)
    if "manifests" in doc:
        child = next(m for m in doc["manifests"] if m["platform"]["architecture"] == arch)
        return got | pull(base, repo, child["digest"], arch)
    for blob in [doc["config"], *doc["layers"]]:
        h = hashlib.sha256()
        b = fetch(f"{base}/v2/{repo}/blobs/{blob['digest']}", sink=h.update, timeout=120)
        assert b.status == 200 and b.error is None, (blob["digest"], b.status, b.error)
        assert "sha256:" + h.hexdigest() == blob["digest"]
        assert b.size == blob["size"]
        got[blob["digest"]] = blob["size"]
    return got


def metric(base: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_metric(base: str, name: str, want: float, timeout: float = 60.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while (value := metric(base, name, **labels)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {value}, waited {timeout}s for {want}")
        time.sleep(0.1)


def du(root: Path) -> int:
    """Bytes in regular files under root (files may vanish while we walk)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


class UsageSampler(threading.Thread):
    """Samples a hot tier's committed bytes (blobs/) and in-flight temp files (tmp/) until
    stopped; keeps the largest values seen."""

    def __init__(self, cache_dir: Path, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="usage-sampler")
        self.cache_dir = cache_dir
        self.interval = interval
        self.max_committed = 0
        self.max_total = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            committed = du(self.cache_dir / "blobs")
            total = committed + du(self.cache_dir / "tmp")
            self.max_committed = max(self.max_committed, committed)
            self.max_total = max(self.max_total, total)
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> UsageSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(10)
