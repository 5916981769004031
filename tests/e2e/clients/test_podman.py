"""podman 4.3 through the mirror with the generated registries.conf, cold then warm.

podman pulls docker.io/<repo>; registries.conf sends it to the mirror location
<mirror>/docker.io (path-prefix route), and its primary location is a dead loopback port. Every
pull runs in a network jail with only the mirror's port reachable, with private --root,
--runroot and --tmpdir (a fresh root per pass, so the warm pass fetches everything again),
and the vfs driver. Verified: the image's digest and RepoDigests are the upstream's, podman's
debug log shows requests to the mirror only, and busybox runs (runc: crun refuses this
machine's hybrid cgroups; explicit ulimits: the defaults exceed the hard limits here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.support import Catalog
from tests.support.clientrun import (
    E2EMirror,
    PassFigures,
    SecondRegistry,
    assert_only_mirror_contacted,
    e2e_mirror,
    need_tools,
)
from tests.support.daemons import umount_under
from tests.support.netjail import NetJail

pytestmark = pytest.mark.e2e

IMAGES = ["library/busybox:latest", "library/multiarch:latest", "library/alpine-ish:3.19",
          "org/team/app:1.0", "library/big:latest"]
PARAMS = [pytest.param(r, marks=pytest.mark.slow) if r == "library/big:latest" else r
          for r in IMAGES]  # big: MIRROR_TEST_BIG_MB (64) MiB of incompressible layer


@dataclass
class Podman:
    mirror: E2EMirror
    base: Path
    env: dict[str, str]
    jail: NetJail
    short: Path

    def cmd(self, root: str, *args: str) -> list[str]:
        # podman refuses a runroot longer than 50 characters: keep those under a short /tmp dir
        d = self.base / root
        return ["podman", "--root", str(d / "root"), "--runroot", str(self.short / root / "run"),
                "--tmpdir", str(self.short / root / "tmp"), "--storage-driver", "vfs", *args]

    def pull(self, root: str, image: str, log: Path) -> None:
        self.run(root, "--log-level", "debug", "pull", image, log=log)

    def run(self, root: str, *args: str, log: Path | None = None,
            jailed: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = self.cmd(root, *args)
        if jailed:
            cmd = self.jail.command(cmd)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=self.env)
        if log is not None:
            log.write_text(r.stdout + r.stderr)
        assert r.returncode == 0, (f"{' '.join(cmd)}\n{r.stderr[-3000:]}\n--- mirror log:\n"
                                   f"{self.mirror.proc.log_text()[-2000:]}")
        return r


@pytest.fixture(scope="module")
def podman(catalog: Catalog, dead_port: int, netns_ok: None, second_registry: SecondRegistry,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    need_tools("podman", "runc")
    base = tmp_path_factory.mktemp("podman")
    with e2e_mirror(catalog, dead_port, tmp_path_factory.mktemp("mirror"),
                    {"ghcr.io": second_registry.url}) as mirror:
        conf = base / "clients"
        mirror.client_config(conf)
        # No systemd or journald here: file events, cgroupfs, k8s-file logs, private tmp.
        (base / "containers.conf").write_text(
            "[engine]\n"
            f'image_copy_tmp_dir = "{base}/copytmp"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{base}/events.log"\n'
            'cgroup_manager = "cgroupfs"\n'
            "[containers]\n"
            'log_driver = "k8s-file"\n')
        (base / "copytmp").mkdir()
        env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
               "CONTAINERS_CONF": str(base / "containers.conf")}
        jail = NetJail([mirror.tap.port])
        short = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))
        try:
            yield Podman(mirror, base, env, jail, short)
        finally:
            jail.close()
            umount_under(base)
            umount_under(short)
            shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize("ref", PARAMS)
def test_podman_pull_cold_then_warm(podman: Podman, ref: str, catalog: Catalog, tmp_path: Path,
                                    figures: list[PassFigures]) -> None:
    want = catalog[ref].digest
    image = f"docker.io/{ref}"
    for phase in ("cold", "warm"):
        root, log = f"{IMAGES.index(ref)}{phase}", tmp_path / f"{phase}.log"
        f = podman.mirror.measure("podman", ref, phase, partial(podman.pull, root, image, log))
        figures.append(f)
        inspect = podman.run(root, "image", "inspect", "--format",
                             "{{json .Digest}} {{json .RepoDigests}}", image, jailed=False)
        digest_json, repo_digests_json = inspect.stdout.strip().split(" ", 1)
        assert json.loads(digest_json) == want
        assert f"docker.io/{ref.split(':')[0]}@{want}" in json.loads(repo_digests_json)
        assert_only_mirror_contacted(log.read_text(), podman.mirror.hostport, podman.mirror.dead)
        paths = [r.path for r in podman.mirror.tap.requests if r.path != "/v2/"]
        assert paths and all(p.startswith("/v2/docker.io/") for p in paths), paths
        if phase == "cold":
            assert f.upstream_requests > 0
        else:
            assert f.upstream_requests == 0, podman.mirror.upstream_tap.describe()
        if ref == "library/busybox:latest" and phase == "warm":
            out = podman.run(root, "--runtime", "runc", "run", "--rm", "--network", "none",
                             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                             image, "echo", "podman-run-ok")
            assert out.stdout.strip() == "podman-run-ok"


def test_podman_pulls_another_registry_through_the_same_mirror(
        podman: Podman, second_registry: SecondRegistry, catalog: Catalog, tmp_path: Path,
        figures: list[PassFigures]) -> None:
    # The generated registries.conf mirrors ghcr.io at <mirror>/ghcr.io: the path-prefix route
    # brings ghcr.io's content, whose digests differ from docker.io's for the same name.
    image = "ghcr.io/library/busybox:1.36"
    want = second_registry.images["library/busybox:1.36"].digest
    assert want != catalog["library/busybox:1.36"].digest
    log = tmp_path / "ghcr.log"
    f = podman.mirror.measure("podman", image, "cold", partial(podman.pull, "ghcr", image, log))
    figures.append(f)
    digest = podman.run("ghcr", "image", "inspect", "--format", "{{.Digest}}", image,
                        jailed=False).stdout.strip()
    assert digest == want
    assert_only_mirror_contacted(log.read_text(), podman.mirror.hostport, podman.mirror.dead)
    paths = [r.path for r in podman.mirror.tap.requests if r.path != "/v2/"]
    assert paths and all(p.startswith("/v2/ghcr.io/library/busybox/") for p in paths), paths
    assert podman.mirror.upstream_tap.requests == []  # docker.io's registry was not asked
    assert podman.mirror.upstream_taps["ghcr.io"].count(kind="manifest") > 0
