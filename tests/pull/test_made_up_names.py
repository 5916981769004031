"""Names clients make up (issue #16, item 14): tags that do not exist leave no rows, and the
offline tag list costs what the repository holds, not what the whole index holds."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.pull.listings import Listings
from mirror.store.db import Database
from mirror.store.index import TagIndex, TagRecord
from tests.support import FakeRegistry
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
