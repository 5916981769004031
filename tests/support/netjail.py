"""Run real clients in a private network namespace that can reach only chosen loopback ports.

dockerd falls back to registry-1.docker.io whenever a mirror fails, and podman, skopeo and
containerd do so unless their config says otherwise; a test must never let that reach the
internet. `NetJail(ports).command(cmd)` wraps a command in `unshare --net` with loopback up and
the listed 127.0.0.1 ports bridged to the host (tests/support/nsbridge.py); every other address
fails with "network is unreachable", so a fallback shows up as an error in the client's log.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import nsbridge

NSBRIDGE = Path(nsbridge.__file__)


def can_unshare_net() -> str | None:
    """None if network namespaces work here, else the reason."""
    import subprocess

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare (util-linux) or ip (iproute2) is not installed"
    r = subprocess.run(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"],
                       capture_output=True, text=True, timeout=30)
    return None if r.returncode == 0 else f"unshare --net failed: {r.stderr.strip()}"


class NetJail:
    """A set of bridged ports. Each `command()` runs in its own fresh namespace."""

    def __init__(self, ports: Iterable[int] = ()) -> None:
        # Short path: unix socket paths are limited to 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="nj-", dir="/tmp"))
        # removed by close(), or at the latest when the test process exits
        weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.ports = sorted(set(ports))
        self._bridges = [nsbridge.UnixToTcp(self.dir, p) for p in self.ports]

    def command(self, cmd: Sequence[str]) -> list[str]:
        return ["unshare", "--net", "--", sys.executable, str(NSBRIDGE), "--dir", str(self.dir),
                "--ports", ",".join(map(str, self.ports)), "--", *cmd]

    def close(self) -> None:
        for b in self._bridges:
            b.close()
        self._bridges = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NetJail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
