"""WriteBehind and the reader's pieces: what a download hands over ends up whole in the file,
also when a second writer takes over (a peer broke off, the upstream resumes), and readers
get memory or file ranges that add up to exactly the bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mirror.fetch.coalesce import KEEP_RECENT, BlobFetch
from mirror.fetch.download import WriteBehind
from mirror.oci.models import Digest
from mirror.store.temp import DIRECT_BUFFER, TempBlob

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
    await hand_over(WriteBehind(fetch, direct_min=1), DATA)
    kept = sum(len(c) for _, c in fetch.recent)
    assert KEEP_RECENT <= kept < KEEP_RECENT + 700_001  # older chunks are only in the file
    fetch.finish()
    fd = fetch.open_reader()
    got = bytearray()
    kinds = set()
    async for piece in fetch.pieces(0, len(DATA) - 1):
        if isinstance(piece, tuple):
            kinds.add("file")
            got += os.pread(fd, piece[1], piece[0])
        else:
            kinds.add("memory")
            got += piece
    fetch.close_reader(fd)
    assert kinds == {"file", "memory"} and bytes(got) == DATA
