"""A big blob body read past aiohttp (BodyReceiver): taken only when it is plain and big, whole
and in page-aligned buffers when taken, over TLS too; reading pauses while the consumer holds
every buffer; a body cut short or stalled is an error the download's resume handles, also
when the upstream ignores Range."""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mirror.config.model import UpstreamConfig
from mirror.fetch.budget import AheadBudget
from mirror.fetch.coalesce import BlobFetch
from mirror.fetch.download import WriteBehind, body_into, download_into
from mirror.fetch.receive import BUFFER, BUFFERS, TAKE_MIN, BodyReceiver, Release
from mirror.observe.metrics import Metrics
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.temp import Chunk, TempBlob
from mirror.upstream.client import UpstreamClient
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


async def stall_small(request: web.Request) -> web.StreamResponse:
    """A body too small to be taken: 1 MiB of it, then nothing for 30 s."""
    resp = web.StreamResponse(headers={"Content-Length": str(TAKE_MIN - 1)})
    await resp.prepare(request)
    await resp.write(BODY[:1 << 20])
    await asyncio.sleep(30)
    return resp


@pytest.fixture
async def server() -> AsyncIterator[Callable[[ssl.SSLContext | None], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(context: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        for name, handler in [("plain", plain), ("small", small), ("chunked", chunked),
                              ("encoded", encoded), ("cut", cut), ("stall", stall),
                              ("stall_small", stall_small)]:
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


@contextlib.asynccontextmanager
async def taken(url: str, budget: AheadBudget | None = None, client_timeout: aiohttp.ClientTimeout
                | None = None, ssl_ctx: ssl.SSLContext | bool = True
                ) -> AsyncIterator[BodyReceiver]:
    """GET `url` and take its body (it must be taken); closed on the way out."""
    async with aiohttp.ClientSession(timeout=client_timeout or aiohttp.ClientTimeout()) as session, \
            session.get(url, ssl=ssl_ctx) as resp:
        receiver = BodyReceiver.take(resp, budget)
        assert receiver is not None
        try:
            yield receiver
        finally:
            receiver.close()


async def collect(receiver: BodyReceiver, kinds: list[type] | None = None) -> list[bytes]:
    """Every chunk (copied), each released once taken; `kinds` gets each chunk's type."""
    out: list[bytes] = []
    async for chunk, release in receiver.chunks():
        out.append(bytes(chunk))
        if kinds is not None:
            kinds.append(type(chunk))
        if release is not None:
            release(True)
    return out


async def stuck_until_given_back(chunks: AsyncIterator[tuple[Chunk, Release | None]],
                                 held: list[tuple[Chunk, Release | None]]) -> list[bytes]:
    """Asserts no next chunk comes while `held` are held, gives them back, then takes the
    next chunk: the bytes of all of them, in order."""
    later = asyncio.ensure_future(anext(chunks))
    done, _ = await asyncio.wait([later], timeout=0.5)
    assert not done
    got = [bytes(c) for c, _ in held]
    for _, release in held:
        assert release is not None
        release(True)
    chunk, release = await later
    assert release is not None
    release(True)
    return [*got, bytes(chunk)]


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
    async with taken(f"{base}/plain", ssl_ctx=client_ctx) as receiver:
        kinds: list[type] = []
        got = await collect(receiver, kinds)
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
    async with taken(f"{base}/plain") as receiver:
        chunks = receiver.chunks()
        held = [await anext(chunks) for _ in range(BUFFERS)]
        # The whole body is on its way (loopback buffers hold megabytes), yet no further
        # buffer fills while all of them are held.
        got = await stuck_until_given_back(chunks, held)
        got += await collect(receiver)
    assert b"".join(got) == BODY


@pytest.mark.parametrize("reuse", [True, False])
async def test_a_buffer_given_back_as_kept_is_never_filled_again(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]], reuse: bool) -> None:
    """A buffer readers keep (reuse=False) is left alone for good: the body goes on in new
    ones, and what the readers hold still reads as it did."""
    base = await server(None)
    async with taken(f"{base}/plain") as receiver:
        seen: list[tuple[mmap.mmap, bytes]] = []
        got: list[bytes] = []
        async for chunk, release in receiver.chunks():
            got.append(bytes(chunk))
            if isinstance(chunk, mmap.mmap):
                seen.append((chunk, bytes(chunk)))
            assert release is not None
            release(reuse)
    assert b"".join(got) == BODY
    distinct = len({id(buf) for buf, _ in seen})
    if reuse:
        assert distinct <= BUFFERS
    else:
        assert distinct == len(seen)
        assert all(bytes(buf) == first for buf, first in seen)  # none written again


async def test_over_the_ahead_budget_a_body_reads_into_one_buffer(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    """Other downloads hold the process's AheadBudget: this one makes no second buffer, and
    reads on only when it has its one back."""
    base = await server(None)
    budget = AheadBudget()
    budget.change(budget.limit)
    async with taken(f"{base}/plain", budget=budget) as receiver:
        chunks = receiver.chunks()
        got = await stuck_until_given_back(chunks, [await anext(chunks)])
        budget.change(-budget.limit)
        got += await collect(receiver)
    assert b"".join(got) == BODY


async def test_a_body_cut_short_is_a_payload_error(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    base = await server(None)
    async with taken(f"{base}/cut") as receiver:
        with pytest.raises(aiohttp.ClientPayloadError):
            await collect(receiver)


async def test_a_stalled_body_times_out(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    base = await server(None)
    timeout = aiohttp.ClientTimeout(sock_read=0.4)
    loop = asyncio.get_running_loop()
    async with taken(f"{base}/stall", client_timeout=timeout) as receiver:
        start = loop.time()
        with pytest.raises(TimeoutError):
            await collect(receiver)
        assert loop.time() - start < 5  # sock_read, checked four times per period


async def test_holding_every_buffer_longer_than_sock_read_is_no_stall(
        server: Callable[[ssl.SSLContext | None], Awaitable[str]]) -> None:
    base = await server(None)
    timeout = aiohttp.ClientTimeout(sock_read=0.4)
    async with taken(f"{base}/plain", client_timeout=timeout) as receiver:
        chunks = receiver.chunks()
        held = [await anext(chunks) for _ in range(BUFFERS)]
        await asyncio.sleep(1.0)  # paused by us, not by the upstream
        got = [bytes(c) for c, _ in held]
        for _, release in held:
            assert release is not None
            release(True)
        got += await collect(receiver)
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


class Upstream:
    """A blob upstream for download_into: the first GET is cut after three buffers; later
    ones honour Range (206) unless `ignore_range`, then they send the whole body (200)."""

    def __init__(self, ignore_range: bool) -> None:
        self.ignore_range = ignore_range
        self.ranges: list[str | None] = []

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.ranges.append(request.headers.get("Range"))
        if len(self.ranges) == 1:
            return await cut(request)
        start = int(request.headers["Range"][6:-1]) if "Range" in request.headers else 0
        if self.ignore_range or not start:
            return web.Response(body=BODY)
        return web.Response(status=206, body=BODY[start:], headers={
            "Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"})


@pytest.mark.parametrize("ignore_range", [False, True])
async def test_a_taken_body_cut_short_resumes_to_the_whole_blob(
        tmp_path: Path, ignore_range: bool) -> None:
    """The second GET resumes where the file ends; an upstream that ignores Range sends the
    whole body again and what the file has is skipped: skipped buffers go back at once (held,
    they stopped the reading for good)."""
    upstream = Upstream(ignore_range)
    app = web.Application()
    app.router.add_get("/v2/r/blobs/{digest}", upstream.blob)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    digest = Digest.of(BODY)
    metrics = Metrics()
    db = Database(tmp_path / "index.db")
    tier = DiskTier(tmp_path / "hot", db, 1 << 30, metrics)
    tier.open_sync()
    await db.start()
    fetch = BlobFetch(str(digest), TempBlob(tmp_path, digest, len(BODY)))
    writer = WriteBehind(fetch, direct_min=BUFFER)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            client = UpstreamClient(UpstreamConfig("up", f"http://127.0.0.1:{port}"), session,
                                    metrics)
            await asyncio.wait_for(
                download_into(client, "r", digest, fetch, writer, metrics, tier), 30)
    finally:
        await writer.close()
        await db.close()
        await runner.cleanup()
    assert len(upstream.ranges) == 2 and upstream.ranges[1] is not None
    assert int(upstream.ranges[1][6:-1]) >= 2 * BUFFER  # the bytes before the cut were kept
    assert fetch.temp.matches() and Path(fetch.temp.path).read_bytes() == BODY
    fetch.temp.abort_sync()


@pytest.mark.parametrize(("path", "kept"), [("stall", 3 * BUFFER), ("stall_small", 1 << 20)])
async def test_a_body_that_stalls_past_its_own_limit_keeps_what_came(
        tmp_path: Path, server: Callable[[ssl.SSLContext | None], Awaitable[str]], path: str,
        kept: int) -> None:
    """A peer's body is watched by cluster.peer_timeout, not by the session (which has no
    sock_read for peers): taken or not, a stall past it fails the read, and the bytes that came
    before are in the file for the next source to resume after."""
    base = await server(None)
    size = len(BODY) if path == "stall" else TAKE_MIN - 1
    data = BODY[:size]
    fetch = BlobFetch("k", TempBlob(tmp_path, Digest.of(data), size))
    fetch.set_size(size)
    writer = WriteBehind(fetch, direct_min=BUFFER)
    counted: list[int] = []
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout()) as session, \
                session.get(f"{base}/{path}") as resp:
            start = loop.time()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    body_into(resp, fetch, writer, counted.append, "a peer", stall=0.4), 10)
            assert loop.time() - start < 5
    finally:
        await writer.close()
    assert sum(counted) == kept
    assert fetch.temp.written == kept
    fetch.temp.abort_sync()
