"""The allocator setting: a download's 1 MiB read buffers, allocated and freed over and over,
must come from memory the process keeps, not from pages faulted in and zeroed each time
(that cost more CPU than the bytes, bench/README.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHURN = """
import os, resource, sys
from mirror.cli.allocator import keep_large_buffers_on_heap
if sys.argv[1] == "set" and not keep_large_buffers_on_heap():
    print("unsupported"); raise SystemExit
keep = []
def cycle():
    # like a download: a few reads alive at once, the oldest freed as a new one comes
    for i in range(400):
        keep.append(os.urandom(1) * (1024 * 1024 + i))
        if len(keep) > 6:
            del keep[0]
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_freed_read_buffers_are_reused_without_page_faults() -> None:
    got = faults("set")
    if got == "unsupported":
        pytest.skip("not glibc: the setting does not apply")  # musl and others
    # 400 buffers of 1 MiB: 256 pages each when faulted in anew (about 100,000 faults)
    assert int(got) < 500, got
    assert int(faults("default")) > 10000  # the cost the setting removes, seen without it
