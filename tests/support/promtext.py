"""Read a Prometheus text exposition (what /metrics serves) into plain numbers for asserts."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape: (sample name, sorted label pairs) -> value."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def sum(self, name: str, **labels: str) -> float:
        """Sum of `name` over every series whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.samples.items()
                   if n == name and want <= set(lab))

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        out: dict[str, float] = {}
        want = set(labels.items())
        for (n, lab), v in self.samples.items():
            if n == name and want <= set(lab):
                key = dict(lab).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out

    def label_values(self) -> dict[str, set[str]]:
        """label name -> every value seen in this scrape (for cardinality checks)."""
        out: dict[str, set[str]] = {}
        for (_, lab) in self.samples:
            for k, v in lab:
                out.setdefault(k, set()).add(v)
        return out

    def hit_ratio(self) -> float:
        """The documented definition: (hit + stale) / answered (errors excluded)."""
        by = self.by("mirror_requests_total", "result")
        answered = sum(v for k, v in by.items() if k != "error")
        return (by.get("hit", 0.0) + by.get("stale", 0.0)) / answered


def parse(text: str) -> Scrape:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Scrape(samples)


def scrape(base_url: str) -> Scrape:
    with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=10) as r:
        return parse(r.read().decode())


def exposed_names(families: Iterable[tuple[str, str]]) -> set[str]:
    """Sample names a family (name, type) can expose, whether or not it has series yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                 "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}
    out: set[str] = set()
    for name, kind in families:
        out.update(name + s for s in suffixes.get(kind, ("",)))
    return out
