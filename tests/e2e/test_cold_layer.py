"""A cold large layer (issue 17): written past the page cache, read by clients from memory while
it downloads. The guarantees of the buffered path hold here too: a break at any offset resumes
and verifies, a wrong byte is never served whole, a reader far behind gets every byte from the
file, Range requests during the download are exact."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Fault, RecordingProxy, fetch
from tests.support.blobs import MiB, PushedBlob, push_random_blob
from tests.support.client import Reply, hashed_get
from tests.support.mirror_proc import MirrorFleet, MirrorProcess, mirror_config

pytestmark = pytest.mark.e2e
MakeMirror = Callable[..., MirrorProcess]
ODD = 5 * MiB + 12345  # not on an O_DIRECT block boundary


@pytest.fixture
def make_mirror(tmp_path: Path) -> Iterator[MakeMirror]:
    with MirrorFleet(tmp_path) as fleet:
        def make(upstream_url: str, **extra: Any) -> MirrorProcess:
            extra.setdefault("prefetch", {"enabled": False})
            # 1 MiB: the 24 MiB blob is written O_DIRECT whatever the default becomes.
            extra.setdefault("cache", {"dir": str(tmp_path / "cache"), "direct_io": "1MiB"})
            return fleet.start(mirror_config({"docker.io": upstream_url}, tmp_path / "cache",
                                             **extra))

        yield make


@pytest.fixture
def blob(registry_tap: RecordingProxy, tmp_path: Path) -> PushedBlob:
    return push_random_blob(registry_tap.target, "test/cold", 24 * MiB, tmp_path)


def cached(mirror: MirrorProcess, digest: str) -> Path:
    return mirror.workdir.parent / "cache" / "blobs" / "sha256" / digest[7:9] / digest[7:]



@pytest.mark.parametrize("mode", ["reset", "truncate"])
def test_a_break_off_the_block_boundary_resumes_and_verifies(
        make_mirror: MakeMirror, registry_tap: RecordingProxy, blob: PushedBlob,
        mode: str) -> None:
    mirror = make_mirror(registry_tap.url)
    registry_tap.set_fault(Fault(mode=mode, offset=ODD, match="/blobs/", count=1))  # type: ignore[arg-type]
    r, digest = hashed_get(f"{mirror.url}/v2/{blob.repo}/blobs/{blob.digest}")
    assert (r.status, r.error, digest) == (200, None, blob.digest)
    gets = registry_tap.filter(method="GET", kind="blob")
    # Resumed from what had arrived whole: an RST drops what the socket held, and aiohttp
    # drops what it buffered when the body breaks, so up to ODD, wherever that falls.
    start = int((gets[1].header("Range") or "bytes=0-")[6:-1]) if len(gets) == 2 else -1
    assert 0 < start <= ODD, (start, gets)
    data = cached(mirror, blob.digest).read_bytes()
    assert len(data) == blob.size and "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest


def test_a_wrong_byte_is_never_served_whole_nor_kept(make_mirror: MakeMirror,
                                                     registry_tap: RecordingProxy,
                                                     blob: PushedBlob) -> None:
    mirror = make_mirror(registry_tap.url)
    registry_tap.set_fault(Fault(mode="corrupt", offset=blob.size - 3 * MiB, match="/blobs/",
                                 count=1))
    url = f"{mirror.url}/v2/{blob.repo}/blobs/{blob.digest}"
    r = fetch(url, sink=lambda _: None, timeout=120)
    assert r.error is not None, "a body that failed its digest must end broken"
    assert not cached(mirror, blob.digest).exists()
    assert not list((mirror.workdir.parent / "cache" / "tmp").iterdir())
    r, digest = hashed_get(url)  # the next request fetches again, and it verifies
    assert (r.status, r.error, digest) == (200, None, blob.digest)


def test_a_reader_far_behind_gets_every_byte_from_the_file(make_mirror: MakeMirror,
                                                           registry_tap: RecordingProxy,
                                                           blob: PushedBlob) -> None:
    """One client stops reading for a while: the download goes on, the bytes it missed are no
    longer in memory, and it reads them from the (O_DIRECT-written) temp file."""
    mirror = make_mirror(registry_tap.url)
    registry_tap.set_fault(Fault(mode="slow", rate=24 * MiB, match="/blobs/"))
    url = f"{mirror.url}/v2/{blob.repo}/blobs/{blob.digest}"
    paused = threading.Event()

    def pause_once(_: bytes) -> None:
        if not paused.is_set():
            paused.set()
            time.sleep(0.6)  # about 14 MiB go by meanwhile: far past what memory keeps

    results: dict[str, tuple[Reply, str]] = {}
    slow = threading.Thread(target=lambda: results.update(slow=hashed_get(url, sink=pause_once)))
    slow.start()
    assert paused.wait(30)
    results["fast"] = hashed_get(url)
    slow.join(120)
    for name, (reply, digest) in results.items():
        assert (reply.status, reply.error, digest) == (200, None, blob.digest), name
    assert len(results) == 2
    assert registry_tap.count(method="GET", kind="blob") == 1


def test_a_range_asked_during_the_download_is_exact(make_mirror: MakeMirror,
                                                    registry_tap: RecordingProxy,
                                                    blob: PushedBlob) -> None:
    mirror = make_mirror(registry_tap.url)
    registry_tap.set_fault(Fault(mode="slow", rate=16 * MiB, match="/blobs/"))
    url = f"{mirror.url}/v2/{blob.repo}/blobs/{blob.digest}"
    whole: dict[str, tuple[Reply, str]] = {}
    t = threading.Thread(target=lambda: whole.update(r=hashed_get(url)))
    t.start()
    time.sleep(0.3)
    lo, hi = ODD, 3 * ODD  # crosses block boundaries, ends before the last byte
    r = fetch(url, headers={"Range": f"bytes={lo}-{hi}"}, timeout=120)
    t.join(120)
    assert r.status == 206 and r.error is None and r.body == blob.slice(lo, hi)
    reply, digest = whole["r"]
    assert (reply.status, reply.error, digest) == (200, None, blob.digest)
    assert registry_tap.count(method="GET", kind="blob") == 1
