"""The status document: one JSON-able summary for /status.json, the status page and
`mirror stats`, built from the metrics (so every number matches /metrics), the in-memory pull
history and the runtime facts the composition root reports (passed in by mirror/http/status.py)."""

from __future__ import annotations

import time
from typing import Any

from mirror import __version__
from mirror.config import Config
from mirror.observe.metrics import RESULTS, Metrics, Totals, sum_by
from mirror.observe.pullstats import HOUR, PullStats


def window(totals: Totals, seconds: float) -> dict[str, Any]:
    """Requests, hit ratio and bytes of one time window (or since start)."""
    return {
        "seconds": round(seconds, 1),
        "requests": {r: int(totals.requests.get(r, 0)) for r in RESULTS},
        "answered": int(totals.answered),
        "hit_ratio": totals.hit_ratio(),
        "served_bytes": int(totals.served_total),
        "served_by_source": {k: int(v) for k, v in sorted(totals.served.items())},
        "fetched_bytes": int(totals.fetched),
        "saved_bytes": int(totals.saved),
        "saved_ratio": totals.saved_ratio(),
    }


def _tiers(m: Metrics) -> list[dict[str, Any]]:
    used, objects, budget = (sum_by(m.cache_bytes, "tier"), sum_by(m.cache_objects, "tier"),
                             sum_by(m.cache_budget, "tier"))
    order = {"hot": 0, "cold": 1}
    out = []
    for tier in sorted(set(used) | set(budget), key=lambda t: (order.get(t, 9), t)):
        b = budget.get(tier)
        out.append({
            "tier": tier,
            "bytes": int(used.get(tier, 0)),
            "objects": int(objects.get(tier, 0)),
            "budget": int(b) if b else None,
            "used_ratio": used.get(tier, 0) / b if b else None,
        })
    return out


def _upstreams(m: Metrics, names: list[str], runtime: list[dict[str, Any]],
               offline: bool) -> list[dict[str, Any]]:
    facts = {str(u.get("name")): u for u in runtime}
    up, remaining = sum_by(m.upstream_up, "upstream"), sum_by(m.ratelimit_remaining, "upstream")
    served, fetched = sum_by(m.bytes_served, "upstream"), sum_by(m.upstream_bytes, "upstream")
    auth_failing = sum_by(m.upstream_auth_failing, "upstream")
    out = []
    for name in names:
        doc: dict[str, Any] = {"name": name, "url": None, "last_ok": None, "last_error": None,
                               "backoff_seconds": 0.0, "auth_error": None, **facts.get(name, {})}
        state = up.get(name)
        doc["state"] = ("offline" if offline else "unknown" if state is None
                        else "up" if state else "down")
        if doc["backoff_seconds"]:
            doc["state"] = "backoff"
        if auth_failing.get(name):  # from the metric: any worker's requests count
            doc["state"] = "auth-failed"
        doc["ratelimit_remaining"] = int(remaining[name]) if name in remaining else None
        doc["served_bytes"] = int(served.get(name, 0))
        doc["fetched_bytes"] = int(fetched.get(name, 0))
        doc["saved_bytes"] = doc["served_bytes"] - doc["fetched_bytes"]
        out.append(doc)
    return out


def _signature_checks(m: Metrics) -> dict[str, dict[str, int]]:
    """mirror_signature_checks by rule, then outcome (verified, refused, warn)."""
    out: dict[str, dict[str, int]] = {}
    for family in m.signature_checks.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                rule = out.setdefault(s.labels["rule"], {})
                rule[s.labels["outcome"]] = rule.get(s.labels["outcome"], 0) + int(s.value)
    return out


def build(config: Config, m: Metrics, stats: PullStats, runtime: dict[str, Any],
          now: float | None = None) -> dict[str, Any]:
    """`runtime`: the facts the composition root reports (start time, tiers, upstream states)."""
    now = time.time() if now is None else now
    started = float(runtime.get("started", now))
    total = m.totals()
    hour, covered = stats.samples.since(HOUR, now)
    doc: dict[str, Any] = dict(runtime)  # keep what the composition root reports
    if isinstance(doc.get("cluster"), list):
        doc["cluster"] = {"peers": doc["cluster"],
                          "bytes": {k: int(v) for k, v in sum_by(m.peer_bytes, "kind").items()}}
    if isinstance(doc.get("signatures"), dict):
        doc["signatures"] = {**doc["signatures"], "checks": _signature_checks(m)}
    doc.update({
        "version": __version__,
        "generated": now,
        "started": started,
        "uptime": max(0.0, now - started),
        "offline": config.offline,
        "since_start": window(total, now - started),
        "last_hour": window(hour, covered),
        "per_minute": [
            {"start": at, "served_bytes": int(t.served_total), "fetched_bytes": int(t.fetched),
             "hits": int(t.hits), "answered": int(t.answered)}
            for at, t in stats.samples.per_interval(now)],
        "tiers": _tiers(m),
        "upstreams": _upstreams(m, list(config.upstreams), runtime.get("upstreams", []),
                                config.offline),
        "top_images": [{"image": i.name, "pulls": i.pulls, "bytes": i.bytes, "last": i.last}
                       for i in stats.images.top(10)],
        "recent_errors": [{"time": e.at, "method": e.method, "path": e.path, "status": e.status,
                           "code": e.code, "message": e.message}
                          for e in reversed(stats.errors)][:20],
    })
    return doc
