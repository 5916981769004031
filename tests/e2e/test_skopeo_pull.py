"""skopeo pulls through a mirror process, cold then warm, verified by digest (issue 2)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Catalog, RecordingProxy
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.verify import verify_dir_copy

pytestmark = pytest.mark.e2e

IMAGES = ["library/busybox:latest",   # Docker manifest list, multi-arch
          "library/multiarch:latest",  # OCI index
          "org/team/app:1.0",          # nested name, OCI manifest
          "library/big:latest"]        # big incompressible layer (MIRROR_TEST_BIG_MB)


@pytest.fixture
def mirror_proc(registry_tap: RecordingProxy, tmp_path: Path) -> Iterator[MirrorProcess]:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (make system-deps)", pytrace=False)
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache")
    with MirrorProcess(cfg, workdir=tmp_path) as proc:
        yield proc


def skopeo_copy(mirror: MirrorProcess, ref: str, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["skopeo", "--tmpdir", str(out.parent), "copy", "--all", "--src-tls-verify=false",
           f"docker://{mirror.hostport}/{ref}", f"dir:{out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}\n--- mirror log:\n{mirror.log_text()}"


def test_skopeo_cold_then_warm(mirror_proc: MirrorProcess, registry_tap: RecordingProxy,
                               catalog: Catalog, tmp_path: Path) -> None:
    for ref in IMAGES:
        skopeo_copy(mirror_proc, ref, tmp_path / "cold")
        verify_dir_copy(tmp_path / "cold", catalog[ref])
    registry_tap.wait_idle()
    cold_blob_gets = registry_tap.count(method="GET", kind="blob")
    assert cold_blob_gets > 0
    # each blob crossed from upstream once, however many requests and prefetches asked for it
    digests = [r.path.rsplit("/", 1)[1] for r in registry_tap.filter(method="GET", kind="blob")]
    assert len(digests) == len(set(digests)), registry_tap.describe()
    assert max(b.size for b in catalog["library/big:latest"].layers) >= 50 * 1024 * 1024

    registry_tap.clear()
    for ref in IMAGES:
        skopeo_copy(mirror_proc, ref, tmp_path / "warm")
        verify_dir_copy(tmp_path / "warm", catalog[ref])
    # within the tag TTL a warm pull asks the upstream nothing at all
    assert registry_tap.count(kind="blob") == 0, registry_tap.describe()
    assert registry_tap.count(method="GET", kind="manifest") == 0, registry_tap.describe()
    assert registry_tap.count() == 0, registry_tap.describe()
