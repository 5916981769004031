"""Every Prometheus metric, on an explicit registry owned by one app (no global registry, so
tests can build many apps in one process). Labels stay low-cardinality: never a repository, tag
or digest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

TYPES = ("manifest", "blob", "tag")
RESULTS = ("hit", "miss", "stale", "coalesced", "error")
# Results answered from the cache without waiting on an upstream. `coalesced` waited for a
# fetch someone else started, so it is not a hit, though it cost no extra upstream bytes; the
# bandwidth side of the story is mirror_bandwidth_saved_bytes.
HIT_RESULTS = ("hit", "stale")


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative counters summed over labels: one sample of what the mirror did since start."""

    requests: dict[str, float] = field(default_factory=dict)  # by result
    served: dict[str, float] = field(default_factory=dict)  # bytes by source
    fetched: float = 0.0  # bytes from all upstreams

    @property
    def served_total(self) -> float:
        return sum(self.served.values())

    @property
    def saved(self) -> float:
        return self.served_total - self.fetched

    @property
    def answered(self) -> float:
        return sum(v for k, v in self.requests.items() if k != "error")

    @property
    def hits(self) -> float:
        return sum(self.requests.get(k, 0.0) for k in HIT_RESULTS)

    def hit_ratio(self) -> float | None:
        """Share of answered requests served from the cache; None before the first one."""
        return self.hits / self.answered if self.answered else None

    def saved_ratio(self) -> float | None:
        """Share of bytes served that did not have to come from an upstream."""
        return self.saved / self.served_total if self.served_total else None

    def __sub__(self, older: Totals) -> Totals:
        return Totals(
            {k: v - older.requests.get(k, 0.0) for k, v in self.requests.items()},
            {k: v - older.served.get(k, 0.0) for k, v in self.served.items()},
            self.fetched - older.fetched)


def sum_by(metric: Counter | Gauge, label: str | None) -> dict[str, float]:
    """Sum a metric's samples, grouped by one label (None: everything under "")."""
    out: dict[str, float] = {}
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            key = s.labels.get(label, "") if label else ""
            out[key] = out.get(key, 0.0) + s.value
    return out


def merged_sums(families: list[Metric], name: str, label: str | None) -> dict[str, float]:
    """sum_by over merged multiprocess families (the samples of every worker process)."""
    out: dict[str, float] = {}
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.labels.get(label, "") if label else ""
            out[key] = out.get(key, 0.0) + sample.value
    return out


class BandwidthSaved(Collector):
    """mirror_bandwidth_saved_bytes{upstream}: bytes served minus bytes fetched, computed at
    scrape time from the two counters so it can never drift from them. A gauge: it goes down
    when the mirror fetches what nobody asked for yet (prefetch) or a fetch is abandoned."""

    def __init__(self, metrics: Metrics, merged: list[Metric] | None = None) -> None:
        self._m = metrics
        self._merged = merged  # server.workers > 1: computed from every worker's counters

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "mirror_bandwidth_saved_bytes", "Bytes served to clients minus bytes fetched from "
            "the upstream (the traffic the cache kept off the upstream link)", labels=["upstream"])
        if self._merged is not None:
            served = merged_sums(self._merged, "mirror_bytes_served", "upstream")
            fetched = merged_sums(self._merged, "mirror_upstream_bytes", "upstream")
        else:
            served = sum_by(self._m.bytes_served, "upstream")
            fetched = sum_by(self._m.upstream_bytes, "upstream")
        for up in sorted(set(served) | set(fetched)):
            family.add_metric([up], served.get(up, 0.0) - fetched.get(up, 0.0))
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("mirror_bandwidth_saved_bytes", "", labels=["upstream"])


