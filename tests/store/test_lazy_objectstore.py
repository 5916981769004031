"""obstore (a Rust extension, ~5 MiB of RSS in every server process) is loaded only by a cache
that has an object store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = (
    "import asyncio, sys\n"
    "import mirror.cli.main, mirror.http.app  # all a server imports\n"
    "from mirror.config.loader import load_config\n"
    "from mirror.observe.metrics import Metrics\n"
    "from mirror.pull.stack import build_services\n"
    "async def main():\n"
    "    parts = await build_services(load_config(sys.argv[1]), Metrics())  # every tier\n"
    "    await parts.close()\n"
    "asyncio.run(main())\n"
    "print('obstore' in sys.modules)\n"
)


@pytest.mark.parametrize("object_store", [False, True])
def test_obstore_is_loaded_only_with_an_object_store(tmp_path: Path, object_store: bool) -> None:
    cfg = tmp_path / "mirror.yaml"
    cold = "  object_store:\n    url: memory://test\n" if object_store else ""
    cfg.write_text(f"cache:\n  dir: {tmp_path / 'cache'}\n{cold}"
                   "upstreams:\n  docker.io:\n    url: http://127.0.0.1:9\n")
    out = subprocess.run([sys.executable, "-c", PROBE, str(cfg)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(object_store)
