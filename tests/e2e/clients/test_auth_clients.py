"""containerd and dockerd through a mirror that requires a login (htpasswd, Basic challenge).

How each daemon gets its credentials to a mirror, as users configure it:
- containerd (ctr 1.6, hosts.toml): `ctr images pull --user name:password` answers the
  mirror's Basic challenge (CRI users put the same in the registry `configs` of the mirror's
  host).
- dockerd (registry-mirrors): the docker CLI sends the credentials it holds for Docker Hub
  (`docker login` without a server, stored under https://index.docker.io/v1/) and dockerd
  presents them to every endpoint of that pull, the mirror included.
Without credentials both get a 401 from the mirror and nothing reaches the upstream. Clients
run in network jails with only the mirror reachable; dockerd's fallback to Docker Hub fails
there, which is what a pull without credentials shows."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Catalog
from tests.support.certs import write_htpasswd
from tests.support.clientrun import E2EMirror, e2e_mirror, need_tools
from tests.support.daemons import Containerd, Dockerd
from tests.support.netjail import NetJail

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "s3cret-alice-pw"
REF = "library/busybox:latest"


@pytest.fixture(scope="module")
def mirror(catalog: Catalog, dead_port: int, netns_ok: None,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EMirror]:
    work = tmp_path_factory.mktemp("auth-mirror")
    ht = write_htpasswd(work / "htpasswd", {USER: PASSWORD})
    with e2e_mirror(catalog, dead_port, work, extra={"auth": {"htpasswd": str(ht)}}) as m:
        yield m


def mirror_saw(mirror: E2EMirror) -> tuple[int, int]:
    """(requests that carried credentials, requests answered 401) at the mirror."""
    reqs = mirror.tap.requests
    with_creds = sum(1 for r in reqs if (r.header("Authorization") or "").startswith("Basic "))
    return with_creds, sum(1 for r in reqs if r.status == 401)


def test_containerd_pulls_with_user_and_is_refused_without(
        mirror: E2EMirror, catalog: Catalog, tmp_path: Path) -> None:
    need_tools("containerd", "ctr")
    daemon = Containerd(tmp_path / "containerd")
    daemon.start()
    jail = NetJail([mirror.tap.port])
    try:
        hosts = tmp_path / "clients"
        mirror.client_config(hosts)

        def pull(namespace: str, *creds: str) -> subprocess.CompletedProcess[str]:
            cmd = jail.command(["ctr", "--address", str(daemon.socket), "-n", namespace,
                                "images", "pull", "--hosts-dir", str(hosts / "certs.d"), *creds,
                                f"docker.io/{REF}"])
            return subprocess.run(cmd, capture_output=True, text=True, timeout=180)

        mirror.tap.clear()
        mirror.upstream_tap.clear()
        r = pull("anonymous")
        assert r.returncode != 0
        assert "401" in r.stderr or "unauthorized" in r.stderr.lower(), r.stderr
        assert mirror_saw(mirror)[1] >= 1
        assert mirror.upstream_tap.requests == [], "a refused pull must not reach upstream"

        mirror.tap.clear()
        r = pull("alice", "--user", f"{USER}:{PASSWORD}")
        assert r.returncode == 0, r.stderr
        assert PASSWORD not in r.stdout + r.stderr
        out = daemon.ctr("images", "ls", namespace="alice").stdout
        assert catalog[REF].digest in out, out
        with_creds, _ = mirror_saw(mirror)
        assert with_creds >= 3  # manifest, config, layer
        assert all("ns=docker.io" in r.query for r in mirror.tap.requests if r.path != "/v2/")
    finally:
        jail.close()
        daemon.stop()
    assert PASSWORD not in mirror.proc.log_text()


def test_dockerd_presents_its_docker_hub_login_to_the_mirror(
        mirror: E2EMirror, catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> None:
    need_tools("dockerd", "docker")
    root = tmp_path_factory.mktemp("dk")  # short: dockerd's socket paths must fit 104 bytes
    files = mirror.client_config(root / "clients")
    daemon = Dockerd(root, json.loads(files["daemon.json"]), [mirror.tap.port])
    daemon.start()
    try:
        mirror.tap.clear()
        mirror.upstream_tap.clear()
        r = daemon.docker("pull", "busybox:latest", check=False)
        assert r.returncode != 0, "the mirror let a pull in without credentials"
        assert mirror_saw(mirror)[1] >= 1
        assert mirror.upstream_tap.requests == []

        # What `docker login` (no server: Docker Hub) stores; login itself would ask Hub.
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (daemon.docker_config / "config.json").write_text(json.dumps(
            {"auths": {"https://index.docker.io/v1/": {"auth": token}}}))
        mirror.tap.clear()
        mark = daemon.log_size()
        daemon.docker("pull", "busybox:latest")
        log = daemon.log_since(mark)
        assert "Attempting next endpoint" not in log, log
        digests = json.loads(daemon.docker("image", "inspect", "--format",
                                           "{{json .RepoDigests}}", "busybox:latest").stdout)
        assert f"busybox@{catalog[REF].digest}" in digests, digests
        with_creds, _ = mirror_saw(mirror)
        assert with_creds >= 3
        assert PASSWORD not in daemon.log_text()
    finally:
        daemon.stop()
    assert PASSWORD not in mirror.proc.log_text()
