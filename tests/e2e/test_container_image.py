"""The container image, built and pulled through on this machine (issue 10).

No base image can be pulled here, so the test builds one from Debian packages
(scripts/build-base-image.sh: debootstrap + python3, `docker import`), then builds the project's
Dockerfile on it with `--network none` from a wheelhouse made beforehand, runs the image under a
private dockerd (tests/support/daemons.Dockerd: vfs, no bridge, its own network namespace where
only the upstream registry's tap is reachable), waits for the image's own HEALTHCHECK to report
healthy, and pulls through the container with skopeo, cold then warm, verified by digest.

Slow (a debootstrap the first time, ~2 min, cached under the test image cache; then a vfs build)
and so opt-in on a developer's machine (MIRROR_TEST_IMAGE_BUILD=1); CI (CI=true) always runs it,
unless MIRROR_TEST_IMAGE_BUILD=0 says otherwise. Figures (build time, image size) are printed; the
README's Testing section records a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import Catalog, RecordingProxy
from tests.support.clientrun import need_tools
from tests.support.daemons import Dockerd
from tests.support.netjail import can_unshare_net
from tests.support.verify import verify_dir_copy

ROOT = Path(__file__).resolve().parents[2]
OPT_IN = "MIRROR_TEST_IMAGE_BUILD"
TAG = "mirror:test"
BASE_TAG = "mirror-base:local"
PORT = 5000  # the image's default; the HEALTHCHECK's default URL uses it
CONTEXT_FILES = ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "mirror",
                 "deploy/mirror.yaml"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get(OPT_IN, "1" if os.environ.get("CI") == "true" else "0")
                       != "1",
                       reason=f"builds a Debian base image and the mirror image (minutes): "
                              f"set {OPT_IN}=1 (CI runs it)"),
    pytest.mark.timeout(1800),
]


@dataclass
class Built:
    daemon: Dockerd
    build_seconds: float
    size: int

    def docker(self, *args: str, check: bool = True,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.daemon.docker(*args, check=check, timeout=timeout)

    def in_netns(self, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in the daemon's network namespace, where `--network host` containers
        listen (the host cannot reach them on its own loopback)."""
        assert self.daemon.proc is not None
        return subprocess.run(["nsenter", f"--net=/proc/{self.daemon.proc.pid}/ns/net", *cmd],
                              capture_output=True, text=True, timeout=timeout)


def build_context(dest: Path) -> Path:
    """The files .dockerignore lets in, plus a wheelhouse: mirror's wheel and every dependency
    (and the build backend), so the build needs no network."""
    for rel in CONTEXT_FILES:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
                        str(dest / "wheelhouse"), str(dest), "setuptools", "wheel"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return dest


