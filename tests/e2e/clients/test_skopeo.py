"""skopeo 1.9 through the mirror, cold then warm, verified by digest.

direct:           skopeo copy docker://<mirror>/busybox:latest   (default route, library/ rule)
registries-conf:  skopeo --registries-conf FILE copy docker://docker.io/library/busybox:latest
                  with the generated registries.conf (mirror location <mirror>/docker.io, a path
                  prefix route; primary location a dead port), run in a network jail. skopeo
                  ignores CONTAINERS_REGISTRIES_CONF (that variable is podman's), hence the flag.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.support import Catalog
from tests.support.clientrun import (
    E2EMirror,
    PassFigures,
    assert_only_mirror_contacted,
    e2e_mirror,
    need_tools,
)
from tests.support.netjail import NetJail
from tests.support.verify import verify_dir_copy

pytestmark = pytest.mark.e2e

IMAGES = ["library/busybox:latest",  # Docker manifest list, amd64 + arm64
          "library/multiarch:latest",  # OCI index
          "library/alpine-ish:3.19",  # single Docker v2s2 image
          "org/team/app:1.0"]  # single OCI image, three-component name


@dataclass
class Skopeo:
    mode: str
    mirror: E2EMirror
    registries_conf: Path
    jail: NetJail

    def copy(self, ref: str, out: Path, log: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        tmp = out.parent / "tmp"
        tmp.mkdir(exist_ok=True)
        if self.mode == "direct":
            # As a user writes it against a registry host: Docker Hub's short name for library/.
            name = ref.removeprefix("library/")
            cmd = ["skopeo", "--debug", "--tmpdir", str(tmp), "copy", "--all",
                   "--src-tls-verify=false", f"docker://{self.mirror.hostport}/{name}",
                   f"dir:{out}"]
        else:
            cmd = self.jail.command(
                ["skopeo", "--debug", "--registries-conf", str(self.registries_conf),
                 "--tmpdir", str(tmp), "copy", "--all", f"docker://docker.io/{ref}",
                 f"dir:{out}"])
        with open(log, "w") as fh:
            r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=180)
        assert r.returncode == 0, (f"{' '.join(cmd)}\n{log.read_text()[-3000:]}\n"
                                   f"--- mirror log:\n{self.mirror.proc.log_text()[-2000:]}")


@pytest.fixture(scope="module")
def skopeo(request: pytest.FixtureRequest, catalog: Catalog, dead_port: int, netns_ok: None,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Skopeo]:
    need_tools("skopeo")
    with e2e_mirror(catalog, dead_port, tmp_path_factory.mktemp("mirror")) as mirror:
        conf = mirror.workdir / "clients"
        mirror.client_config(conf)
        jail = NetJail([mirror.tap.port])
        try:
            yield Skopeo(request.param, mirror, conf / "registries.conf", jail)
        finally:
            jail.close()


@pytest.mark.parametrize("skopeo", ["direct", "registries-conf"], indirect=True)
@pytest.mark.parametrize("ref", IMAGES)
def test_skopeo_pull_cold_then_warm(skopeo: Skopeo, ref: str, catalog: Catalog, tmp_path: Path,
                                    figures: list[PassFigures]) -> None:
    for phase in ("cold", "warm"):
        out, log = tmp_path / phase, tmp_path / f"{phase}.log"
        f = skopeo.mirror.measure(f"skopeo {skopeo.mode}", ref, phase,
                                  partial(skopeo.copy, ref, out, log))
        figures.append(f)
        checked = verify_dir_copy(out, catalog[ref])
        assert len(checked) == len({b.digest for b in catalog[ref].all_blobs()}) + 1 + len(
            catalog[ref].children)  # every platform, every blob, byte for byte
        assert_only_mirror_contacted(log.read_text(), skopeo.mirror.hostport, skopeo.mirror.dead)
        if skopeo.mode == "registries-conf":
            # the path-prefix route: every registry request named docker.io in its path
            paths = [r.path for r in skopeo.mirror.tap.requests if r.path != "/v2/"]
            assert paths and all(p.startswith("/v2/docker.io/") for p in paths), paths
        if phase == "cold":
            assert f.upstream_requests > 0
        else:
            assert f.upstream_requests == 0, skopeo.mirror.upstream_tap.describe()


@pytest.mark.parametrize("skopeo", ["registries-conf"], indirect=True)
def test_a_mirror_miss_falls_back_only_to_the_dead_port(skopeo: Skopeo, tmp_path: Path) -> None:
    # The log checks above can fail: an image the upstream lacks makes skopeo leave the
    # mirror for its primary location, which is the dead loopback port, inside the jail.
    log = tmp_path / "miss.log"
    with pytest.raises(AssertionError):
        skopeo.copy("library/nosuch:1", tmp_path / "out", log)
    text = log.read_text()
    assert f'Trying to access \\"{skopeo.mirror.dead}/library/nosuch:1\\"' in text
    with pytest.raises(AssertionError):
        assert_only_mirror_contacted(text, skopeo.mirror.hostport, skopeo.mirror.dead)
