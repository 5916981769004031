"""Every Prometheus metric, on an explicit registry owned by one app (no global registry, so
tests can build many apps in one process). Labels stay low-cardinality: never a repository, tag
or digest."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TYPES = ("manifest", "blob", "tag")
RESULTS = ("hit", "miss", "stale", "coalesced", "error")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
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
        self.inflight = Gauge(
            "mirror_inflight_fetches", "Upstream fetches in progress", ["upstream", "type"],
            registry=r)
        self.coalesced = Counter(
            "mirror_coalesced_waiters", "Requests that joined a fetch already in flight",
            ["upstream", "type"], registry=r)
        self.queued = Gauge(
            "mirror_queued_fetches", "Fetches waiting for an upstream fetch slot", ["upstream"],
            registry=r)
        self.stale = Counter(
            "mirror_stale_answers", "Tags answered from cache because revalidation failed",
            ["upstream", "reason"], registry=r)
        self.verify_failures = Counter(
            "mirror_verification_failures", "Upstream bodies that did not match their digest or "
            "length", ["upstream", "type"], registry=r)
        self.cache_bytes = Gauge(
            "mirror_cache_bytes", "Bytes stored per cache tier", ["tier"], registry=r)
        self.cache_objects = Gauge(
            "mirror_cache_objects", "Objects stored per cache tier", ["tier"], registry=r)
        self.cache_budget = Gauge(
            "mirror_cache_budget_bytes", "Size budget per cache tier", ["tier"], registry=r)
        self.evictions = Counter(
            "mirror_evictions", "Objects evicted per tier", ["tier"], registry=r)
        self.evicted_bytes = Counter(
            "mirror_evicted_bytes", "Bytes evicted per tier", ["tier"], registry=r)
        self.cache_write_errors = Counter(
            "mirror_cache_write_errors", "Writes to a cache tier that failed (disk full, I/O)",
            ["tier"], registry=r)
        self.ratelimit_remaining = Gauge(
            "mirror_upstream_ratelimit_remaining", "Pulls left in the upstream's rate-limit window "
            "(Docker Hub ratelimit-remaining)", ["upstream"], registry=r)
        self.upstream_up = Gauge(
            "mirror_upstream_up", "1 if the last request to the upstream got an HTTP answer",
            ["upstream"], registry=r)
        self.backoff = Gauge(
            "mirror_upstream_backoff_seconds", "Seconds left before the upstream is asked again "
            "after a 429", ["upstream"], registry=r)
        self.prefetches = Counter(
            "mirror_prefetches", "Blobs and child manifests fetched ahead of the client",
            ["upstream", "type"], registry=r)

    def served(self, upstream: str, source: str, nbytes: int) -> None:
        if nbytes:
            self.bytes_served.labels(upstream, source).inc(nbytes)
