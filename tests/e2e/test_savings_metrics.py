"""Hit ratio and bandwidth saved on /metrics agree with what the upstream really sent (issue 7).

skopeo pulls real images through a mirror process whose upstream is a RecordingProxy in front
of the session's CNCF distribution registry. Three witnesses count the same bytes: the tap
(what crossed the wire to the mirror), distribution's own access log, and the mirror's
/metrics; the audit log and /status.json must tell the same story."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import Catalog, RecordingProxy, RegistryProcess
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.promtext import Scrape, scrape
from tests.support.verify import verify_dir_copy

pytestmark = pytest.mark.e2e

IMAGES = ["library/busybox:latest", "org/team/app:1.0"]  # manifest list; nested OCI image
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>/v2/\S+) HTTP/1\.1" (?P<status>\d{3}) '
                         r'(?P<bytes>\d+)')


def skopeo_copy(mirror: MirrorProcess, ref: str, out: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (make system-deps)", pytrace=False)
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["skopeo", "--insecure-policy", "--tmpdir", str(out.parent), "copy", "--all",
           "--src-tls-verify=false", f"docker://{mirror.hostport}/{ref}", f"dir:{out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}\n--- mirror log:\n{mirror.log_text()}"


def pull_all(mirror: MirrorProcess, catalog: Catalog, out: Path) -> None:
    for ref in IMAGES:
        skopeo_copy(mirror, ref, out)
        verify_dir_copy(out, catalog[ref])


def tap_content_bytes(tap: RecordingProxy) -> tuple[int, int]:
    """(body bytes, requests) of manifest and blob GETs the upstream answered 200."""
    gets = [r for r in tap.filter(method="GET") if r.kind in ("manifest", "blob")
            and r.status == 200]
    return sum(r.bytes_sent for r in gets), len(gets)


def registry_log_bytes(log: str) -> int:
    """Body bytes distribution logged for manifest and blob GETs it answered 200 (its HEAD
    lines carry a length too, but no body was sent)."""
    total = 0
    for m in ACCESS_LINE.finditer(log):
        if (m["method"] == "GET" and m["status"] == "200"
                and ("/manifests/" in m["path"] or "/blobs/" in m["path"])):
            total += int(m["bytes"])
    return total


def audit_lines(path: Path, want: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10  # written off-loop: give the writer thread a moment
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= want or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def status_json(mirror: MirrorProcess) -> dict[str, Any]:
    with urllib.request.urlopen(mirror.url + "/status.json", timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
        return doc


def served(s: Scrape) -> float:
    return s.sum("mirror_bytes_served_total")


@pytest.mark.parametrize("prefetch", [False, True], ids=["no-prefetch", "prefetch"])
def test_cold_then_warm_pull_savings_match_upstream(
        prefetch: bool, registry: RegistryProcess, registry_tap: RecordingProxy,
        catalog: Catalog, tmp_path: Path) -> None:
    log_start = len(registry.log_text())
    audit = tmp_path / "audit.log"
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        prefetch={"enabled": prefetch}, log={"audit": str(audit)})
    with MirrorProcess(cfg, workdir=tmp_path) as mp:
        pull_all(mp, catalog, tmp_path / "cold")
        registry_tap.wait_idle()
        cold = scrape(mp.url)
        cold_sent, cold_gets = tap_content_bytes(registry_tap)

        pull_all(mp, catalog, tmp_path / "warm")
        registry_tap.wait_idle()
        warm = scrape(mp.url)
        doc = status_json(mp)
        sent, gets = tap_content_bytes(registry_tap)
        requests = warm.sum("mirror_requests_total")
        lines = audit_lines(audit, int(requests))
    registry_log = registry.log_text()[log_start:]

    # The warm pull cost the upstream nothing.
    assert (sent, gets) == (cold_sent, cold_gets), registry_tap.describe()
    assert cold_sent > 2_000_000  # busybox, base and app layers really moved

    # Bytes fetched: the mirror's counter, the tap and the registry's own log agree exactly.
    fetched = warm.sum("mirror_upstream_bytes_total", upstream="docker.io")
    assert fetched == sent
    assert registry_log_bytes(registry_log) == sent, registry_log[-3000:]

    # Bytes served: the same both times; the warm half all from the hot tier.
    assert served(warm) == 2 * served(cold)
    assert warm.by("mirror_bytes_served_total", "source")["hot"] >= served(cold)
    saved = served(warm) - sent
    assert warm.sum("mirror_bandwidth_saved_bytes", upstream="docker.io") == saved
    if not prefetch:  # nothing fetched that no client asked for: the cold pull saved nothing
        assert cold.sum("mirror_bandwidth_saved_bytes") == 0
        assert saved == served(cold)

    # Hit ratio: every warm request was a hit; without prefetch every cold one was a miss,
    # each miss exactly one upstream fetch.
    c, w = cold.by("mirror_requests_total", "result"), warm.by("mirror_requests_total", "result")
    cold_n, warm_n = sum(c.values()), sum(w.values())
    assert warm_n == 2 * cold_n
    assert w.get("hit", 0) - c.get("hit", 0) == cold_n
    assert w.get("error", 0) == 0
    if prefetch:
        assert c.get("miss", 0) + c.get("coalesced", 0) + c.get("hit", 0) == cold_n
        assert c.get("miss", 0) < gets  # some fetches were started ahead of the client
    else:
        assert c == {"miss": gets}
        assert warm.hit_ratio() == 0.5

    # Every label value comes from a small fixed set: no repository, tag or digest.
    values = warm.label_values()
    assert values["upstream"] == {"docker.io"}
    assert values["type"] <= {"manifest", "blob", "tag"}
    assert values["result"] <= {"hit", "miss", "stale", "coalesced", "error"}
    assert values["source"] <= {"hot", "cold", "upstream"}
    assert all(re.fullmatch(r"\d{3}|error", v) for v in values["status"])
    assert not any("/" in v or "sha256" in v for vs in values.values() for v in vs)

    # The audit log has one line per request, and its results and bytes add up to /metrics.
    assert len(lines) == warm_n
    for r in ("hit", "miss", "coalesced"):
        assert sum(1 for line in lines if line["result"] == r) == w.get(r, 0)
    assert sum(line["bytes"] for line in lines) == served(warm)

    # /status.json shows the same numbers as /metrics.
    s = doc["since_start"]
    assert s["served_bytes"] == served(warm)
    assert s["fetched_bytes"] == fetched
    assert s["saved_bytes"] == saved
    assert s["hit_ratio"] == pytest.approx(warm.hit_ratio())
    assert {i["image"] for i in doc["top_images"]} == {"docker.io/library/busybox",
                                                       "docker.io/org/team/app"}
