"""TempBlob: buffered and O_DIRECT appends land the same bytes and digest, whatever the chunk
sizes; the staged tail reaches the file only when flushed; a file that no longer ends on a
block boundary is never written O_DIRECT."""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import pytest

from mirror.oci.models import Digest
from mirror.store.temp import DIRECT_BUFFER, TempBlob

DATA = os.urandom(3 * DIRECT_BUFFER + 777_777)
DIGEST = Digest.parse("sha256:" + hashlib.sha256(DATA).hexdigest())


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos:pos + n])
        pos, i = pos + n, i + 1
    return out


@pytest.mark.parametrize("direct", [False, True])
def test_appends_land_every_byte_and_the_digest(tmp_path: Path, direct: bool) -> None:
    temp = TempBlob(tmp_path, DIGEST, len(DATA))
    assert temp.use_direct() is direct or not direct
    told = 0
    for batch in [pieces(DATA[:4_000_001], [65536, 1_000_003]), pieces(DATA[4_000_001:], [333])]:
        temp.hash_sync(batch)
        told += temp.append_sync(batch)
    if direct:
        assert temp.written == told == 3 * DIRECT_BUFFER  # the rest is staged, not in the file
        assert os.fstat(temp.fd).st_size == temp.written
        assert not temp.matches()  # staged bytes are not in the file yet
    told += temp.flush_sync()
    assert told == temp.written == len(DATA) and temp.matches()
    assert Path(temp.path).read_bytes() == DATA
    temp.abort_sync()
    assert not temp.path.exists()


def aligned(data: bytes) -> mmap.mmap:
    buf = mmap.mmap(-1, DIRECT_BUFFER)
    buf[:] = data
    return buf


def test_whole_aligned_buffers_mixed_with_other_chunks_land_every_byte(tmp_path: Path) -> None:
    """Whole page-aligned buffers (fetch.receive) are written as they are when nothing is
    staged, and through the staging buffer when something is: the file is right either way."""
    temp = TempBlob(tmp_path, DIGEST, len(DATA))
    assert temp.use_direct()
    one, two, three = (DATA[i * DIRECT_BUFFER:(i + 1) * DIRECT_BUFFER] for i in range(3))
    batches: list[list[bytes | memoryview | mmap.mmap]] = [
        [aligned(one)],  # straight from the buffer
        [two[:100], memoryview(aligned(two))[100:]],  # staged, then the rest of a buffer
        [three[:7]], [aligned(three[7:] + DATA[3 * DIRECT_BUFFER:3 * DIRECT_BUFFER + 7])],
        [DATA[3 * DIRECT_BUFFER + 7:]],
    ]
    told = 0
    for batch in batches:
        temp.hash_sync(batch)
        told += temp.append_sync(batch)
    told += temp.flush_sync()
    assert told == temp.written == len(DATA) and temp.matches()
    assert Path(temp.path).read_bytes() == DATA
    temp.close_sync()


def test_after_a_flush_mid_file_writes_are_buffered(tmp_path: Path) -> None:
    """A resumed download flushes what it staged (an unaligned end): O_DIRECT is over."""
    temp = TempBlob(tmp_path, DIGEST, len(DATA))
    assert temp.use_direct()
    head, rest = DATA[:DIRECT_BUFFER + 5], DATA[DIRECT_BUFFER + 5:]
    temp.hash_sync([head])
    temp.append_sync([head])
    assert temp.flush_sync() == 5
    assert not temp.use_direct()  # the file ends off the block boundary now
    temp.hash_sync([rest])
    assert temp.append_sync([rest]) == len(rest)  # buffered: in the file at once
    assert temp.matches() and Path(temp.path).read_bytes() == DATA
    temp.close_sync()


def test_a_wrong_byte_does_not_match(tmp_path: Path) -> None:
    temp = TempBlob(tmp_path, DIGEST, len(DATA))
    temp.use_direct()
    bad = bytearray(DATA)
    bad[-1] ^= 0xFF
    temp.hash_sync([bytes(bad)])
    temp.append_sync([bytes(bad)])
    temp.flush_sync()
    assert temp.written == len(DATA) and not temp.matches()
    temp.abort_sync()
