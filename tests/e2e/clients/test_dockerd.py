"""dockerd 20.10 through the mirror with the generated daemon.json (registry-mirrors).

dockerd mirrors only Docker Hub and names no registry (default route), and whenever a mirror
fails it silently goes to registry-1.docker.io: so it runs in its own network namespace where
only the mirror's port is reachable (vfs storage, no iptables, no bridge, private data-root and
exec-root). Verified: RepoDigests hold the upstream digest, dockerd's debug log shows the pull
from the mirror and no "Attempting next endpoint", and busybox runs with --network none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import pytest

from tests.support import Catalog
from tests.support.clientrun import E2EMirror, PassFigures, e2e_mirror, need_tools
from tests.support.daemons import Dockerd

pytestmark = pytest.mark.e2e

# As docker users write them: Docker Hub's short names for library/ images.
IMAGES = {"busybox:latest": "library/busybox:latest",
          "multiarch:latest": "library/multiarch:latest",
          "alpine-ish:3.19": "library/alpine-ish:3.19",
          "org/team/app:1.0": "org/team/app:1.0",
          "big:latest": "library/big:latest"}
PARAMS = [pytest.param(i, marks=pytest.mark.slow) if i == "big:latest" else i
          for i in IMAGES]  # big: MIRROR_TEST_BIG_MB (64) MiB of incompressible layer


@dataclass
class Docker:
    mirror: E2EMirror
    daemon: Dockerd

    def pull(self, image: str) -> None:
        self.daemon.docker("pull", image)


@pytest.fixture(scope="module")
def docker(catalog: Catalog, dead_port: int, netns_ok: None,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    need_tools("dockerd", "docker")
    with e2e_mirror(catalog, dead_port, tmp_path_factory.mktemp("mirror")) as mirror:
        root = tmp_path_factory.mktemp("dockerd")
        files = mirror.client_config(root / "clients")
        daemon = Dockerd(root, json.loads(files["daemon.json"]), [mirror.tap.port])
        daemon.start()
        try:
            info = daemon.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout
            assert json.loads(info) == [mirror.url + "/"]
            yield Docker(mirror, daemon)
        finally:
            daemon.stop()


@pytest.mark.parametrize("image", PARAMS)
def test_docker_pull_cold_then_warm(docker: Docker, image: str, catalog: Catalog,
                                    figures: list[PassFigures]) -> None:
    ref = IMAGES[image]
    want = catalog[ref].digest
    for phase in ("cold", "warm"):
        if phase == "warm":  # a cold client again: no image, no layers
            docker.daemon.docker("image", "rm", "-f", image)
            docker.daemon.docker("image", "prune", "-a", "-f")
        mark = docker.daemon.log_size()
        f = docker.mirror.measure("dockerd", ref, phase, partial(docker.pull, image))
        figures.append(f)
        log = docker.daemon.log_since(mark)
        repo_digests = json.loads(docker.daemon.docker(
            "image", "inspect", "--format", "{{json .RepoDigests}}", image).stdout)
        assert f"{image.split(':')[0]}@{want}" in repo_digests, repo_digests
        assert f"Trying to pull {image.split(':')[0]} from {docker.mirror.url}/" in log, log
        assert "Attempting next endpoint" not in log, log
        assert "registry-1.docker.io" not in log, log
        # the default route: no ns=, no registry in the path
        requests = docker.mirror.tap.requests
        assert requests and all(not r.query and not r.path.startswith("/v2/docker.io/")
                                for r in requests), docker.mirror.tap.describe()
        if phase == "cold":
            assert f.upstream_requests > 0
        else:
            assert f.upstream_requests == 0, docker.mirror.upstream_tap.describe()
        if image == "busybox:latest" and phase == "warm":
            out = docker.daemon.docker("run", "--rm", "--network", "none", image,
                                       "echo", "docker-run-ok")
            assert out.stdout.strip() == "docker-run-ok"
