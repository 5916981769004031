"""The read loop's socket setting: a blob body is read READ_SIZE bytes per recv, shared by the
bodies being read at once, and the pooled connection reads as aiohttp chose again once the
body is done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from mirror.fetch.download import MIN_READ, READ_SIZE, AheadBudget, BodyReads

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


async def blob_server(aiohttp_server: ServerFactory) -> TestServer:
    async def blob(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * (3 * READ_SIZE))

    app = web.Application()
    app.router.add_get("/blob", blob)
    return await aiohttp_server(app)


async def test_a_body_reads_larger_only_as_long_as_it_lasts(aiohttp_server: ServerFactory) -> None:
    server = await blob_server(aiohttp_server)
    budget = AheadBudget()
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/blob")) as resp:
            assert resp.connection is not None
            transport = resp.connection.transport
            before = transport.max_size  # type: ignore[union-attr]
            assert before < READ_SIZE  # asyncio's default: the setting has something to do
            reads = BodyReads(resp, budget)
            assert transport.max_size == READ_SIZE and budget.reading == 1  # type: ignore[union-attr]
            assert len(await resp.read()) == 3 * READ_SIZE
            reads.close()
            reads.close()  # a second close changes nothing
            assert transport.max_size == before and budget.reading == 0  # type: ignore[union-attr]
        # The connection went back to the pool and serves the next request as before.
        async with session.get(server.make_url("/blob")) as resp:
            assert resp.connection is not None and resp.connection.transport is transport
            assert transport.max_size == before  # type: ignore[union-attr]


async def test_bodies_read_at_once_share_the_read_size(aiohttp_server: ServerFactory) -> None:
    """Each of several downloads gets less per read anyway; holding a full READ_SIZE buffer
    for each only raised the peak memory."""
    server = await blob_server(aiohttp_server)
    budget = AheadBudget()
    async with aiohttp.ClientSession() as session:
        first = await session.get(server.make_url("/blob"))
        second = await session.get(server.make_url("/blob"))
        t1 = first.connection.transport  # type: ignore[union-attr]
        t2 = second.connection.transport  # type: ignore[union-attr]
        r1 = BodyReads(first, budget)
        assert t1.max_size == READ_SIZE  # type: ignore[union-attr]
        r2 = BodyReads(second, budget)
        r1.adjust()  # the read loop adjusts after each batch
        assert t1.max_size == t2.max_size == READ_SIZE // 2  # type: ignore[union-attr]
        r2.close()
        r1.adjust()
        assert t1.max_size == READ_SIZE  # type: ignore[union-attr]
        r1.close()
        for resp in (first, second):
            resp.release()
    budget.reading = 50
    assert budget.read_size() == MIN_READ  # never below asyncio's own size
