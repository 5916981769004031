"""server.workers: 2 — state the workers must share (issue 15): the key signing Bearer tokens,
and what the worker keeping the hot tier's budget evicted.

Which worker answers a connection is the kernel's choice (SO_REUSEPORT, by the connection's
ports), so every check here is repeated on many fresh connections: with two workers, 40 of them
all landing on the same one happens once in 2^39 runs."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_workers import children
from tests.support import RecordingProxy, fetch
from tests.support.blobs import MiB, PushedBlob, push_random_blob
from tests.support.certs import write_htpasswd
from tests.support.client import hashed_get
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.pulls import du, metric
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ALICE, ALICE_PW = "alice", "alice-Pw-8e1f"
CONNECTIONS = 40
NOWHERE = "http://127.0.0.1:9"  # token tests ping /v2/ only: no upstream is ever asked


@contextmanager
def two_workers(cfg: dict[str, Any], workdir: Path,
                env: dict[str, str] | None = None) -> Iterator[MirrorProcess]:
    with MirrorProcess(cfg, workdir=workdir, env=env) as proc:
        assert proc.proc is not None
        sup = proc.proc.pid
        wait_for("two workers", lambda: len(children(sup)) == 2)
        workers_started(proc, 2)
        yield proc


def workers_started(proc: MirrorProcess, total: int) -> None:
    """Until `total` workers (in all, restarts included) have started their services: each
    logs its cache's figures then (the log is appended to across restarts)."""
    wait_for(f"{total} worker starts", lambda: proc.log_text().count("mirror.http.app: cache at")
             >= total)
    wait_for("workers listening", lambda: all(
        fetch(f"{proc.url}/healthz").status == 200 for _ in range(6)))


def token_config(tmp_path: Path, name: str, workers: int = 2, **token: Any) -> dict[str, Any]:
    ht = write_htpasswd(tmp_path / "htpasswd", {ALICE: ALICE_PW})
    return mirror_config({"docker.io": NOWHERE}, tmp_path / name / "cache",
                         server={"workers": workers}, prefetch={"enabled": False},
                         auth={"htpasswd": str(ht), "token": {"ttl": "10m", **token}})


def get_token(url: str) -> str:
    basic = base64.b64encode(f"{ALICE}:{ALICE_PW}".encode()).decode()
    reply = fetch(f"{url}/auth/token?service=mirror", headers={"Authorization": f"Basic {basic}"})
    assert reply.status == 200, reply.status
    return str(json.loads(reply.body)["token"])


def bearer_statuses(url: str, token: str, n: int = CONNECTIONS) -> list[int | None]:
    """The answers to the ping with the token, each on a fresh connection."""
    return [fetch(f"{url}/v2/", headers={"Authorization": f"Bearer {token}"}).status
            for _ in range(n)]


