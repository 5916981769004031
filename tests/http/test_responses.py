"""A file's bytes to a client (write_file_range): from the page cache through a mapping, and
when the file is not in memory, brought in by worker threads rather than by page faults on the
event loop; whole ranges and unaligned ones, byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mirror.http import responses
from mirror.http.responses import MAP_WINDOW, PageIn, resident, write_file_range

SIZE = 5 * MAP_WINDOW + 12345  # windows and a tail


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the jobs it is given."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.jobs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


def evict(path: Path) -> bool:
    """Drop the file's pages from the page cache; False where the file system keeps them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return not resident(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "blob"
    path.write_bytes(data)
    if not evict(path):
        # tmpfs and the like keep every page in memory: there is no disk to wait for.
        pytest.fail(f"{tmp_path} is on a file system whose pages cannot be dropped; run the "
                    "tests with a temporary directory on a disk")
    return path, data


@pytest.fixture
def reads() -> CountingExecutor:
    """The threads write_file_range is given for bringing files in (the app's FILE_READS)."""
    return CountingExecutor()


@pytest.fixture
async def serve(blob: tuple[Path, bytes], reads: CountingExecutor
                ) -> AsyncIterator[Callable[[int, int], Any]]:
    path, _ = blob

    async def handler(request: web.Request) -> web.StreamResponse:
        offset, count = int(request.query["offset"]), int(request.query["count"])
        resp = web.StreamResponse()
        resp.content_length = count
        await resp.prepare(request)
        fd = os.open(path, os.O_RDONLY)
        try:
            await write_file_range(request, resp, fd, offset, count, reads)
        finally:
            os.close(fd)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/f", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def get(offset: int, count: int) -> bytes:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/f", params={"offset": offset, "count": count}) as r:
            assert r.status == 200
            return await r.read()

    yield get
    await runner.cleanup()


def test_resident_tells_a_file_in_memory_from_one_on_the_disk(blob: tuple[Path, bytes]) -> None:
    path, _ = blob
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not resident(fd, 0, SIZE)
        os.pread(fd, MAP_WINDOW, 0)  # the first window read in (and perhaps some readahead)
        assert resident(fd, 0, MAP_WINDOW)
        os.pread(fd, SIZE, 0)
        assert resident(fd, 0, SIZE)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("offset", "count"), [(0, SIZE), (4097, SIZE - 4097 - 3),
                                               (MAP_WINDOW - 1, 2)])
async def test_a_file_on_the_disk_is_sent_whole_and_read_in_by_worker_threads(
        blob: tuple[Path, bytes], serve: Callable[[int, int], Any], reads: CountingExecutor,
        offset: int, count: int) -> None:
    """Read in on the threads it is given, not the default executor's (where downloads hash
    and write)."""
    _, data = blob
    default = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(default)
    got = await serve(offset, count)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data[offset:offset + count]).digest()
    windows = -(-(offset % mmap.ALLOCATIONGRANULARITY + count) // MAP_WINDOW)  # mapped ones
    assert reads.jobs >= windows  # every window brought in off the loop
    assert default.jobs == 0
    reads.jobs = 0
    assert await serve(offset, count) == data[offset:offset + count]  # now in memory
    assert reads.jobs == 0  # mapped and sent at once: no thread round trips


async def test_loads_are_waited_for_when_the_sender_is_cancelled(
        blob: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that goes away (or a shutdown) cancels the sender mid-window: the loads under
    way (this window's and the next's) still finish before close() returns, since the caller
    closes the file next. Loads are slowed down so that they are surely still running."""
    path, _ = blob
    real = responses._page_in
    finished: list[int] = []

    def slow(null: int, fd: int, offset: int, count: int) -> None:
        time.sleep(0.6 if offset == 0 else 0.1)  # the window waited for outlasts the next
        real(null, fd, offset, count)
        finished.append(offset)

    monkeypatch.setattr(responses, "_page_in", slow)
    fd = os.open(path, os.O_RDONLY)
    try:
        page_in = PageIn(fd, SIZE)
        task = asyncio.create_task(page_in.ready(0, MAP_WINDOW))
        await asyncio.sleep(0.05)  # both loads running on worker threads
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == []  # still running when the sender is gone
        await page_in.close()
        assert sorted(finished) == [0, MAP_WINDOW]
    finally:
        os.close(fd)
