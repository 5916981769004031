"""A big blob body read past aiohttp (BodyReceiver): taken only when it is plain and big, whole
and in page-aligned buffers when taken, over TLS too; reading pauses while the consumer holds
every buffer; a body cut short or stalled is an error the download's resume handles."""

from __future__ import annotations

import asyncio
import mmap
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mirror.fetch.receive import BUFFER, BUFFERS, TAKE_MIN, BodyReceiver
from tests.support.certs import TestCA

BODY = os.urandom(5 * BUFFER + 12345)  # not a whole number of buffers
assert len(BODY) >= TAKE_MIN


async def plain(_: web.Request) -> web.Response:
    return web.Response(body=BODY)


async def small(_: web.Request) -> web.Response:
    return web.Response(body=BODY[:TAKE_MIN - 1])


async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(BODY)
    await resp.write_eof()
    return resp


async def encoded(_: web.Request) -> web.Response:
    resp = web.Response(body=BODY)
    resp.enable_compression(web.ContentCoding.gzip)
    return resp


async def cut(request: web.Request) -> web.StreamResponse:
    """Promises BODY, sends 3 buffers' worth, then closes the connection."""
    resp = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
    await resp.prepare(request)
    await resp.write(BODY[:3 * BUFFER])
    assert request.transport is not None
    request.transport.close()
    return resp


async def stall(request: web.Request) -> web.StreamResponse:
    """Sends 3 buffers' worth of BODY, then nothing for 30 s."""
    resp = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
    await resp.prepare(request)
    await resp.write(BODY[:3 * BUFFER])
    await asyncio.sleep(30)
    return resp


@pytest.fixture
async def server() -> AsyncIterator[Callable[[ssl.SSLContext | None], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(context: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        for name, handler in [("plain", plain), ("small", small), ("chunked", chunked),
                              ("encoded", encoded), ("cut", cut), ("stall", stall)]:
            app.router.add_get(f"/{name}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"{'https' if context else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def collect(receiver: BodyReceiver, kinds: list[type] | None = None) -> list[bytes]:
    """Every chunk (copied), each released once taken; `kinds` gets each chunk's type."""
    out: list[bytes] = []
    async for chunk, release in receiver.chunks():
        out.append(bytes(chunk))
        if kinds is not None:
            kinds.append(type(chunk))
        if release is not None:
            release()
    return out


@pytest.mark.parametrize("tls", [False, True])
async def test_a_big_plain_body_is_taken_whole_in_block_sized_buffers(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]], tmp_path: Path,
        tls: bool) -> None:
    client_ctx: ssl.SSLContext | bool = True
    context = None
    if tls:
        ca = TestCA(tmp_path)
        issued = ca.server()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(issued.cert, issued.key)
        client_ctx = ssl.create_default_context(cafile=str(ca.cert))
    base = await server(context)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/plain", ssl=client_ctx) as resp:
        receiver = BodyReceiver.take(resp)
        assert receiver is not None
        kinds: list[type] = []
        try:
            got = await collect(receiver, kinds)
        finally:
            receiver.close()
    assert b"".join(got) == BODY
    # Every buffer but the last is a whole page-aligned one: the O_DIRECT writer takes them
    # as they are.
    assert [len(c) for c in got[:-1]] == [BUFFER] * (len(got) - 1)
    assert kinds[:-1] == [mmap.mmap] * (len(got) - 1) and kinds[-1] is memoryview


@pytest.mark.parametrize("path", ["small", "chunked", "encoded"])
async def test_small_chunked_or_encoded_bodies_stay_with_aiohttp(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]], path: str) -> None:
    base = await server(None)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/{path}") as resp:
        assert BodyReceiver.take(resp) is None
        body = await resp.read()  # nothing was taken from aiohttp's reader
    assert body == (BODY[:TAKE_MIN - 1] if path == "small" else BODY)


async def test_reading_pauses_while_the_consumer_holds_every_buffer(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    base = await server(None)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/plain") as resp:
        receiver = BodyReceiver.take(resp)
        assert receiver is not None
        chunks = receiver.chunks()
        held = [await anext(chunks) for _ in range(BUFFERS)]
        # The whole body is on its way (loopback buffers hold megabytes), yet no further
        # buffer fills while all of them are held.
        later = asyncio.ensure_future(anext(chunks))
        done, _ = await asyncio.wait([later], timeout=0.5)
        assert not done
        got = [bytes(c) for c, _ in held]
        for _, release in held:
            assert release is not None
            release()
        chunk, release = await later
        got.append(bytes(chunk))
        assert release is not None
        release()
        got += await collect(receiver)
        receiver.close()
    assert b"".join(got) == BODY


async def test_a_body_cut_short_is_a_payload_error(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    base = await server(None)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/cut") as resp:
        receiver = BodyReceiver.take(resp)
        assert receiver is not None
        with pytest.raises(aiohttp.ClientPayloadError):
            await collect(receiver)
        receiver.close()


async def test_a_stalled_body_times_out(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    base = await server(None)
    timeout = aiohttp.ClientTimeout(sock_read=0.4)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"{base}/stall") as resp:
        receiver = BodyReceiver.take(resp)
        assert receiver is not None
        start = loop.time()
        with pytest.raises(TimeoutError):
            await collect(receiver)
        assert loop.time() - start < 5  # sock_read, checked four times per period
        receiver.close()


async def test_holding_every_buffer_longer_than_sock_read_is_no_stall(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    base = await server(None)
    timeout = aiohttp.ClientTimeout(sock_read=0.4)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"{base}/plain") as resp:
        receiver = BodyReceiver.take(resp)
        assert receiver is not None
        chunks = receiver.chunks()
        held = [await anext(chunks) for _ in range(BUFFERS)]
        await asyncio.sleep(1.0)  # paused by us, not by the upstream
        got = [bytes(c) for c, _ in held]
        for _, release in held:
            assert release is not None
            release()
        got += await collect(receiver)
        receiver.close()
    assert b"".join(got) == BODY


async def test_closing_the_session_mid_body_ends_the_body_at_once(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    """The session's connector waits for every connection it lent to be lost: it must hear of
    the taken one too (a mirror shutting down mid-download)."""
    base = await server(None)
    session = aiohttp.ClientSession()
    resp = await session.get(f"{base}/stall")
    receiver = BodyReceiver.take(resp)
    assert receiver is not None
    chunks = receiver.chunks()
    await anext(chunks)
    await asyncio.wait_for(session.close(), 5)
    with pytest.raises(aiohttp.ClientPayloadError):
        async for _ in chunks:
            pass
    receiver.close()
    resp.release()