@pytest.fixture(scope="module")
def built(registry_tap_module: RecordingProxy, image_cache_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    need_tools("dockerd", "docker", "debootstrap", "skopeo", "nsenter")
    reason = can_unshare_net()
    if reason is not None:
        pytest.fail(f"cannot jail dockerd: {reason}", pytrace=False)
    root = tmp_path_factory.mktemp("image-dockerd")
    daemon = Dockerd(root, {}, [registry_tap_module.port])
    daemon.start()
    try:
        env = {**os.environ, "DOCKER": f"docker -H unix://{daemon.socket}",
               "DOCKER_CONFIG": str(daemon.docker_config)}
        r = subprocess.run([str(ROOT / "scripts/build-base-image.sh"),
                            str(image_cache_dir / "base-rootfs"), BASE_TAG],
                           capture_output=True, text=True, timeout=1200, env=env)
        assert r.returncode == 0, r.stderr[-4000:]
        ctx = build_context(tmp_path_factory.mktemp("image-context"))
        t0 = time.monotonic()
        # The classic builder: dockerd 20.10 has no BuildKit frontend here, and --network none
        # proves the build downloads nothing.
        r = subprocess.run(["docker", "-H", f"unix://{daemon.socket}", "build", "--network", "none",
                            "--build-arg", f"BASE={BASE_TAG}",
                            "--build-arg", "PIP_ARGS=--no-index --find-links /src/wheelhouse",
                            "-t", TAG, str(ctx)],
                           capture_output=True, text=True, timeout=1500,
                           env={**env, "DOCKER_BUILDKIT": "0"})
        assert r.returncode == 0, f"{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
        seconds = time.monotonic() - t0
        size = int(daemon.docker("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
        yield Built(daemon, seconds, size)
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def registry_tap_module(catalog: Catalog) -> Iterator[RecordingProxy]:
    tap = RecordingProxy(catalog.registry_url, name="image-upstream-tap")
    yield tap
    tap.stop()


def test_image_metadata(built: Built) -> None:
    cfg = json.loads(built.docker("image", "inspect", "--format", "{{json .Config}}", TAG).stdout)
    assert cfg["User"] == "mirror"
    assert "/var/cache/mirror" in cfg["Volumes"]
    assert cfg["Entrypoint"] == ["mirror"] and cfg["Cmd"] == ["serve"]
    assert "MIRROR_CONFIG=/etc/mirror/mirror.yaml" in cfg["Env"]
    assert cfg["Healthcheck"]["Test"][0] == "CMD"
    # the image's own config is deploy/mirror.yaml and it passes check-config
    r = built.docker("run", "--rm", "--network", "none", TAG, "check-config")
    assert "/etc/mirror/mirror.yaml: ok (4 upstreams, cache /var/cache/mirror" in r.stdout
    r = built.docker("run", "--rm", "--network", "none", "--entrypoint", "id", TAG)
    assert r.stdout.startswith("uid=10001(mirror)"), r.stdout
    print(f"\nimage {TAG}: built in {built.build_seconds:.0f}s, {built.size / 1e6:.0f} MB")


def test_pull_through_the_container(built: Built, registry_tap_module: RecordingProxy,
                                    catalog: Catalog, tmp_path: Path) -> None:
    tap = registry_tap_module
    config = tmp_path / "mirror.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"0.0.0.0:{PORT}",
        "upstreams": {"docker.io": {"url": tap.url}},  # bridged into dockerd's namespace
        "cache": {"dir": "/var/cache/mirror", "max_size": "2GiB"},
        "log": {"format": "json", "audit": "-"},
    }))
    config.chmod(0o644)
    name = "mirror-under-test"
    built.docker("run", "-d", "--name", name, "--network", "host", "--health-interval", "1s",
                 "-v", f"{config}:/etc/mirror/mirror.yaml:ro", TAG)
    try:
        deadline = time.monotonic() + 90
        status = ""
        while time.monotonic() < deadline:
            status = built.docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            if status == "healthy":
                break
            time.sleep(1)
        logs = built.docker("logs", name).stdout
        assert status == "healthy", logs
        assert f"serving on http://0.0.0.0:{PORT}" in logs

        images = ["library/busybox:latest", "org/team/app:1.0"]
        for phase in ("cold", "warm"):
            tap.clear()
            for ref in images:
                out = tmp_path / phase / ref.replace("/", "_").replace(":", "_")
                out.parent.mkdir(parents=True, exist_ok=True)
                r = built.in_netns("skopeo", "--tmpdir", str(tmp_path), "copy", "--all",
                                   "--src-tls-verify=false", f"docker://127.0.0.1:{PORT}/{ref}",
                                   f"dir:{out}")
                assert r.returncode == 0, r.stderr + built.docker("logs", name).stdout[-3000:]
                verify_dir_copy(out, catalog[ref])
            tap.wait_idle()
            blob_gets = tap.count(method="GET", kind="blob")
            assert blob_gets > 0 if phase == "cold" else blob_gets == 0, tap.describe()

        page = built.in_netns(sys.executable, "-c", f"import urllib.request; print(urllib.request."
                              f"urlopen('http://127.0.0.1:{PORT}/').read().decode())")
        assert page.returncode == 0 and "library/busybox" in page.stdout, page.stderr
        audit = [json.loads(line) for line in built.docker("logs", name).stdout.splitlines()
                 if line.startswith('{"time"') and '"path"' in line]
        assert any(a["repository"] == "library/busybox" and a["status"] == 200 for a in audit)
    finally:
        built.docker("rm", "-f", "-v", name, check=False)
