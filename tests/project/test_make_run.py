"""`make run` as a new user runs it: the default config, the banner that says where to point
clients, `/v2/` and the status page served (issue 10).

The default config names the real Docker Hub, so `make run` runs inside `unshare --net` (only a
loopback that nothing else shares): whatever the mirror might try to reach cannot leave the
machine. The time to the first `/v2/` answer is printed, not asserted (2 shared cores); the
README's Testing section records a measured figure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mirror.config import default_config_text
from tests.support.netjail import can_unshare_net

ROOT = Path(__file__).resolve().parents[2]

# Runs inside the network namespace: bring loopback up, start the command, wait for /v2/,
# fetch the other pages, stop it, print one JSON document.
DRIVER = r"""
import json, os, signal, subprocess, sys, threading, time, urllib.request, urllib.error
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                     start_new_session=True)
lines = []
threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True).start()
def get(path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:5000" + path, timeout=5) as r:
            return r.status, r.read().decode(errors="replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), dict(e.headers)
out = {"ready": None}
try:
    while time.monotonic() - t0 < 60 and p.poll() is None:
        try:
            status, _, headers = get("/v2/")
            out["ready"] = time.monotonic() - t0
            out["v2"] = [status, headers.get("Docker-Distribution-API-Version")]
            break
        except OSError:
            time.sleep(0.02)
    if out["ready"] is not None:
        for path in ("/", "/healthz", "/status.json"):
            status, body, headers = get(path)
            out[path] = [status, headers.get("Content-Type", ""), body[:20000]]
finally:
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    time.sleep(0.2)
    out["output"] = "".join(lines)
    out["killed"] = p.returncode == -signal.SIGKILL
print(json.dumps(out))
"""


def test_make_run_serves_v2_and_the_status_page(tmp_path: Path) -> None:
    reason = can_unshare_net()
    if reason is not None:
        pytest.fail(f"cannot isolate `make run` from the internet: {reason}", pytrace=False)
    if shutil.which("make") is None:
        pytest.fail("make is not installed", pytrace=False)
    # The top-level mirror.yaml `make run` uses is the built-in default (tests/config/test_config.py);
    # a copy keeps its ./data cache in tmp_path instead of the work tree.
    assert yaml.safe_load((ROOT / "mirror.yaml").read_text()) == yaml.safe_load(default_config_text())
    config = tmp_path / "mirror.yaml"
    shutil.copy(ROOT / "mirror.yaml", config)
    venv = Path(sys.executable).parent.parent
    # -o: the test interpreter's environment is already installed; never reinstall it.
    make = ["make", "-s", "-C", str(ROOT), "run", f"VENV={venv}", "-o", f"{venv}/.installed",
            f"CONFIG={config}"]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    r = subprocess.run(["unshare", "--net", "--", sys.executable, str(driver), *make],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ready"] is not None, out["output"]
    print(f"\nmake run: /v2/ answered {out['ready']:.2f}s after start")

    # The banner says where to point each client.
    banner = out["output"]
    assert f"(config {config})" in banner
    assert "upstreams: docker.io, ghcr.io, quay.io, registry.k8s.io" in banner
    assert "status page: http://127.0.0.1:5000/" in banner
    assert "metrics: http://127.0.0.1:5000/metrics" in banner
    assert '"registry-mirrors": ["http://127.0.0.1:5000"]' in banner
    assert 'certs.d/<registry>/hosts.toml [host."http://127.0.0.1:5000"]' in banner
    # podman: the path names the registry, else ghcr.io pulls would go to Docker Hub
    assert 'location = "127.0.0.1:5000/<registry>" (e.g. 127.0.0.1:5000/docker.io' in banner
    assert 'location = "127.0.0.1:5000"' not in banner

    assert out["v2"] == [200, "registry/2.0"]
    status, ctype, page = out["/"]
    assert status == 200 and ctype.startswith("text/html")
    for registry in ("docker.io", "ghcr.io", "quay.io", "registry.k8s.io"):
        assert registry in page
    assert out["/healthz"][0] == 200
    status, ctype, doc = out["/status.json"]
    assert status == 200 and ctype.startswith("application/json")
    json.loads(doc)
    assert (tmp_path / "data").is_dir()  # cache.dir ./data is relative to the config file
    # Ctrl-C stops it gracefully: no traceback, no SIGKILL needed
    assert not out["killed"] and "Traceback" not in banner, banner
