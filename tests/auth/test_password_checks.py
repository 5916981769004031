"""Password checks under a flood (issue #16, item 11): bcrypt has threads of its own and a short
queue, so wrong passwords cannot starve the cache's disk I/O."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import Catalog, RecordingProxy
from tests.support.certs import write_htpasswd
from tests.support.mirror_app import make_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

async def test_a_flood_of_wrong_passwords_does_not_starve_cache_io(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    """bcrypt ran on the default executor, which also writes and commits downloads: 40 wrong
    passwords at once queued every pull's disk I/O behind them. Password checks get their own
    few threads and a short queue; beyond it a check fails at once with 429."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "alice-pw", "bob": "bob-pw"},
                              rounds=11)  # a production cost: ~0.1 s of CPU per check
    client = await aiohttp_client(make_app({"docker.io": registry_tap.url}, tmp_path / "cache",
                                           prefetch={"enabled": False},
                                           auth={"htpasswd": str(htpasswd)}))
    alice = basic("alice", "alice-pw")
    assert (await client.get("/v2/", headers=alice)).status == 200  # her next checks are cached
    t0 = time.monotonic()
    assert (await client.get("/v2/", headers=basic("alice", "wrong"))).status == 401
    one_check = time.monotonic() - t0

    async def wrong(i: int) -> tuple[int, bytes]:
        r = await client.get("/v2/", headers=basic("alice", f"guess-{i}"))
        return r.status, await r.read()

    flood = [asyncio.create_task(wrong(i)) for i in range(40)]
    layer = catalog["library/alpine-ish:3.19"].layers[0]
    t0 = time.monotonic()
    r = await client.get(f"/v2/library/alpine-ish/blobs/{layer.digest}", headers=alice)
    body = await r.read()
    pulled = time.monotonic() - t0
    answers = await asyncio.gather(*flood)
    assert r.status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
    # Its download's writes and commit did not wait for the password checks queued before it
    # (40 checks on the default executor's threads take ~10 times one check here).
    assert pulled < 3 * one_check, (pulled, one_check)
    statuses = sorted({s for s, _ in answers})
    assert statuses == [401, 429], statuses
    busy = next(b for s, b in answers if s == 429)
    assert json.loads(busy)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert b"guess-" not in busy and b"alice" not in busy
    assert (await client.get("/v2/", headers=basic("bob", "bob-pw"))).status == 200
