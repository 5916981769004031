"""The read loop's socket setting: a blob body is read READ_SIZE bytes per recv, and the
pooled connection reads as aiohttp chose again once the body is done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from mirror.fetch.download import READ_SIZE, larger_reads

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


async def test_larger_reads_last_only_as_long_as_the_body(aiohttp_server: ServerFactory) -> None:
    async def blob(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * (3 * READ_SIZE))

    app = web.Application()
    app.router.add_get("/blob", blob)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/blob")) as resp:
            assert resp.connection is not None
            transport = resp.connection.transport
            before = transport.max_size  # type: ignore[union-attr]
            assert before < READ_SIZE  # asyncio's default: the setting has something to do
            restore = larger_reads(resp)
            assert transport.max_size == READ_SIZE  # type: ignore[union-attr]
            assert len(await resp.read()) == 3 * READ_SIZE
            restore()
            assert transport.max_size == before  # type: ignore[union-attr]
        # The connection went back to the pool and serves the next request as before.
        async with session.get(server.make_url("/blob")) as resp:
            assert resp.connection is not None and resp.connection.transport is transport
            assert transport.max_size == before  # type: ignore[union-attr]
