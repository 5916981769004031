"""Bundle streams and parts without a registry: the laid-out tar stream is what tarfile reads,
parts join into exactly that stream, a stopped write resumes into the same bytes, and every
way a set of parts can be wrong is named (issue 19). The end-to-end cycle with real images and
skopeo is tests/e2e/test_airgap_weekly.py."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from mirror.airgap.bundle import BundleError
from mirror.airgap.inventory import Inventory, InventoryError, parse
from mirror.airgap.parts import HEADER_SIZE, BundleOutput, PartError, PartsReader, find_parts
from mirror.airgap.tarlayout import Layout, LayoutError, write_layout
from mirror.oci.models import Digest

SPLIT = 64 * 1024


def make_blobs(root: Path, sizes: list[int]) -> list[tuple[Digest, int]]:
    out = []
    for i, size in enumerate(sizes):
        data = hashlib.shake_256(f"blob{i}".encode()).digest(size)
        d = Digest.of(data)
        (root / d.hex).write_bytes(data)
        out.append((d, size))
    return out


def layout_of(blobs: list[tuple[Digest, int]]) -> Layout:
    layout = Layout()
    layout.add_file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    layout.add_file("index.json", b'{"manifests": []}')
    layout.add_dir("blobs")
    layout.add_dir("blobs/sha256")
    for d, size in blobs:
        layout.add_blob(d, size)
    layout.close()
    return layout


@pytest.fixture
def blobs(tmp_path: Path) -> list[tuple[Digest, int]]:
    (tmp_path / "cache").mkdir()
    return make_blobs(tmp_path / "cache", [1000, 150_000, 0, 70_000])


def write(tmp_path: Path, layout: Layout, out: Path, split: int | None,
          stop_after: int | None = None) -> BundleOutput:
    sink = BundleOutput(out, layout, split)

    class Stop(Exception):
        pass

    class Stopping:
        """Fails like a full disk once `stop_after` bytes went through."""

        def __init__(self) -> None:
            self.seen = sink.start()

        def write(self, data: bytes) -> None:
            if stop_after is not None and self.seen + len(data) > stop_after:
                sink.write(data[: stop_after - self.seen])  # what fit before the disk filled
                raise Stop
            sink.write(data)
            self.seen += len(data)

        def checkpoint(self, offset: int) -> None:
            sink.checkpoint(offset)

    stopping = Stopping()
    try:
        write_layout(layout, lambda d: tmp_path / "cache" / d.hex, stopping, stopping.seen)
        sink.finish()
    except Stop:
        pass
    finally:
        sink.close()
    return sink


def test_the_laid_out_stream_is_a_tar_of_every_blob(tmp_path: Path,
                                                    blobs: list[tuple[Digest, int]]) -> None:
    layout = layout_of(blobs)
    out = write(tmp_path, layout, tmp_path / "b.tar", None)
    data = (tmp_path / "b.tar").read_bytes()
    assert len(data) == layout.total and out.resumed_from == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}  # type: ignore[union-attr]
    for d, size in blobs:
        body = got[f"blobs/sha256/{d.hex}"]
        assert len(body) == size and hashlib.sha256(body).hexdigest() == d.hex


def test_parts_join_into_the_same_stream_and_a_stopped_write_resumes(
        tmp_path: Path, blobs: list[tuple[Digest, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mirror.airgap.parts.CHECKPOINT_BYTES", 16 * 1024)
    layout = layout_of(blobs)
    write(tmp_path, layout, tmp_path / "whole.tar", None)
    whole = (tmp_path / "whole.tar").read_bytes()

    first = write(tmp_path, layout, tmp_path / "p.tar", SPLIT, stop_after=100_000)
    assert [p.name for p in first.written_parts] == ["p.tar.000"]  # p.tar.001 still partial
    second = write(tmp_path, layout, tmp_path / "p.tar", SPLIT)
    # From the last checkpoint (here the end of the first part), not from 0.
    assert SPLIT - HEADER_SIZE <= second.resumed_from <= 100_000
    parts = sorted(tmp_path.glob("p.tar.*"))
    assert [p.name for p in parts] == [f"p.tar.{i:03d}" for i in range(4)]
    assert all(p.stat().st_size <= SPLIT for p in parts)
    assert b"".join(p.read_bytes()[HEADER_SIZE:] for p in parts) == whole
    assert not list(tmp_path.glob(".p.tar*"))  # no partial, no state left

    found = find_parts([parts[2]])  # any part finds the set
    assert found is not None and found.paths == parts
    reader = PartsReader(found)
    assert b"".join(iter(lambda: reader.read(7000), b"")) == whole


def test_stopped_after_the_last_part_nothing_is_written_again(
        tmp_path: Path, blobs: list[tuple[Digest, int]]) -> None:
    layout = layout_of(blobs)
    done = write(tmp_path, layout, tmp_path / "p.tar", SPLIT)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("p.tar.*")}
    done.state_path.write_text(json.dumps({"bundle": done.bundle, "split": SPLIT,
                                           "offset": 70_000}))  # the state a crash left
    again = write(tmp_path, layout, tmp_path / "p.tar", SPLIT)
    assert again.resumed_from == layout.total and again.written_parts == []
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("p.tar.*")} == before
    assert not done.state_path.exists()


def test_a_different_export_does_not_resume_into_old_bytes(
        tmp_path: Path, blobs: list[tuple[Digest, int]]) -> None:
    write(tmp_path, layout_of(blobs), tmp_path / "p.tar", SPLIT, stop_after=100_000)
    other = write(tmp_path, layout_of(blobs[:2]), tmp_path / "p.tar", SPLIT)
    assert other.resumed_from == 0
    assert len(list(tmp_path.glob("p.tar.*"))) == other.count


def test_a_blob_that_rotted_on_disk_stops_the_export(tmp_path: Path,
                                                     blobs: list[tuple[Digest, int]]) -> None:
    d, _ = blobs[1]
    path = tmp_path / "cache" / d.hex
    data = bytearray(path.read_bytes())
    data[5000] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LayoutError, match=f"{d}.*corrupt"):
        write(tmp_path, layout_of(blobs), tmp_path / "b.tar", None)
    assert not (tmp_path / "b.tar").exists()


@pytest.fixture
def parts(tmp_path: Path, blobs: list[tuple[Digest, int]]) -> list[Path]:
    write(tmp_path, layout_of(blobs), tmp_path / "p.tar", SPLIT)
    return sorted(tmp_path.glob("p.tar.*"))


def read_all(found: list[Path]) -> None:
    set_ = find_parts(found)
    assert set_ is not None
    reader = PartsReader(set_)
    while reader.read(1 << 16):
        pass


def test_missing_parts_are_all_named(parts: list[Path]) -> None:
    parts[1].unlink()
    parts[3].unlink()
    with pytest.raises(PartError, match=r"parts p\.tar\.001, p\.tar\.003 missing \(4 parts"):
        find_parts([parts[0]])


def test_a_part_of_another_bundle_is_named(tmp_path: Path, parts: list[Path],
                                           blobs: list[tuple[Digest, int]]) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write(tmp_path, layout_of(list(reversed(blobs))), other / "p.tar", SPLIT)
    shutil.copyfile(other / "p.tar.002", parts[2])
    with pytest.raises(PartError, match=r"part p\.tar\.002 belongs to another bundle"):
        find_parts([parts[0]])


def test_a_renamed_part_is_out_of_sequence(parts: list[Path]) -> None:
    data1, data2 = parts[1].read_bytes(), parts[2].read_bytes()
    parts[1].write_bytes(data2)
    parts[2].write_bytes(data1)
    with pytest.raises(PartError, match=r"part p\.tar\.001 is out of sequence: it holds part 2"):
        find_parts([parts[0]])


@pytest.mark.parametrize("where", ["payload", "header", "cut"])
def test_a_damaged_part_is_named(parts: list[Path], where: str) -> None:
    data = bytearray(parts[2].read_bytes())
    if where == "payload":
        data[HEADER_SIZE + 3000] ^= 1
    elif where == "header":
        data[30] = ord("{")
    else:
        del data[-100:]
    parts[2].write_bytes(bytes(data))
    with pytest.raises(PartError, match=r"part p\.tar\.002 is damaged"):
        read_all([parts[0]])


def test_parts_given_by_hand_must_belong_together(tmp_path: Path, parts: list[Path]) -> None:
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    with pytest.raises(BundleError, match=r"notes\.txt: not a part"):
        find_parts([parts[0], stray])
    assert find_parts([tmp_path / "nothing.tar"]) is None  # not parts: a plain bundle's error


@pytest.mark.parametrize("text, problem", [
    ("{", "not JSON"),
    ("[]", "not a mirror inventory"),
    ('{"format": "mirror-inventory", "version": 9}', "inventory version 9"),
    ('{"format": "mirror-inventory", "version": 1, "blobs": "sha256:00"}', "not a list"),
    ('{"format": "mirror-inventory", "version": 1, "blobs": ["sha256:00"]}', "not a digest"),
    ('{"format": "mirror-inventory", "version": 1, "tags": {"a": 1}}', "'tags'"),
])
def test_a_bad_inventory_is_one_clear_line(text: str, problem: str) -> None:
    with pytest.raises(InventoryError, match=problem) as e:
        parse(text.encode(), "inv.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("inv.json: ")


def test_an_inventory_reads_back_as_written() -> None:
    d = "sha256:" + "ab" * 32
    inv = Inventory({d}, {"sha256:" + "cd" * 32}, {"docker.io/library/x:1": d})
    back = parse(inv.dumps(), "x")
    assert (back.manifests, back.blobs, back.tags) == (inv.manifests, inv.blobs, inv.tags)
    assert json.loads(inv.dumps())["format"] == "mirror-inventory"