def test_a_token_from_one_worker_is_valid_on_every_worker(tmp_path: Path) -> None:
    """No key configured: the supervisor makes one per start and gives it to every worker,
    also to a worker it starts again after a crash."""
    with two_workers(token_config(tmp_path, "m"), tmp_path / "m") as proc:
        assert proc.proc is not None
        token = get_token(proc.url)
        assert bearer_statuses(proc.url, token) == [200] * CONNECTIONS
        assert bearer_statuses(proc.url, "x" + token, 4) == [401] * 4  # a forged one is not

        victim = children(proc.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        sup = proc.proc.pid
        wait_for("a new worker", lambda: len(children(sup)) == 2 and victim not in children(sup))
        workers_started(proc, 3)
        assert bearer_statuses(proc.url, token) == [200] * CONNECTIONS

        # A restart makes a new key: tokens from before are refused (clients ask again).
        proc.restart()
        workers_started(proc, 5)
        statuses = bearer_statuses(proc.url, token, 6)
        assert statuses == [401] * 6, statuses


def test_with_a_key_file_tokens_work_across_processes_and_restarts(tmp_path: Path) -> None:
    """auth.token.key_file: replicas (separately started mirrors, several hosts) accept each
    other's tokens, and tokens survive a restart. The key is never in logs or answers."""
    key = secrets.token_hex(32)
    (tmp_path / "token.key").write_text(key + "\n")
    key_file = str(tmp_path / "token.key")
    with (two_workers(token_config(tmp_path, "a", key_file=key_file), tmp_path / "a") as a,
          two_workers(token_config(tmp_path, "b", key_env="MIRROR_TOKEN_KEY"), tmp_path / "b",
                      env={"MIRROR_TOKEN_KEY": key}) as b):
        token = get_token(a.url)
        assert bearer_statuses(b.url, token) == [200] * CONNECTIONS
        assert bearer_statuses(a.url, get_token(b.url)) == [200] * CONNECTIONS
        b.restart()
        workers_started(b, 4)
        assert bearer_statuses(b.url, token) == [200] * CONNECTIONS
        pages = [fetch(f"{m.url}{p}").body for m in (a, b) for p in ("/metrics", "/status.json")]
        logs = a.log_text() + b.log_text()
    # A mirror with another key (none configured) refuses them: the check above can fail.
    with MirrorProcess(token_config(tmp_path, "c", workers=1), workdir=tmp_path / "c") as c:
        assert bearer_statuses(c.url, token, 4) == [401] * 4
    for text in (logs, *(p.decode(errors="replace") for p in pages)):
        assert key not in text


# -- evictions ----------------------------------------------------------------------------------


def hot_files(cache: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(cache / "blobs") for f in files]


def evicted(cache: Path, blobs: list[PushedBlob]) -> list[PushedBlob]:
    return [b for b in blobs
            if not (cache / "blobs" / "sha256" / b.digest[7:9] / b.digest[7:]).exists()]


def every_view_matches_the_disk(url: str, cache: Path, n: int = 12) -> bool:
    """/status.json on n fresh connections (both workers answer some): this worker's hot-tier
    figures and the merged mirror_cache_bytes both equal what is on disk."""
    want_bytes, want_objects = du(cache / "blobs"), len(hot_files(cache))
    for _ in range(n):
        doc = json.loads(fetch(f"{url}/status.json").body)
        hot = next(t for t in doc["tiers"] if t["tier"] == "hot")
        if (doc["hot"]["used"], doc["hot"]["objects"], hot["bytes"]) != (
                want_bytes, want_objects, want_bytes):
            return False
    return metric(url, "mirror_cache_bytes", tier="hot") == want_bytes


def evicting_config(upstream: str, cache: Path, cold: Path) -> dict[str, Any]:
    """Two workers, a 10 MiB hot tier (evicts past 9.5 MiB down to 3 MiB), a file:// cold tier."""
    return mirror_config({"docker.io": upstream}, cache, prefetch={"enabled": False},
                         server={"workers": 2},
                         cache={"max_size": "10MiB", "low_watermark": 0.3,
                                "object_store": {"url": f"file://{cold}"}})


def break_cold_tier(cold: Path) -> None:
    """Its directory becomes a file: every copy to it fails and stays pending."""
    cold.rename(cold.with_name("cold-away"))
    cold.write_bytes(b"not a directory")


def mend_cold_tier(cold: Path) -> None:
    cold.unlink()
    cold.with_name("cold-away").rename(cold)


def get_all(url: str, blobs: list[PushedBlob]) -> None:
    for b in blobs:
        reply, digest = hashed_get(f"{url}/v2/{b.repo}/blobs/{b.digest}")
        assert reply.status == 200 and digest == b.digest


def test_an_eviction_by_the_primary_reaches_every_worker_and_its_uploader(
        registry_tap: RecordingProxy, tmp_path: Path) -> None:
    """Worker 0 keeps the budget and evicts; the other worker learns it from the index's
    eviction log: its usage figures and /metrics agree with the disk again, and its pending
    copies of evicted files to the cold tier end as "gone" instead of failing forever."""
    cache, cold = tmp_path / "cache", tmp_path / "cold"
    blobs = [push_random_blob(registry_tap.target, "test/evict", MiB, tmp_path)
             for _ in range(12)]
    first, then = blobs[:8], blobs[8:]
    with two_workers(evicting_config(registry_tap.url, cache, cold), tmp_path / "m") as proc:
        # Every copy stays pending, so the other worker still holds copy jobs for the files
        # the primary is about to evict.
        break_cold_tier(cold)
        get_all(proc.url, first)
        # Both workers count all 8 (learned from the index): 8 MiB, under the 9.5 MiB mark.
        wait_for("both workers count the first blobs",
                 lambda: every_view_matches_the_disk(proc.url, cache), timeout=30)
        assert len(hot_files(cache)) == 8
        get_all(proc.url, then)  # 12 MiB in all
        # The primary crosses 9.5 MiB once it learned 10 of them, and evicts down to 3 MiB:
        # at least 7 of the first 8 go.
        wait_for("the primary's eviction", lambda: len(evicted(cache, first)) >= 7, timeout=30)
        mend_cold_tier(cold)

        wait_for("every worker's view of the hot tier matches the disk",
                 lambda: every_view_matches_the_disk(proc.url, cache), timeout=30)
        # Copies of files still there land; those of evicted files are done ("gone").
        wait_for("no pending copies", lambda: metric(
            proc.url, "mirror_cold_pending_uploads") == 0, timeout=120)
        assert metric(proc.url, "mirror_cold_uploads_total", kind="blob", result="gone") >= 7
        errors = metric(proc.url, "mirror_cold_uploads_total", result="error")
        for b in blobs:  # every worker answers every blob, evicted ones fetched again
            reply, digest = hashed_get(f"{proc.url}/v2/{b.repo}/blobs/{b.digest}")
            assert reply.status == 200 and digest == b.digest
        assert metric(proc.url, "mirror_cold_uploads_total", result="error") == errors
        log = proc.log_text()
    # Neither worker started again (that would rebuild its accounting from the directory).
    assert "exited" not in log, log
    assert "No such file or directory" not in log, log  # no copy of a file that is gone
    shutil.rmtree(cold, ignore_errors=True)


def test_the_evictor_copies_what_either_worker_has_not_copied_before_evicting(
        registry_tap: RecordingProxy, tmp_path: Path) -> None:
    """Both workers commit blobs while the cold tier is unwritable, so every copy is pending
    (in both workers' queues, with growing retry delays). Once the cold tier works again, the
    worker keeping the budget evicts; its guard finishes each victim's copy first, also the
    ones the other worker queued: every evicted blob is then in the cold tier."""
    cache, cold = tmp_path / "cache", tmp_path / "cold"
    blobs = [push_random_blob(registry_tap.target, "test/guard", MiB, tmp_path)
             for _ in range(12)]
    first, then = blobs[:8], blobs[8:]
    with two_workers(evicting_config(registry_tap.url, cache, cold), tmp_path / "m") as proc:
        break_cold_tier(cold)
        get_all(proc.url, first)
        wait_for("both workers count the first blobs",
                 lambda: every_view_matches_the_disk(proc.url, cache), timeout=30)
        # Three failed attempts per blob: the next retries are 4 s away, longer than the
        # eviction below takes, so only the evictor's own guard can copy in time.
        wait_for("failed copies", lambda: metric(
            proc.url, "mirror_cold_uploads_total", result="error") >= 3 * len(first), timeout=30)
        mend_cold_tier(cold)
        get_all(proc.url, then)  # past the high watermark: the primary evicts
        wait_for("the primary's eviction", lambda: len(evicted(cache, first)) >= 7, timeout=30)
        gone = evicted(cache, blobs)
        in_cold = [b for b in gone
                   if (cold / "blobs" / "sha256" / b.digest[7:]).exists()
                   or any(cold.rglob(b.digest[7:]))]
        assert in_cold == gone, [b.digest for b in gone if b not in in_cold]
        log = proc.log_text()
    assert "before its copy to the cold tier finished" not in log, log
