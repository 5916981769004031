"""The real upstream (CNCF distribution) and the standard image set pushed into it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support import Catalog, RegistryProcess, fetch, push_standard_set
from tests.support import registry as registry_module
from tests.support.images import ALL_MANIFEST_TYPES, MT_DOCKER_LIST, MT_OCI_INDEX, STANDARD_REFS

ACCEPT_ALL = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}


def test_registry_serves_v2_and_logs(registry: RegistryProcess) -> None:
    assert registry.url.startswith("http://127.0.0.1:")
    r = fetch(registry.url + "/v2/")
    assert r.status == 200
    assert r.header("Docker-Distribution-Api-Version") == "registry/2.0"
    assert '"GET /v2/ HTTP/1.1" 200' in registry.log_text()  # access log is on


def test_catalog_holds_the_standard_set(catalog: Catalog) -> None:
    assert sorted(catalog.images) == sorted(STANDARD_REFS)
    assert catalog.tags("library/busybox") == ["1.36", "latest"]
    assert "org/team/app" in catalog.repos()


@pytest.mark.parametrize("ref", STANDARD_REFS)
def test_head_and_get_manifest_match_catalog(catalog: Catalog, ref: str) -> None:
    img = catalog[ref]
    url = f"{catalog.registry_url}/v2/{img.repo}/manifests/{img.tag}"
    head = fetch(url, "HEAD", ACCEPT_ALL)
    assert head.status == 200
    assert head.header("Docker-Content-Digest") == img.digest
    assert head.header("Content-Type") == img.media_type
    assert head.header("Content-Length") == str(img.size)
    got = fetch(f"{catalog.registry_url}/v2/{img.repo}/manifests/{img.digest}", headers=ACCEPT_ALL)
    assert got.body == img.manifest
    assert "sha256:" + hashlib.sha256(got.body).hexdigest() == img.digest


def test_every_blob_is_served_with_its_digest(catalog: Catalog) -> None:
    for img in catalog:
        if img.repo == "library/big":
            continue  # streamed in its own test
        for blob in img.all_blobs():
            r = fetch(f"{catalog.registry_url}/v2/{img.repo}/blobs/{blob.digest}")
            assert r.status == 200, (img.ref, blob)
            assert len(r.body) == blob.size
            assert "sha256:" + hashlib.sha256(r.body).hexdigest() == blob.digest


def test_indexes_have_amd64_and_arm64_children(catalog: Catalog) -> None:
    bb = catalog["library/busybox:latest"]
    assert bb.media_type == MT_DOCKER_LIST
    assert catalog["library/multiarch:latest"].media_type == MT_OCI_INDEX
    doc = json.loads(bb.manifest)
    plats = [m["platform"] for m in doc["manifests"]]
    assert plats == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert [m["digest"] for m in doc["manifests"]] == [c.digest for c in bb.children]
    # As on Docker Hub, the versioned tag is the amd64 entry of the list.
    assert bb.child("amd64").digest == catalog["library/busybox:1.36"].digest


def test_nested_repo_shares_base_layer_by_mount(catalog: Catalog) -> None:
    app, base = catalog["org/team/app:1.0"], catalog["library/alpine-ish:3.19"]
    assert app.layers[0].digest == base.layers[0].digest
    assert catalog.push_stats.get("mounted", 0) >= 1
    assert catalog.push_stats.get("chunked", 0) >= 1  # the big layer went up in PATCHes


def _blob(catalog: Catalog, repo: str, digest: str) -> bytes:
    return fetch(f"{catalog.registry_url}/v2/{repo}/blobs/{digest}").body


def test_config_diff_ids_match_layers(catalog: Catalog) -> None:
    for ref in ("library/busybox:1.36", "org/team/app:1.0"):
        img = catalog[ref]
        assert img.config is not None
        config = json.loads(_blob(catalog, img.repo, img.config.digest))
        diff_ids = [
            "sha256:" + hashlib.sha256(gzip.decompress(_blob(catalog, img.repo, lay.digest))).hexdigest()
            for lay in img.layers
        ]
        assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
        assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_big_layer_is_incompressible_and_streams(catalog: Catalog) -> None:
    img = catalog["library/big:latest"]
    (layer,) = img.layers
    assert layer.size >= catalog.big_mb << 20
    sha = hashlib.sha256()
    r = fetch(f"{catalog.registry_url}/v2/library/big/blobs/{layer.digest}", sink=sha.update)
    assert (r.status, r.size, r.error) == (200, layer.size, None)
    assert "sha256:" + sha.hexdigest() == layer.digest


def test_busybox_amd64_is_runnable(catalog: Catalog, tmp_path: Path) -> None:
    if not catalog.busybox_runnable:
        pytest.skip("no static x86-64 /bin/busybox on this host (apt-get install busybox-static)")
    img = catalog["library/busybox:1.36"]
    data = gzip.decompress(_blob(catalog, img.repo, img.layers[0].digest))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        sh = tf.getmember("bin/sh")
        assert sh.issym() and sh.linkname == "/bin/busybox"
        binary = tf.extractfile("bin/busybox")
        assert binary is not None
        path = tmp_path / "busybox"
        path.write_bytes(binary.read())
    path.chmod(0o755)
    out = subprocess.run([str(path), "sh", "-c", "echo hi from busybox"], capture_output=True)
    assert out.stdout == b"hi from busybox\n"


def test_salted_second_upstream_differs_only_in_configs(catalog: Catalog) -> None:
    with RegistryProcess() as second:
        other = push_standard_set(second.url, big_mb=1, salt="second")
    for ref in STANDARD_REFS:
        assert other[ref].digest != catalog[ref].digest, ref
    mine, theirs = catalog["library/alpine-ish:3.19"], other["library/alpine-ish:3.19"]
    assert mine.layers == theirs.layers
    assert mine.config != theirs.config


def test_proxy_mode_pulls_through(catalog: Catalog) -> None:
    img = catalog["library/alpine-ish:3.19-oci"]
    with RegistryProcess(proxy_remote_url=catalog.registry_url) as proxy:
        r = fetch(f"{proxy.url}/v2/{img.repo}/manifests/{img.tag}", headers=ACCEPT_ALL)
        assert r.status == 200
        assert r.header("Docker-Content-Digest") == img.digest
    assert "GET /v2/library/alpine-ish/manifests/3.19-oci" in proxy.log_text()


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "find_binary", lambda: None)
    with pytest.raises(FileNotFoundError, match="apt-get install docker-registry"):
        RegistryProcess().start()