class UpstreamBackoff(Collector):
    """mirror_upstream_backoff_seconds{upstream}: seconds left before an upstream that
    answered 429 is asked again, computed at scrape time so it counts down to 0 by itself."""

    def __init__(self, until: dict[str, float]) -> None:
        self._until = until

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "mirror_upstream_backoff_seconds", "Seconds left before the upstream is asked again "
            "after a 429", labels=["upstream"])
        now = time.monotonic()
        for up, until in sorted(self._until.items()):
            family.add_metric([up], max(0.0, until - now))
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("mirror_upstream_backoff_seconds", "", labels=["upstream"])


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None,
                 multiprocess_dir: Path | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # server.workers > 1: prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
        # set by the supervisor before this process imported prometheus_client) keeps every
        # value in a file there, and /metrics merges the files of all workers, dead ones too,
        # so totals survive a worker restart.
        self.multiprocess_dir = multiprocess_dir
        r = self.registry
        self.requests = Counter(
            "mirror_requests", "Pull requests answered, by content type and cache result",
            ["upstream", "type", "result"], registry=r)
        self.bytes_served = Counter(
            "mirror_bytes_served", "Bytes of manifests and blobs sent to clients, by source",
            ["upstream", "source"], registry=r)
        self.upstream_bytes = Counter(
            "mirror_upstream_bytes", "Bytes of manifests and blobs fetched from each upstream",
            ["upstream"], registry=r)
        self.upstream_requests = Counter(
            "mirror_upstream_requests", "Requests sent to upstreams, by kind, method and status",
            ["upstream", "kind", "method", "status"], registry=r)
        self.upstream_latency = Histogram(
            "mirror_upstream_request_seconds", "Time to upstream response headers",
            ["upstream", "kind"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.peer_requests = Counter(
            "mirror_peer_requests", "Blob requests between cluster peers: asked of an owner, "
            "or answered for a peer", ["kind", "result"], registry=r)
        self.peer_bytes = Counter(
            "mirror_peer_bytes", "Blob bytes received from or sent to cluster peers",
            ["kind"], registry=r)
        self.inflight = Gauge(
            "mirror_inflight_fetches", "Upstream fetches in progress", ["upstream", "type"],
            registry=r, multiprocess_mode="livesum")
        self.coalesced = Counter(
            "mirror_coalesced_waiters", "Requests that joined a fetch already in flight",
            ["upstream", "type"], registry=r)
        self.queued = Gauge(
            "mirror_queued_fetches", "Fetches waiting for an upstream fetch slot", ["upstream"],
            registry=r, multiprocess_mode="livesum")
        self.stale = Counter(
            "mirror_stale_answers", "Tags answered from cache because revalidation failed",
            ["upstream", "reason"], registry=r)
        self.verify_failures = Counter(
            "mirror_verification_failures", "Upstream bodies that did not match their digest or "
            "length", ["upstream", "type"], registry=r)
        self.cache_bytes = Gauge(
            "mirror_cache_bytes", "Bytes stored per cache tier", ["tier"], registry=r,
            multiprocess_mode="livemax")  # workers share a tier; the one keeping it knows most
        self.cache_objects = Gauge(
            "mirror_cache_objects", "Objects stored per cache tier", ["tier"], registry=r,
            multiprocess_mode="livemax")
        self.cache_budget = Gauge(
            "mirror_cache_budget_bytes", "Size budget per cache tier", ["tier"], registry=r,
            multiprocess_mode="livemax")
        self.evictions = Counter(
            "mirror_evictions", "Objects evicted per tier", ["tier"], registry=r)
        self.evicted_bytes = Counter(
            "mirror_evicted_bytes", "Bytes evicted per tier", ["tier"], registry=r)
        self.cache_write_errors = Counter(
            "mirror_cache_write_errors", "Writes to a cache tier that failed (disk full, I/O)",
            ["tier"], registry=r)
        self.index_writes_lost = Counter(
            "mirror_index_writes_lost", "Index database writes lost: the commit failed (error: "
            "disk full, I/O) or the queue was full (overflow)", ["reason"], registry=r)
        self.ratelimit_remaining = Gauge(
            "mirror_upstream_ratelimit_remaining", "Pulls left in the upstream's rate-limit window "
            "(Docker Hub ratelimit-remaining)", ["upstream"], registry=r,
            multiprocess_mode="livemostrecent")
        self.upstream_up = Gauge(
            "mirror_upstream_up", "1 if the last request to the upstream got an HTTP answer",
            ["upstream"], registry=r, multiprocess_mode="livemostrecent")
        self.upstream_auth_failing = Gauge(
            "mirror_upstream_auth_failing", "1 while the upstream refuses the mirror's "
            "credentials (or wants some and none are configured)", ["upstream"], registry=r,
            multiprocess_mode="livemostrecent")
        self._backoff_until: dict[str, float] = {}  # upstream -> time.monotonic() deadline
        self.prefetches = Counter(
            "mirror_prefetches", "Blobs and child manifests fetched ahead of the client",
            ["upstream", "type"], registry=r)
        self.cold_uploads = Counter(
            "mirror_cold_uploads", "Write-behind copies to the cold tier by kind and result "
            "(ok, present: already there, gone: nothing left to copy, error: retried)",
            ["kind", "result"], registry=r)
        self.cold_pending = Gauge(
            "mirror_cold_pending_uploads", "Blobs, manifests and tag records waiting to be "
            "copied to the cold tier", registry=r, multiprocess_mode="livesum")
        self.cold_skips = Counter(
            "mirror_cold_tier_skips", "Times the cold tier failed or was too slow to answer a "
            "lookup on a client's path; it is then skipped for a while", registry=r)

        self.signature_checks = Counter(
            "mirror_signature_checks", "Manifests answered under a signatures rule, by rule and "
            "outcome (verified; refused; warn: served although it would have been refused)",
            ["rule", "outcome"], registry=r)
        self.audit_dropped = Counter(
            "mirror_audit_dropped_lines", "Audit lines dropped because the audit sink fell "
            "too far behind", registry=r)
        self.workers = Gauge(
            "mirror_workers", "Worker processes serving the listen address", registry=r,
            multiprocess_mode="livesum")
        self.workers.set(1)
        r.register(BandwidthSaved(self))
        r.register(UpstreamBackoff(self._backoff_until))

    def _merged(self) -> list[Metric]:
        assert self.multiprocess_dir is not None
        collector = MultiProcessCollector(None, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return list(collector.collect())  # type: ignore[no-untyped-call]

    def exposition(self) -> bytes:
        """The /metrics page: this process's registry, or every worker's samples merged."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = self._merged()
        page = CollectorRegistry(auto_describe=False)
        page.register(_Fixed([*merged, *BandwidthSaved(self, merged).collect(),
                              *UpstreamBackoff(self._backoff_until).collect()]))
        return generate_latest(page)

    def backoff(self, upstream: str, until: float) -> None:
        """The upstream is not asked again before `until` (time.monotonic())."""
        self._backoff_until[upstream] = until

    def served(self, upstream: str, source: str, nbytes: int) -> None:
        if nbytes:
            self.bytes_served.labels(upstream, source).inc(nbytes)

    def totals(self) -> Totals:
        if self.multiprocess_dir is not None:
            merged = self._merged()
            return Totals(merged_sums(merged, "mirror_requests", "result"),
                          merged_sums(merged, "mirror_bytes_served", "source"),
                          merged_sums(merged, "mirror_upstream_bytes", None).get("", 0.0))
        return Totals(sum_by(self.requests, "result"), sum_by(self.bytes_served, "source"),
                      sum_by(self.upstream_bytes, None).get("", 0.0))


class _Fixed(Collector):
    """Families already collected, for one exposition."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
