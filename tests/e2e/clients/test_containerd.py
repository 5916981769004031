"""containerd 1.6 (ctr) through the mirror with the generated certs.d/docker.io/hosts.toml.

A private containerd (no network at all; with ctr 1.6 the client makes the registry requests)
with isolated content per namespace, so each pass in a fresh namespace fetches every blob.
`ctr images pull --hosts-dir` runs in a network jail with only the mirror's port reachable;
hosts.toml's `server` (the fallback) is a dead loopback port. containerd names the registry
with ?ns=docker.io on every request: the client tap in front of the mirror shows it, and ctr's
log shows the mirror's OCI-Namespace echo. Verified: `ctr images ls` digest is the upstream's,
`images check` says complete, no "trying next host" in ctr's debug log, and busybox runs with
`ctr run`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.support import Catalog
from tests.support.clientrun import (
    PassFigures,
    SecondRegistry,
    e2e_mirror,
    need_tools,
)
from tests.support.ctr import Ctr
from tests.support.daemons import Containerd
from tests.support.netjail import NetJail

pytestmark = pytest.mark.e2e

IMAGES = ["library/busybox:latest", "library/multiarch:latest", "library/alpine-ish:3.19",
          "org/team/app:1.0", "library/big:latest"]
PARAMS = [pytest.param(r, marks=pytest.mark.slow) if r == "library/big:latest" else r
          for r in IMAGES]  # big: MIRROR_TEST_BIG_MB (64) MiB of incompressible layer


@pytest.fixture(scope="module")
def ctr(catalog: Catalog, dead_port: int, netns_ok: None, second_registry: SecondRegistry,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctr]:
    need_tools("containerd", "ctr", "runc")
    daemon = Containerd(tmp_path_factory.mktemp("containerd"))
    daemon.start()
    try:
        with e2e_mirror(catalog, dead_port, tmp_path_factory.mktemp("mirror"),
                        {"ghcr.io": second_registry.url}) as mirror:
            conf = daemon.root / "clients"
            files = mirror.client_config(conf)
            assert f'server = "http://{mirror.dead}"' in files["certs.d/docker.io/hosts.toml"]
            jail = NetJail([mirror.tap.port])
            try:
                yield Ctr(mirror, daemon, conf / "certs.d", jail)
            finally:
                jail.close()
    finally:
        daemon.stop()


def listed_digest(ctr: Ctr, namespace: str, image: str) -> str:
    out = ctr.daemon.ctr("images", "ls", namespace=namespace).stdout
    for line in out.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == image:
            return cols[2]
    raise AssertionError(f"{image} not in ctr images ls:\n{out}")


@pytest.mark.parametrize("ref", PARAMS)
def test_ctr_pull_cold_then_warm(ctr: Ctr, ref: str, catalog: Catalog, tmp_path: Path,
                                 figures: list[PassFigures]) -> None:
    want = catalog[ref].digest
    image = f"docker.io/{ref}"
    for phase in ("cold", "warm"):
        ns, log = f"{phase}-{IMAGES.index(ref)}", tmp_path / f"{phase}.log"
        f = ctr.mirror.measure("containerd (ctr)", ref, phase, partial(ctr.pull, ns, image, log))
        figures.append(f)
        assert listed_digest(ctr, ns, image) == want
        check = ctr.daemon.ctr("images", "check", f"name=={image}", namespace=ns).stdout
        assert "complete" in check, check
        text = log.read_text()
        assert "trying next host" not in text, text[-2000:]
        hosts = set(re.findall(r'host="?([0-9.]+:[0-9]+)', text))
        assert hosts == {ctr.mirror.hostport}, hosts
        assert "response.header.oci-namespace=docker.io" in text  # the mirror echoed ns=
        # every request named the registry with ns= (the ns route), and the mirror echoed it
        requests = ctr.mirror.tap.requests
        assert requests and all(r.query == "ns=docker.io" for r in requests), \
            ctr.mirror.tap.describe()
        assert all(r.path.startswith(f"/v2/{ref.split(':')[0]}/") for r in requests)
        assert all(r.status == 200 for r in requests), ctr.mirror.tap.describe()
        if phase == "cold":
            assert f.upstream_requests > 0
        else:
            assert f.upstream_requests == 0, ctr.mirror.upstream_tap.describe()
        if ref == "library/busybox:latest" and phase == "warm":
            run = ctr.daemon.ctr("run", "--rm", image, f"e2e-{phase}", "echo", "ctr-run-ok",
                                 namespace=ns)
            assert run.stdout.strip() == "ctr-run-ok"



def test_ctr_pulls_another_registry_through_the_same_mirror(
        ctr: Ctr, second_registry: SecondRegistry, catalog: Catalog, tmp_path: Path,
        figures: list[PassFigures]) -> None:
    # ghcr.io/library/busybox has other digests than docker.io's: the generated
    # certs.d/ghcr.io/hosts.toml and ?ns=ghcr.io bring the right one.
    image = "ghcr.io/library/busybox:latest"
    want = second_registry.images["library/busybox:latest"].digest
    assert want != catalog["library/busybox:latest"].digest
    f = ctr.mirror.measure("containerd (ctr)", image, "cold",
                           partial(ctr.pull, "ghcr", image, tmp_path / "ghcr.log"))
    figures.append(f)
    assert listed_digest(ctr, "ghcr", image) == want
    assert "complete" in ctr.daemon.ctr("images", "check", f"name=={image}",
                                        namespace="ghcr").stdout
    requests = ctr.mirror.tap.requests
    assert requests and all(r.query == "ns=ghcr.io" for r in requests), ctr.mirror.tap.describe()
    assert "trying next host" not in (tmp_path / "ghcr.log").read_text()
    assert ctr.mirror.upstream_tap.requests == []  # docker.io's registry was not asked
    assert ctr.mirror.upstream_taps["ghcr.io"].count(kind="manifest") > 0
