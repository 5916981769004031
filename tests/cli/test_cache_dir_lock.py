"""Maintenance commands and a live server (issue #16, item 18): `mirror gc`, `import` and `seed`
need the cache directory to themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mirror.store.dirlock import CacheDirLock
from tests.support import Catalog
from tests.support.mirror_proc import MirrorProcess, mirror_config


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)

def test_maintenance_commands_refuse_a_live_cache_dir(catalog: Catalog, tmp_path: Path) -> None:
    """`mirror gc`, `import` and `seed` sweep tmp/ and write behind a server's back: against a
    cache.dir a running server holds they stop with one clear line and touch nothing; once it
    stopped they run. A server does not start under a maintenance command either."""
    cache = tmp_path / "cache"
    cfg = mirror_config({"docker.io": catalog.registry_url}, cache)
    cfg_path = tmp_path / "mirror.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    with MirrorProcess(cfg, workdir=tmp_path / "serve"):
        in_use = cache / "tmp" / "sha256-0123.part"  # stands for a download in progress
        in_use.write_bytes(b"partial")
        for args in (("gc",), ("seed", "library/busybox:latest"),
                     ("import", str(tmp_path / "bundle.tar"))):
            r = cli(*args, "-c", str(cfg_path), cwd=tmp_path)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "is in use by a running mirror serve" in lines[0], lines
            assert f"before mirror {args[0]}" in lines[0]
            assert in_use.read_bytes() == b"partial"  # nothing swept
    r = cli("gc", "-c", str(cfg_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not in_use.exists()  # with no server, the sweep is the tool's to do
    with CacheDirLock.exclusive(cache, "this test"):
        server = MirrorProcess(cfg, workdir=tmp_path / "serve2")
        with pytest.raises(RuntimeError, match="in use by a maintenance command"):
            server.start()
