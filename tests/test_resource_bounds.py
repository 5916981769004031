"""Resources a client can make the mirror spend (issue #16, items 10-14): tables that grow with
names clients choose, work on the event loop that grows with the whole cache, executor threads
shared with cache I/O, connections held by clients that stop reading."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.oci.models import Digest
from mirror.pull.listings import Listings
from mirror.store.db import Database
from mirror.store.index import TagIndex, TagRecord
from mirror.store.links import RepoLinks
from tests.support import Catalog, FakeRegistry, RecordingProxy
from tests.support.certs import write_htpasswd
from tests.support.images import synthetic_layer
from tests.support.mirror_app import accept_all, make_app
from tests.support.waiting import until

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def rows(cache: Path, sql: str) -> int:
    with sqlite3.connect(cache / "index.db") as conn:
        return int(conn.execute(sql).fetchone()[0])


async def test_tags_that_do_not_exist_leave_no_rows(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        tmp_path: Path) -> None:
    """Any number of made-up tags: each 404 is remembered (a second ask within the TTL costs
    no upstream request) but in bounded memory, not as a row each in the index database."""
    fake = make_fake_registry()
    img = fake.add_image("org/app", "1.0", [synthetic_layer("bounds-tags", kib=4)])
    cache = tmp_path / "cache"
    client = await aiohttp_client(make_app({"docker.io": fake.url}, cache,
                                           prefetch={"enabled": False}))
    made_up = [f"t-{uuid.uuid4().hex[:12]}" for _ in range(50)]
    for tag in made_up:
        r = await client.get(f"/v2/org/app/manifests/{tag}", headers=accept_all())
        assert r.status == 404 and (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    asked = fake.count(kind="manifest")
    r = await client.get(f"/v2/org/app/manifests/{made_up[0]}", headers=accept_all())
    assert r.status == 404 and fake.count(kind="manifest") == asked  # remembered
    r = await client.get("/v2/org/app/manifests/1.0", headers=accept_all())
    assert r.status == 200 and r.headers["Docker-Content-Digest"] == img.digest
    # Writes land in order: once the real tag's row is there, any negative one would be too.
    await until("the tag record is written",
                lambda: rows(cache, "SELECT COUNT(*) FROM tags WHERE digest IS NOT NULL"))
    assert rows(cache, "SELECT COUNT(*) FROM tags WHERE digest IS NULL") == 0


async def test_negative_tag_records_are_bounded_and_replace_a_deleted_tag(
        tmp_path: Path) -> None:
    db = Database(tmp_path / "index.db")
    await db.start()
    try:
        tags = TagIndex(db, negative_entries=100)
        tags.put("u", "r", "gone", TagRecord("sha256:" + "a" * 64, "mt", 1, 1.0))
        for i in range(1000):
            tags.put("u", "r", f"no-{i}", TagRecord(None, None, None, 2.0))
        assert sum(tags.get("u", "r", f"no-{i}") is not None for i in range(1000)) == 100
        tags.put("u", "r", "gone", TagRecord(None, None, None, 3.0))  # deleted upstream
        assert tags.get("u", "r", "gone") == TagRecord(None, None, None, 3.0)
        await until("the deleted tag's row is gone", lambda: db.query_one(
            "SELECT 1 FROM tags WHERE tag='gone'") is None)
        assert db.query_one("SELECT COUNT(*) FROM tags") == (0,)
    finally:
        await db.close()


async def test_repository_links_are_bounded(tmp_path: Path) -> None:
    """Links come from repository names clients choose: the table keeps at most max_rows,
    dropping links of content no longer cached first."""
    db = Database(tmp_path / "index.db")
    await db.start()
    try:
        cached = str(Digest.of(b"cached"))
        db.write("INSERT INTO content (digest, size, last_access, stored_at) VALUES (?, 6, 0, 0)",
                 (cached,))
        links = RepoLinks(db, max_rows=100)
        for i in range(95):
            links.add("u", f"pulled/{i:04d}", [cached])
        for i in range(6):  # the 101st row: trimmed to 90, links of uncached content first
            links.add("u", f"made-up/{i:04d}", [str(Digest.of(str(i).encode()))])
        await until("the table is trimmed", lambda: db.backlog == 0 and db.query_one(
            "SELECT COUNT(*) FROM links") == (90,))
        assert db.query_one("SELECT COUNT(*) FROM links WHERE digest != ?", (cached,)) == (0,)
        for i in range(5000):  # however many names clients make up
            links.add("u", f"made-up/{i:04d}", [cached])
        await until("the queue drained", lambda: db.backlog == 0)
        count = db.query_one("SELECT COUNT(*) FROM links")
        assert count is not None and count[0] <= 100
    finally:
        await db.close()


async def test_offline_tag_list_reads_only_the_repository(tmp_path: Path) -> None:
    """The offline tag list runs on the event loop: its cost must follow the repository's
    tags, not the whole table (it read every row of every repository)."""
    db = Database(tmp_path / "index.db")
    db.write_now([("INSERT INTO tags (upstream, repo, tag, digest, checked_at) "
                   "VALUES ('u', ?, 't', ?, 0)", (f"other/{i:06d}", "sha256:" + "b" * 64))
                  for i in range(30_000)])
    tags = TagIndex(db)
    for t in ("b", "a"):
        tags.put("u", "mine", t, TagRecord("sha256:" + "c" * 64, "mt", 1, 0.0))
    db.write_now([])
    db.close_sync()
    db = Database(tmp_path / "index.db")
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    db._reader.set_progress_handler(step, 1000)  # called every 1000 SQLite VM instructions
    try:
        listings = Listings(TagIndex(db), lambda _: None, 0.0)  # no client: offline
        doc = await listings.tags_list("u", "mine", "")
        assert doc.status == 200 and doc.body == b'{"name": "mine", "tags": ["a", "b"]}'
        assert steps < 10, f"{steps}k SQLite instructions for a two-tag list"
    finally:
        db.close_sync()



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
