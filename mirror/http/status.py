"""The status page's routes: `/`, `/status.json`, `/inventory.json` and `/static/<file>`. The
numbers come from mirror/observe/summary.py and the HTML from mirror/observe/statuspage.py; this
module only reads the app's parts and answers. All of them sit behind the same protection
(auth.protect_status)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from mirror.airgap.inventory import build as build_inventory
from mirror.http.keys import CONFIG, METRICS, PULL_STATS, SERVICE, STATUS
from mirror.observe.statuspage import SECURITY_HEADERS, STATIC_TYPES, render
from mirror.observe.summary import build


def summary(app: web.Application) -> dict[str, Any]:
    status_fn = app.get(STATUS)
    runtime: dict[str, Any] = status_fn() if status_fn is not None else {}
    return build(app[CONFIG], app[METRICS], app[PULL_STATS], runtime)


async def status_page(request: web.Request) -> web.Response:
    return web.Response(text=render(summary(request.app)), content_type="text/html",
                        charset="utf-8", headers=SECURITY_HEADERS)


async def status_json(request: web.Request) -> web.Response:
    return web.json_response(summary(request.app), headers={"Cache-Control": "no-store"})


async def inventory_json(request: web.Request) -> web.Response:
    """What this cache holds (`mirror inventory --url`): digests and tags, for a differential
    `mirror export --have` on the connected side."""
    service = request.app[SERVICE]
    tier = service.tier
    contents = [(key, entry.is_manifest) for key, entry in tier.contents()]
    records = ((u, r, t, rec.digest) for u, r, t, rec in service.tags.tags.all())
    inventory = build_inventory(contents, records)
    return web.Response(body=inventory.dumps(), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _load_static() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("mirror").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def add_status_routes(app: web.Application) -> None:
    """Static files are read once, here: the set of names is fixed, so no request path ever
    reaches the file system."""
    files = _load_static()

    async def static(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, ctype = found
        return web.Response(body=body, content_type=ctype,
                            headers={"Cache-Control": "max-age=300",
                                     "X-Content-Type-Options": "nosniff"})

    app.router.add_get("/", status_page)
    app.router.add_get("/status.json", status_json)
    app.router.add_get("/inventory.json", inventory_json)
    app.router.add_get("/static/{name}", static)
