"""The status page in a real headless Chromium, against a running mirror (issue 7).

The page must show the numbers /metrics gives, both as served (no JavaScript) and after its
script has refreshed it in place; a screenshot is kept in test-artifacts/ for people to look at.

Chromium runs inside a private network namespace that reaches only the mirror's port: even
with --disable-background-networking it still tries to resolve clients2.google.com, and that
query must not leave the machine."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from mirror.config.units import fmt_bytes, fmt_int, fmt_ratio
from mirror.observe.statuspage import REFRESH_SECONDS
from tests.support import Catalog, RecordingProxy, fetch
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.netjail import NetJail, can_unshare_net
from tests.support.promtext import Scrape, scrape

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
WINDOW = (1280, 1400)


class Numbers(HTMLParser):
    """id -> (data-value, visible text) of every element carrying data-value; plus the
    attributes of <body> and every href/src the page references."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, tuple[str, str]] = {}
        self.body: dict[str, str | None] = {}
        self.links: list[str] = []
        self._open: list[tuple[str, str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(str(a[key]))
        if "data-value" in a and a.get("id"):
            self._open.append((str(a["id"]), str(a["data-value"]), []))

    def handle_data(self, data: str) -> None:
        for _, _, text in self._open:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open:
            id_, value, text = self._open.pop()
            self.values[id_] = (value, "".join(text).strip())


def parse_page(html: str) -> Numbers:
    p = Numbers()
    p.feed(html)
    return p


def chromium(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed (make system-deps)", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, NetJail([port]) as jail:
        cmd = jail.command([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{cmd}\n{r.stderr[-3000:]}"
    return r


def mirror_stats(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", "stats", *args], capture_output=True,
                          text=True, timeout=30)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h = struct.unpack(">II", head[16:24])
    return int(w), int(h)


@pytest.fixture
def busy_mirror(registry_tap: RecordingProxy, catalog: Catalog, tmp_path: Path
                ) -> Iterator[MirrorProcess]:
    """A mirror that pulled busybox twice and alpine-ish once, and refused one unknown tag."""
    reason = can_unshare_net()
    if reason is not None:
        pytest.fail(f"Chromium must run in a network namespace: {reason}", pytrace=False)
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        prefetch={"enabled": False})
    with MirrorProcess(cfg, workdir=tmp_path) as mp:
        for ref in ("library/busybox:latest", "library/busybox:latest", "library/alpine-ish:3.19"):
            out = tmp_path / "pull"
            shutil.rmtree(out, ignore_errors=True)
            r = subprocess.run(["skopeo", "--insecure-policy", "--tmpdir", str(tmp_path), "copy",
                                "--src-tls-verify=false", f"docker://{mp.hostport}/{ref}",
                                f"dir:{out}"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
        assert fetch(f"{mp.url}/v2/library/nosuch/manifests/1").status == 404
        registry_tap.wait_idle()
        yield mp


def expected(m: Scrape) -> dict[str, tuple[float, str]]:
    """What the page must show for each id, computed from /metrics alone."""
    served = m.sum("mirror_bytes_served_total")
    fetched = m.sum("mirror_upstream_bytes_total")
    ratio = m.hit_ratio()
    by = m.by("mirror_requests_total", "result")
    out = {
        "hit-ratio": (ratio, fmt_ratio(ratio)),
        "saved": (served - fetched, fmt_bytes(served - fetched)),
        "saved-ratio": ((served - fetched) / served, fmt_ratio((served - fetched) / served)),
        "served": (served, fmt_bytes(served)),
        "fetched": (fetched, fmt_bytes(fetched)),
        "tier-hot-bytes": (m.sum("mirror_cache_bytes", tier="hot"),
                           fmt_bytes(m.sum("mirror_cache_bytes", tier="hot"))),
        "tier-hot-objects": (m.sum("mirror_cache_objects", tier="hot"),
                             fmt_int(m.sum("mirror_cache_objects", tier="hot"))),
        "saved-docker.io": (m.sum("mirror_bandwidth_saved_bytes", upstream="docker.io"),
                            fmt_bytes(m.sum("mirror_bandwidth_saved_bytes", upstream="docker.io"))),
        # The mirror has run for less than an hour: the hour is everything since start.
        "hit-ratio-hour": (ratio, fmt_ratio(ratio)),
        "saved-hour": (served - fetched, fmt_bytes(served - fetched)),
    }
    for r in ("hit", "miss", "stale", "coalesced", "error"):
        out[f"req-{r}"] = (by.get(r, 0.0), fmt_int(by.get(r, 0.0)))
    return out


def assert_shows(page: Numbers, want: dict[str, tuple[float, str]]) -> None:
    for id_, (value, text) in want.items():
        assert id_ in page.values, f"#{id_} missing from the page"
        shown_value, shown_text = page.values[id_]
        assert float(shown_value) == pytest.approx(value, rel=1e-9), id_
        assert shown_text == text, id_


def test_status_page_in_chromium_matches_metrics(busy_mirror: MirrorProcess) -> None:
    mp = busy_mirror
    m = scrape(mp.url)
    assert m.by("mirror_requests_total", "result") == {"miss": 7.0, "hit": 4.0, "error": 1.0}
    want = expected(m)

    # Without JavaScript: the server-rendered numbers, and nothing fetched from elsewhere.
    with urllib.request.urlopen(mp.url + "/", timeout=10) as r:
        csp = r.headers["Content-Security-Policy"]
        html = r.read().decode()
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    plain = parse_page(html)
    assert_shows(plain, want)
    assert plain.links and all(link.startswith("/") and not link.startswith("//")
                               for link in plain.links), plain.links
    assert '<meta http-equiv="refresh"' in html  # inside <noscript>: refresh without JS

    # In Chromium, after the page's script has refreshed it in place at least once.
    budget = str((REFRESH_SECONDS + 2) * 1000)
    dom = chromium(mp.port, f"--virtual-time-budget={budget}", "--dump-dom", mp.url + "/").stdout
    page = parse_page(dom)
    assert int(page.body.get("data-refreshes") or 0) >= 1, "status.js did not refresh the page"
    assert "unreachable" not in (page.body.get("class") or "")
    assert scrape(mp.url).samples == m.samples  # page views are not pulls: nothing moved
    assert_shows(page, want)
    assert "docker.io/library/busybox" in dom and "MANIFEST_UNKNOWN" in dom
    assert re.search(r'id="pulls-1" data-value="4"', dom), "busybox: 2 pulls x 2 manifests"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    chromium(mp.port, f"--virtual-time-budget={budget}", "--hide-scrollbars",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", mp.url + "/")
    assert png_size(shot) == WINDOW
    assert shot.stat().st_size > 30_000  # a rendered page, not a blank canvas


def test_status_json_and_mirror_stats_match_metrics(busy_mirror: MirrorProcess) -> None:
    mp = busy_mirror
    m = scrape(mp.url)
    with urllib.request.urlopen(mp.url + "/status.json", timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
    s = doc["since_start"]
    assert s["hit_ratio"] == pytest.approx(m.hit_ratio())
    assert s["saved_bytes"] == m.sum("mirror_bandwidth_saved_bytes")
    assert doc["recent_errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert doc["top_images"][0] == {**doc["top_images"][0], "image": "docker.io/library/busybox",
                                    "pulls": 4}

    served = m.sum("mirror_bytes_served_total")
    saved = served - m.sum("mirror_upstream_bytes_total")
    for args in (["-c", str(mp.config_path)], ["--url", mp.url]):
        r = mirror_stats(*args)
        assert r.returncode == 0, r.stderr
        for label, text in (("hit ratio", fmt_ratio(m.hit_ratio())),
                            ("bandwidth saved", fmt_bytes(saved)), ("served", fmt_bytes(served))):
            assert re.search(rf"^  {label} +{re.escape(text)} ", r.stdout, re.M), r.stdout
        assert "docker.io/library/busybox" in r.stdout and "MANIFEST_UNKNOWN" in r.stdout
    r = mirror_stats("--json", "--url", mp.url)
    assert json.loads(r.stdout)["since_start"]["served_bytes"] == served


def test_mirror_stats_reports_an_unreachable_mirror(tmp_path: Path) -> None:
    from tests.support import free_port

    r = mirror_stats("--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "cannot read" in r.stderr and "status.json" in r.stderr
