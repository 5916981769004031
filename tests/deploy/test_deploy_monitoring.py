"""deploy/grafana and deploy/prometheus are built on metric names the mirror really exports,
and they parse in the real tools: promtool for the alert rules (with unit tests), a real
Prometheus server for every dashboard query (issue 7)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirror.observe.metrics import Metrics
from tests.support import free_port
from tests.support.promtext import exposed_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mirror-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
METRIC = re.compile(r"\bmirror_[a-z0-9_]+")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*",
                "$upstream": ".*"}


def registry_names() -> set[str]:
    return exposed_names((f.name, f.type) for f in Metrics().registry.collect())


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (Debian package prometheus: make system-deps)",
                    pytrace=False)
    return path


def test_every_metric_in_dashboard_and_alerts_is_exported() -> None:
    names = registry_names()
    doc = json.loads(DASHBOARD.read_text())
    variables = [v.get("definition", "") for v in doc["templating"]["list"]]
    for source, exprs in (("dashboard", dashboard_exprs() + variables),
                          ("alerts", alert_exprs())):
        used = {m for e in exprs for m in METRIC.findall(e)}
        assert used, source
        assert used <= names, f"{source} uses metrics the mirror does not export: {used - names}"
    # The savings story is on the dashboard.
    joined = " ".join(dashboard_exprs())
    for name in ("mirror_requests_total", "mirror_bytes_served_total", "mirror_upstream_bytes_total",
                 "mirror_bandwidth_saved_bytes", "mirror_cache_bytes", "mirror_upstream_up",
                 "mirror_upstream_ratelimit_remaining"):
        assert name in joined, name


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = promtool()
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    assert {"MirrorHitRatioDropped", "MirrorUpstreamDown", "MirrorCacheNearBudget"} <= alerts
    r = subprocess.run([tool, "check", "rules", str(ALERTS)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([tool, "test", "rules", str(ALERT_TESTS)], capture_output=True,
                       text=True, timeout=120, cwd=ALERT_TESTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == alerts, f"alerts without a unit test: {alerts - tested}"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (make system-deps)", pytrace=False)
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1m}\nscrape_configs: []\n")
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path}/db",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "prometheus.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            doc: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        doc = json.loads(e.read())
    return doc


def test_every_dashboard_query_parses_in_prometheus(prometheus: str) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        doc = query(prometheus, expr)
        assert doc["status"] == "success", f"{expr}\n{doc}"
    assert query(prometheus, "sum(rate(mirror_requests_total[1m)")["status"] == "error"
