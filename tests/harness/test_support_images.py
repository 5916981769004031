"""Image building blocks: deterministic layers, cached big layers, custom pushes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from tests.support import (
    ARM64,
    Catalog,
    ImagePusher,
    RegistryClient,
    big_layer,
    build_image,
    fetch,
    layer_bytes,
)
from tests.support.images import EPOCH, MT_OCI_INDEX, MT_OCI_LAYER, MT_OCI_MANIFEST


def test_layer_bytes_is_a_deterministic_gzip_tar() -> None:
    a = layer_bytes({"etc/hello": "hi\n", "bin/tool": b"\x00\x01"}, dirs=("etc", "bin"))
    b = layer_bytes({"bin/tool": b"\x00\x01", "etc/hello": "hi\n"}, dirs=("bin", "etc"))
    assert a == b  # insertion order does not matter, timestamps are fixed
    assert a.digest != layer_bytes({"etc/hello": "hi!\n"}).digest
    data = a.read_bytes()
    assert a.size == len(data)
    assert a.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    raw = gzip.decompress(data)
    assert a.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert set(members) == {"bin", "etc", "bin/tool", "etc/hello"}
        assert {m.mtime for m in members.values()} == {EPOCH}
        assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}
        hello = tf.extractfile("etc/hello")
        assert hello is not None and hello.read() == b"hi\n"


def test_big_layer_is_cached_by_size(tmp_path: Path) -> None:
    first = big_layer(2, tmp_path)
    assert first.path is not None and first.data is None  # on disk, streamed when pushed
    assert first.size > 2 << 20  # stored gzip of random data cannot shrink
    mtime = first.path.stat().st_mtime_ns
    again = big_layer(2, tmp_path)
    assert again == first
    assert again.path is not None and again.path.stat().st_mtime_ns == mtime  # not rebuilt
    assert big_layer(1, tmp_path).digest != first.digest
    sha = hashlib.sha256()
    for piece in first.chunks():
        sha.update(piece)
    assert "sha256:" + sha.hexdigest() == first.digest


def test_oci_image_and_index_documents() -> None:
    layer = layer_bytes({"x": "y"})
    img = build_image([layer], ARM64, oci=True, labels={"k": "v"})
    man = json.loads(img.manifest)
    assert man["mediaType"] == MT_OCI_MANIFEST
    assert man["layers"] == [{"mediaType": MT_OCI_LAYER, "size": layer.size, "digest": layer.digest}]
    cfg = json.loads(img.config)
    assert (cfg["architecture"], cfg["variant"]) == ("arm64", "v8")
    assert cfg["rootfs"]["diff_ids"] == [layer.diff_id]
    assert cfg["config"]["Labels"] == {"k": "v"}


def test_custom_push_chunked_salted_and_indexed(catalog: Catalog) -> None:
    layer = layer_bytes({"data.bin": hashlib.shake_256(b"custom").digest(600_000)}, gzip_level=0)
    plain = ImagePusher(catalog.registry_url)
    salted = ImagePusher(catalog.registry_url, salt="other-upstream", chunk_size=128 * 1024)
    a = plain.push_image("custom/one", "v1", [layer])
    b = salted.push_image("custom/two", "v1", [layer], oci=True)
    assert salted.stats["chunked"] == 1  # the 600 kB layer went up as 128 KiB PATCHes
    assert a.layers[0].digest == b.layers[0].digest
    assert a.config != b.config and a.digest != b.digest
    r = fetch(f"{catalog.registry_url}/v2/custom/two/blobs/{layer.digest}")
    assert r.body == layer.read_bytes()

    arm = salted.push_image("custom/two", None, [layer_bytes({"arm": "1"})], ARM64, oci=True)
    index = salted.push_index("custom/two", "multi", [b, arm], oci=True)
    assert index.media_type == MT_OCI_INDEX and index.is_index
    status, headers = RegistryClient(catalog.registry_url).head_manifest("custom/two", "multi")
    assert status == 200 and headers["Docker-Content-Digest"] == index.digest
    assert {x.digest for x in index.all_blobs()} == {x.digest for x in b.blobs + arm.blobs}
