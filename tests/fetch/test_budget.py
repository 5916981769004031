"""The socket reads of a blob body (BodyReads): READ_SIZE bytes per recv, shared by the bodies
being read at once, and the pooled connection reads as aiohttp chose again once the body is
done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from mirror.fetch.budget import MIN_READ, READ_SIZE, AheadBudget, BodyReads

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


async def test_a_body_still_closing_leaves_the_next_one_on_its_connection_alone(
        aiohttp_server: ServerFactory) -> None:
    """aiohttp pools the connection once the body's last bytes are parsed, before the read
    loop has handed them on: the next body on the same connection begins first. The first
    one's close must not touch the second's reads, and the connection's own size must come
    back once both are done (it once kept 1 MiB reads for good)."""
    server = await blob_server(aiohttp_server)
    budget = AheadBudget()
    async with aiohttp.ClientSession() as session:
        first = await session.get(server.make_url("/blob"))
        transport = first.connection.transport  # type: ignore[union-attr]
        own = transport.max_size  # type: ignore[union-attr]
        a = BodyReads(first, budget)
        await first.read()  # the last bytes are parsed: the connection is back in the pool
        assert first.connection is None
        second = await session.get(server.make_url("/blob"))
        assert second.connection is not None and second.connection.transport is transport
        b = BodyReads(second, budget)
        a.adjust()
        assert transport.max_size == READ_SIZE // 2  # type: ignore[union-attr]
        a.close()  # the first body's loop ends now
        assert transport.max_size == READ_SIZE // 2 and budget.reading == 1  # type: ignore[union-attr]
        b.adjust()
        assert transport.max_size == READ_SIZE  # type: ignore[union-attr]
        await second.read()
        b.close()
        assert transport.max_size == own and budget.reading == 0  # type: ignore[union-attr]
        assert not budget.read_owners
