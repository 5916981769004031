"""WriteBehind and the reader's pieces: what a download hands over ends up whole in the file,
also when a second writer takes over (a peer broke off, the upstream resumes), and readers
get memory or file ranges that add up to exactly the bytes."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mirror.fetch.budget import AheadBudget
from mirror.fetch.coalesce import KEEP_RECENT, BlobFetch
from mirror.fetch.download import WRITE_BATCH, WriteBehind
from mirror.oci.models import Digest
from mirror.store.temp import DIRECT_BUFFER, Chunk, TempBlob

DATA = os.urandom(5 * DIRECT_BUFFER + 4321)
DIGEST = Digest.parse("sha256:" + hashlib.sha256(DATA).hexdigest())


def new_fetch(tmp_path: Path) -> BlobFetch:
    fetch = BlobFetch(str(DIGEST), TempBlob(tmp_path, DIGEST, len(DATA)))
    fetch.set_size(len(DATA))
    return fetch


async def hand_over(writer: WriteBehind, data: bytes, step: int = 700_001) -> None:
    for pos in range(0, len(data), step):
        await writer.submit([data[pos:pos + step]])
    await writer.drain()
    await writer.close()


async def test_a_second_writer_after_a_break_on_a_block_boundary_lands_the_tail(
        tmp_path: Path) -> None:
    """The first writer (a peer) stops at a block boundary with O_DIRECT on; the next one
    (the upstream, resuming) must still write the staged tail (it did not, once)."""
    fetch = new_fetch(tmp_path)
    await hand_over(WriteBehind(fetch, direct_min=1), DATA[:2 * DIRECT_BUFFER])
    assert fetch.temp.direct and fetch.temp.written == 2 * DIRECT_BUFFER
    await hand_over(WriteBehind(fetch, direct_min=1), DATA[2 * DIRECT_BUFFER:])
    assert fetch.temp.written == fetch.available == len(DATA) and fetch.temp.matches()
    assert Path(fetch.temp.path).read_bytes() == DATA


async def test_pieces_from_memory_and_file_add_up_to_the_bytes(tmp_path: Path) -> None:
    fetch = new_fetch(tmp_path)
    fd = fetch.open_reader()  # a reader that fell behind at once
    await hand_over(WriteBehind(fetch, direct_min=1), DATA)
    kept = sum(len(c) for _, c in fetch.recent)
    assert KEEP_RECENT <= kept < KEEP_RECENT + 700_001  # older chunks are only in the file
    got = bytearray()
    kinds = set()
    async for piece in fetch.pieces(0, len(DATA) - 1):
        if isinstance(piece, tuple):
            kinds.add("file")
            got += os.pread(fd, piece[1], piece[0])
        else:
            kinds.add("memory")
            got += piece
        if len(got) >= len(DATA) - 1:
            fetch.finish()  # the last byte waits for the commit
    fetch.close_reader(fd)
    assert kinds == {"file", "memory"} and bytes(got) == DATA
    assert not fetch.recent  # finished: every byte is in the file, none held in memory


async def test_without_readers_no_chunks_are_kept_and_a_late_reader_gets_every_byte(
        tmp_path: Path) -> None:
    """A prefetch keeps nothing in memory; a client that joins halfway reads the file up to
    what is written, then is sent the chunks that come after it joined."""
    fetch = new_fetch(tmp_path)
    writer = WriteBehind(fetch, direct_min=None)
    half = len(DATA) // 2
    for pos in range(0, half, 700_001):
        await writer.submit([DATA[pos:min(pos + 700_001, half)]])
    assert not fetch.recent and fetch.received == half
    fd = fetch.open_reader()
    await hand_over(writer, DATA[half:])
    assert sum(len(c) for _, c in fetch.recent) >= KEEP_RECENT
    got = bytearray()
    kinds = set()
    async for piece in fetch.pieces(0, len(DATA) - 1):
        kinds.add("file" if isinstance(piece, tuple) else "memory")
        got += os.pread(fd, piece[1], piece[0]) if isinstance(piece, tuple) else piece
        if len(got) >= len(DATA) - 1:
            fetch.finish()
    fetch.close_reader(fd)
    assert kinds == {"file", "memory"} and bytes(got) == DATA


async def test_downloads_together_hold_at_most_the_budget_plus_a_batch_each(
        tmp_path: Path) -> None:
    """Two downloads whose lanes are stuck (a busy pool): the first may hold the budget, the
    second only once its own batch is done; the budget is free again after both close."""
    gate = threading.Event()
    pool = ThreadPoolExecutor(1)
    pool.submit(gate.wait, 30)  # the lanes' jobs queue behind this one
    budget = AheadBudget(limit=WRITE_BATCH)
    a, b = new_fetch(tmp_path), new_fetch(tmp_path)
    wa = WriteBehind(a, lambda: pool, budget=budget)
    wb = WriteBehind(b, lambda: pool, budget=budget)
    await wa.submit([DATA[:WRITE_BATCH]])  # within the budget: returns at once
    second = asyncio.create_task(wb.submit([DATA[:WRITE_BATCH]]))
    await asyncio.wait([second], timeout=0.2)
    assert not second.done() and budget.used == 2 * WRITE_BATCH  # over: b waits for its own
    gate.set()
    await asyncio.wait_for(second, 10)
    for writer in (wa, wb):
        await writer.drain()
        await writer.close()
    assert budget.used == 0
    assert a.temp.written == b.temp.written == WRITE_BATCH
    pool.shutdown()


class HeldHash(TempBlob):
    """A temp file whose hashing waits for `go`: the write lane finishes first."""

    go: threading.Event

    def hash_sync(self, chunks: Sequence[Chunk]) -> None:
        self.go.wait(10)
        super().hash_sync(chunks)


@pytest.mark.parametrize("reading", [False, True])
async def test_a_buffer_goes_back_once_both_lanes_are_done_and_for_reuse_only_if_not_kept(
        tmp_path: Path, reading: bool) -> None:
    """A received buffer (fetch.receive) is reused as soon as it is given back: giving it back
    after the write alone would let the next bytes overwrite what the hash has yet to read.
    While a client reads, the buffer is kept for it (BlobFetch.recent) and must never be
    reused: it is given back as gone."""
    temp = HeldHash(tmp_path, DIGEST, len(DATA))
    temp.go = threading.Event()
    fetch = BlobFetch(str(DIGEST), temp)
    fetch.set_size(len(DATA))
    fd = fetch.open_reader() if reading else None
    writer = WriteBehind(fetch, direct_min=None)
    buf = mmap.mmap(-1, DIRECT_BUFFER)
    buf[:] = DATA[:DIRECT_BUFFER]
    released: list[bool] = []
    await writer.submit([buf], [released.append])
    deadline = asyncio.get_running_loop().time() + 10
    while temp.written < DIRECT_BUFFER:  # the write lane is done with it
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not released  # the hash lane still has it
    if reading:
        kept = fetch.piece(0, DIRECT_BUFFER)  # the reader is sent the buffer's own bytes
        assert isinstance(kept, memoryview) and kept.obj is buf
    temp.go.set()
    await writer.submit([DATA[DIRECT_BUFFER:]])
    await writer.drain()
    assert released == [not reading] and temp.matches()
    await writer.close()
    if fd is not None:
        fetch.close_reader(fd)
