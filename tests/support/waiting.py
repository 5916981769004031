"""Polling for what a test expects to become true soon (a commit after a response, a worker
coming up)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    """Return the first truthy value of check(), polled every 20 ms; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def until(what: str, check: Callable[[], object], within: float = 30.0) -> object:
    """wait_for for coroutines: poll without blocking the event loop the mirror runs on."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
