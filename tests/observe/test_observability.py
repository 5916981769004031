"""Metrics arithmetic, the bounded in-memory history and the audit writer (issue 7)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram, generate_latest

from mirror.config.units import fmt_bytes, fmt_duration, fmt_ratio
from mirror.observe.audit import AuditLog
from mirror.observe.metrics import Metrics, Totals
from mirror.observe.pullstats import MinuteSamples, PullStats, TopImages
from tests.support.promtext import parse

# -- metrics --------------------------------------------------------------------------------


def test_bandwidth_saved_is_served_minus_fetched_per_upstream() -> None:
    m = Metrics()
    m.served("docker.io", "hot", 700)
    m.served("docker.io", "upstream", 300)
    m.upstream_bytes.labels("docker.io").inc(300)
    m.upstream_bytes.labels("ghcr.io").inc(50)  # prefetched, never served yet
    s = parse(generate_latest(m.registry).decode())
    assert s.sum("mirror_bandwidth_saved_bytes", upstream="docker.io") == 700
    assert s.sum("mirror_bandwidth_saved_bytes", upstream="ghcr.io") == -50
    assert m.totals().saved == 650


def test_hit_ratio_counts_hit_and_stale_among_answered() -> None:
    m = Metrics()
    for result, n in (("hit", 6), ("stale", 1), ("miss", 2), ("coalesced", 1), ("error", 5)):
        m.requests.labels("docker.io", "blob", result).inc(n)
    t = m.totals()
    assert t.answered == 10
    assert t.hit_ratio() == 0.7
    assert Totals().hit_ratio() is None and Totals().saved_ratio() is None


def test_backoff_gauge_counts_down_by_itself() -> None:
    m = Metrics()
    m.backoff("docker.io", time.monotonic() + 30)
    m.backoff("quay.io", time.monotonic() - 5)  # long over
    s = parse(generate_latest(m.registry).decode())
    assert 0 < s.sum("mirror_upstream_backoff_seconds", upstream="docker.io") <= 30
    assert s.sum("mirror_upstream_backoff_seconds", upstream="quay.io") == 0


def test_labels_stay_low_cardinality() -> None:
    """Never a repository, tag or digest as a label: only these label names exist (their
    values are checked against a real pull in tests/e2e/test_savings_metrics.py)."""
    m = Metrics()
    allowed = {"upstream", "type", "result", "source", "kind", "method", "status", "reason",
               "tier",
               "rule", "outcome"}  # signature rules: names from the config, a fixed outcome set
    metrics = [v for v in vars(m).values() if isinstance(v, Counter | Gauge | Histogram)]
    assert len(metrics) > 15
    for metric in metrics:
        assert set(metric._labelnames) <= allowed, metric


# -- in-memory history -----------------------------------------------------------------------


def test_last_hour_is_the_difference_to_the_oldest_sample_inside_it() -> None:
    now = [0.0]
    served = [0.0]
    samples = MinuteSamples(lambda: Totals({"hit": served[0]}, {"hot": served[0]}, 0.0))
    for minute in range(90):  # 90 minutes, 100 bytes (and hits) a minute
        now[0] = minute * 60.0
        samples.sample(now[0])
        served[0] += 100
    hour, covered = samples.since(3600, now[0] + 30)
    assert covered == pytest.approx(3600 + 30 - 60)  # the oldest sample within the hour
    assert hour.served_total == 100 * 60
    assert len(samples.per_interval(now[0] + 30)) == 61  # 60 full minutes + the one running


def test_top_images_keeps_the_popular_ones_in_bounded_memory() -> None:
    top = TopImages(capacity=10)
    for i in range(1000):
        top.pulled("docker.io/library/popular", float(i))
        if i % 3 == 0:
            top.pulled("docker.io/library/second", float(i))
        top.pulled(f"docker.io/oneoff/image-{i}", float(i))  # a stream of one-off names
    assert len(top) == 10
    names = [i.name for i in top.top(2)]
    assert names == ["docker.io/library/popular", "docker.io/library/second"]
    assert top.top(1)[0].pulls >= 1000


def test_recent_errors_skip_auth_challenges_and_stay_bounded() -> None:
    stats = PullStats(Totals, keep_errors=5)
    stats.observe(image=None, kind="manifest", method="GET", path="/v2/x/manifests/1",
                  status=401, nbytes=0, code="UNAUTHORIZED")
    for i in range(8):
        stats.observe(image="docker.io/x", kind="manifest", method="GET",
                      path=f"/v2/x/manifests/{i}", status=404, nbytes=0, code="MANIFEST_UNKNOWN")
    stats.observe(image="docker.io/x", kind="blob", method="GET", path="/v2/x/blobs/sha256:1",
                  status=200, nbytes=10, code="TRANSFER_CUT")
    assert len(stats.errors) == 5
    assert [e.status for e in stats.errors][-1] == 200
    assert all(e.status != 401 for e in stats.errors)


def test_units_read_well() -> None:
    assert [fmt_bytes(n) for n in (0, 999, 1037964, 20 * 2**30, -5000)] == [
        "0 B", "999 B", "0.99 MiB", "20.0 GiB", "-4.88 KiB"]
    assert fmt_ratio(None) == "\u2013" and fmt_ratio(0.5) == "50.0%"
    assert [fmt_duration(s) for s in (5, 185, 7500, 200000)] == ["5s", "3m 05s", "2h 05m",
                                                                 "2d 07h"]


# -- audit writer ----------------------------------------------------------------------------


async def test_audit_writer_never_blocks_the_loop_on_a_stalled_sink(tmp_path: Path) -> None:
    """The sink is a pipe nobody reads: the writer thread blocks, the event loop does not.
    Past the pending limit lines are dropped and counted; the rest arrive whole and in order."""
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the writer's open() returns
    metrics = Metrics()
    audit = AuditLog(str(fifo), metrics, max_pending=256 * 1024)
    ctx = audit.ctx(None)  # type: ignore[arg-type]
    await ctx.__anext__()
    written = 20_000
    for i in range(written):  # ~4 MB: far more than the pipe (64 KiB) and the buffer hold
        audit.write({"seq": i, "pad": "x" * 180})
        if i % 1000 == 0:
            await asyncio.sleep(0)  # let the writer pick up batches until the pipe is full
    # The loop still runs freely while the writer thread is stuck on the full pipe.
    await asyncio.wait_for(asyncio.sleep(0.05), timeout=10)
    dropped = metrics.audit_dropped._value.get()
    assert dropped > 0

    os.set_blocking(reader, True)
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(reader, 1 << 16):
            received.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    with pytest.raises(StopAsyncIteration):
        await ctx.__anext__()  # shutdown: flushes what is pending, closes the pipe
    t.join(30)
    os.close(reader)
    lines = received.decode().splitlines()
    seqs = [json.loads(line)["seq"] for line in lines]
    assert len(seqs) == written - dropped
    assert seqs == sorted(seqs) and seqs[0] == 0


def test_audit_directory_is_checked_with_the_config(tmp_path: Path) -> None:
    from mirror.config import parse_config
    from mirror.oci.errors import ConfigError

    base = {"upstreams": {"docker.io": {"url": "http://127.0.0.1:9"}}}
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "log": {"audit": str(tmp_path / "missing" / "a.log")}}, env={})
    assert [p for p in e.value.problems if p.startswith("log.audit:")]
    ok = parse_config({**base, "log": {"audit": "audit.log"}}, env={}, base=tmp_path)
    assert ok.log.audit == str(tmp_path / "audit.log")
    assert parse_config({**base, "log": {"audit": "-"}}, env={}).log.audit == "-"
