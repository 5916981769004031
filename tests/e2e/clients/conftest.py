"""Fixtures of the real-client end-to-end tests: a dead port for every fallback, a figures table
printed at the end of the run (which client pulled what, cold/warm seconds, upstream requests)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.support import ARM64, ImagePusher, RegistryProcess
from tests.support.clientrun import PassFigures, SecondRegistry, dead_loopback_port
from tests.support.images import busybox_layer, synthetic_layer
from tests.support.netjail import can_unshare_net

FIGURES = pytest.StashKey[list[PassFigures]]()


@pytest.fixture(scope="session")
def dead_port() -> Iterator[int]:
    with dead_loopback_port() as port:
        yield port


@pytest.fixture(scope="session")
def netns_ok() -> None:
    reason = can_unshare_net()
    if reason is not None:
        # Never run a client that may fall back to Docker Hub without its network jail.
        pytest.fail(f"network namespaces unavailable, cannot jail the clients: {reason}",
                    pytrace=False)


@pytest.fixture(scope="session")
def second_registry() -> Iterator[SecondRegistry]:
    """A second real registry, named ghcr.io in the e2e mirrors' config."""
    with RegistryProcess() as reg:
        p = ImagePusher(reg.url, salt="e2e-ghcr")
        bb, _ = busybox_layer()
        amd = p.push_image("library/busybox", "1.36", [bb])
        arm = p.push_image("library/busybox", None, [synthetic_layer("busybox-arm64", 64)], ARM64)
        yield SecondRegistry(reg.url, {
            "library/busybox:1.36": amd,
            "library/busybox:latest": p.push_index("library/busybox", "latest", [amd, arm])})


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> list[PassFigures]:
    return pytestconfig.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    rows = config.stash.get(FIGURES, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("real clients through the mirror")
    tr.write_line(f"{'client':<22} {'image':<30} {'pass':<5} {'seconds':>7} {'client req':>10} "
                  f"{'upstream req':>12} {'upstream bytes':>14}")
    for f in rows:
        tr.write_line(f"{f.client:<22} {f.image:<30} {f.phase:<5} {f.seconds:>7.2f} "
                      f"{f.client_requests:>10} {f.upstream_requests:>12} {f.upstream_bytes:>14}")
    out = os.environ.get("MIRROR_E2E_FIGURES")
    if out:
        with open(out, "w") as fh:
            json.dump([f.row() for f in rows], fh, indent=1)
