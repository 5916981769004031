"""Audit log: one JSON line per pull request, to a file or stdout, never a secret (issue 7)."""

from __future__ import annotations

import base64
import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import Catalog, RecordingProxy, fetch
from tests.support.certs import write_htpasswd
from tests.support.mirror_proc import MirrorProcess, mirror_config

pytestmark = pytest.mark.e2e

SECRETS = ("s3cr3t-header-token", "s3cr3t-query-token", "s3cr3t-basic")
FIELDS = {"time", "client", "user", "method", "path", "upstream", "repository", "reference",
          "digest", "type", "status", "result", "bytes", "duration_ms", "agent", "error"}


def wait_lines(read: Any, want: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10  # lines are written by a thread, a moment after
    while True:
        lines = [line for line in read().splitlines() if line.startswith('{"time"')]
        if len(lines) >= want or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def test_one_line_per_pull_request_with_its_facts_and_no_secret(
        registry_tap: RecordingProxy, catalog: Catalog, tmp_path: Path) -> None:
    audit = tmp_path / "audit" / "pulls.log"
    audit.parent.mkdir()
    img = catalog["library/busybox:1.36"]
    layer = img.layers[0]
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        prefetch={"enabled": False}, log={"audit": str(audit)})
    with MirrorProcess(cfg, workdir=tmp_path) as mp:
        base = f"{mp.url}/v2/library/busybox"
        secret_headers = {"Authorization": "Bearer s3cr3t-header-token",
                          "User-Agent": "audit-test/1.0"}
        sent = [
            fetch(f"{base}/manifests/1.36?ns=docker.io&token=s3cr3t-query-token",
                  headers=secret_headers),
            fetch(f"{base}/manifests/1.36", "HEAD",
                  headers={"Authorization": "Basic czNjcjN0LWJhc2lj"}),  # base64 of a secret
            fetch(f"{base}/blobs/{layer.digest}", headers={"Range": "bytes=0-99"}),
            fetch(f"{base}/blobs/sha256:not-a-digest"),
            fetch(f"{mp.url}/v2/library/nosuch/manifests/1"),
            fetch(f"{base}/tags/list"),
        ]
        for not_a_pull in ("/v2/", "/metrics", "/", "/status.json", "/healthz"):
            assert fetch(mp.url + not_a_pull).status == 200
        assert [r.status for r in sent] == [200, 200, 206, 404, 404, 200]
        lines = wait_lines(audit.read_text, len(sent))
        time.sleep(0.3)  # a line too many would show up now
        assert len(wait_lines(audit.read_text, len(sent))) == len(sent)
        log = mp.log_text()

    assert len(lines) == len(sent), lines
    for line in lines:
        assert set(line) == FIELDS
        assert line["client"] == "127.0.0.1"
        assert line["user"] is None  # no client auth configured: nobody logged in
        assert "?" not in line["path"]
        assert line["duration_ms"] >= 0
        assert datetime.fromisoformat(line["time"].replace("Z", "+00:00")).tzinfo is not None
    tag, head, blob, bad, unknown, tags = lines
    assert (tag["method"], tag["status"], tag["result"], tag["type"]) == ("GET", 200, "miss",
                                                                          "manifest")
    assert (tag["upstream"], tag["repository"], tag["reference"]) == ("docker.io",
                                                                      "library/busybox", "1.36")
    assert tag["digest"] == img.digest and tag["bytes"] == img.size
    assert tag["agent"] == "audit-test/1.0"
    assert (head["method"], head["result"], head["bytes"]) == ("HEAD", "hit", 0)
    assert (blob["status"], blob["type"], blob["digest"], blob["bytes"]) == (
        206, "blob", layer.digest, 100)
    assert (bad["status"], bad["result"], bad["error"]) == (404, "error", "BLOB_UNKNOWN")
    assert (unknown["status"], unknown["error"], unknown["repository"]) == (
        404, "MANIFEST_UNKNOWN", "library/nosuch")
    assert (tags["type"], tags["status"], tags["result"]) == ("tags", 200, "miss")

    text = audit.read_text()
    for secret in SECRETS:
        assert secret not in text and secret not in log
    assert "czNjcjN0" not in text and "Bearer" not in text and "token=" not in text


def test_audit_to_stdout(registry_tap: RecordingProxy, catalog: Catalog, tmp_path: Path) -> None:
    img = catalog["library/alpine-ish:3.19"]
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        log={"audit": "-"})
    with MirrorProcess(cfg, workdir=tmp_path) as mp:  # its stdout goes to mp.log_path
        assert fetch(f"{mp.url}/v2/library/alpine-ish/manifests/3.19").status == 200
        assert fetch(f"{mp.url}/v2/library/alpine-ish/manifests/3.19").status == 200
        lines = wait_lines(mp.log_text, 2)
    assert [(line["result"], line["digest"]) for line in lines] == [("miss", img.digest),
                                                                   ("hit", img.digest)]


def test_audit_names_the_authenticated_user_never_the_password(
        registry_tap: RecordingProxy, catalog: Catalog, tmp_path: Path) -> None:
    password = "s3cr3t-basic"
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": password})
    audit = tmp_path / "audit.log"
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        prefetch={"enabled": False}, log={"audit": str(audit)},
                        auth={"htpasswd": str(htpasswd)})
    basic = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    url = "/v2/library/busybox/manifests/1.36"
    with MirrorProcess(cfg, workdir=tmp_path) as mp:
        assert fetch(mp.url + url).status == 401
        assert fetch(mp.url + url, headers={"Authorization": basic}).status == 200
        lines = wait_lines(audit.read_text, 2)
        log = mp.log_text()
    assert [(line["status"], line["user"]) for line in lines] == [(401, None), (200, "alice")]
    text = audit.read_text()
    assert password not in text and basic.split()[1] not in text and password not in log


def test_audit_file_reopened_on_sighup_after_logrotate(
        registry_tap: RecordingProxy, catalog: Catalog, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        prefetch={"enabled": False}, log={"audit": str(audit)})
    url = "/v2/library/alpine-ish/manifests/3.19"
    with MirrorProcess(cfg, workdir=tmp_path) as mp:
        assert fetch(mp.url + url).status == 200
        assert len(wait_lines(audit.read_text, 1)) == 1
        rotated = audit.rename(tmp_path / "audit.log.1")  # what logrotate does
        assert mp.proc is not None
        mp.proc.send_signal(signal.SIGHUP)
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:
            # Until the reopen is done, a line may still land in the rotated file.
            assert fetch(mp.url + url).status == 200
            lines = wait_lines(lambda: audit.read_text() if audit.exists() else "", 0)
            time.sleep(0.05)
    assert lines and lines[-1]["result"] == "hit"
    assert json.loads(rotated.read_text().splitlines()[0])["result"] == "miss"
