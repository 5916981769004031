"""Air-gapped sites end to end (issue 8), with the real command line and real clients.

Connected site: `mirror seed` two images from the real registry (library/multiarch:latest, an OCI
index of two platforms, and library/big:latest, MIRROR_TEST_BIG_MB MiB, default 64), then
`mirror export` one bundle. skopeo reads the bundle as an oci-archive. Air-gapped site: a fresh
cache, `offline: true`, the only upstream a dead loopback port; `mirror import` the bundle, serve
it, and pull both images with skopeo and with containerd (ctr in a network jail that reaches
only the mirror), every manifest and blob checked against the digests the registry holds. A
bundle with one flipped byte is refused, naming the blob, and nothing of it is served."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import Catalog
from tests.support.clientrun import dead_loopback_port
from tests.support.daemons import Containerd
from tests.support.mirror_proc import MirrorProcess
from tests.support.netjail import NetJail, can_unshare_net
from tests.support.verify import sha256_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IMAGES = ("library/multiarch:latest", "library/big:latest")


def mirror_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:  # fail, never skip: these tests exist to run the real tools
        pytest.fail(f"{', '.join(missing)} not installed (make system-deps)", pytrace=False)


@dataclass
class Sites:
    catalog: Catalog
    root: Path
    bundle: Path
    dead_port: int
    offline: MirrorProcess  # the air-gapped site, serving the imported bundle
    import_out: str


def offline_config(cache: Path, dead_port: int) -> dict[str, Any]:
    return {"listen": "127.0.0.1:0", "offline": True,
            "upstreams": {"docker.io": {"url": f"http://127.0.0.1:{dead_port}"}},
            "cache": {"dir": str(cache)}}


@pytest.fixture(scope="module")
def sites(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    root = tmp_path_factory.mktemp("airgap")
    connected = write_config(root / "connected" / "mirror.yaml", {
        "upstreams": {"docker.io": {"url": catalog.registry_url}},
        "cache": {"dir": str(root / "connected" / "cache")}})
    seed = mirror_cli("seed", "-c", str(connected), *IMAGES, cwd=root)
    assert seed.returncode == 0, seed.stdout + seed.stderr
    assert "seed: 2 images ok, 0 failed" in seed.stdout, seed.stdout
    bundle = root / "bundle.tar"
    export = mirror_cli("export", "-c", str(connected), "-o", str(bundle), *IMAGES, cwd=root)
    assert export.returncode == 0, export.stdout + export.stderr
    with dead_loopback_port() as dead:
        airgapped = write_config(root / "airgapped" / "mirror.yaml",
                                 offline_config(root / "airgapped" / "cache", dead))
        imported = mirror_cli("import", "-c", str(airgapped), str(bundle), cwd=root)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        proc = MirrorProcess(yaml.safe_load(airgapped.read_text()), workdir=root / "airgapped")
        proc.start()
        try:
            yield Sites(catalog, root, bundle, dead, proc, imported.stdout)
        finally:
            proc.stop()


def test_bundle_is_an_oci_layout_with_full_names(sites: Sites) -> None:
    names: dict[str, str] = {}
    blobs: dict[str, str] = {}
    with tarfile.open(sites.bundle) as tf:
        assert json.load(tf.extractfile("oci-layout"))["imageLayoutVersion"] == "1.0.0"  # type: ignore[arg-type]
        index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
        for m in index["manifests"]:
            names[m["annotations"]["org.opencontainers.image.ref.name"]] = m["digest"]
            assert m["annotations"]["io.containerd.image.name"] == \
                m["annotations"]["org.opencontainers.image.ref.name"]
        for member in tf:
            if member.isfile() and member.name.startswith("blobs/sha256/"):
                h = hashlib.sha256()
                f = tf.extractfile(member)
                assert f is not None
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                blobs[member.name] = "sha256:" + h.hexdigest()
    assert names == {f"docker.io/{r}": sites.catalog[r].digest for r in IMAGES}
    assert all(name == "blobs/" + d.replace(":", "/") for name, d in blobs.items())
    want = {sites.catalog[r].digest for r in IMAGES}
    for r in IMAGES:
        img = sites.catalog[r]
        want |= {c.digest for c in img.children} | {b.digest for b in img.all_blobs()}
    assert set(blobs.values()) == want
    assert sum(1 for d in blobs.values()) == len(want)  # each blob once


def test_skopeo_reads_the_bundle(sites: Sites, tmp_path: Path) -> None:
    need("skopeo")
    multi = sites.catalog["library/multiarch:latest"]
    out = tmp_path / "multiarch"
    # skopeo looks the image up by the exact org.opencontainers.image.ref.name annotation:
    # everything after the first colon of oci-archive:PATH:NAME.
    r = subprocess.run(["skopeo", "--tmpdir", str(tmp_path), "copy", "--all", "--preserve-digests",
                        f"oci-archive:{sites.bundle}:docker.io/library/multiarch:latest",
                        f"oci:{out}:copied"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == multi.digest
    for blob in (out / "blobs" / "sha256").iterdir():
        assert sha256_file(blob) == f"sha256:{blob.name}"
    copied = {f"sha256:{p.name}" for p in (out / "blobs" / "sha256").iterdir()}
    assert {c.digest for c in multi.children} | {b.digest for b in multi.all_blobs()} <= copied

    # skopeo 1.9.3 (containers/image 5.23) matches ref.name only on OCI-typed index.json
    # entries, and library/big is a Docker v2 schema 2 image; a bundle of that one image is
    # read without a name. The dir: destination keeps the manifest bytes exactly.
    big = sites.catalog["library/big:latest"]
    single = tmp_path / "big.tar"
    r2 = mirror_cli("export", "-c", str(sites.root / "connected" / "mirror.yaml"), "-o",
                    str(single), "library/big:latest", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    out2 = tmp_path / "big"
    r = subprocess.run(["skopeo", "--tmpdir", str(tmp_path), "copy", f"oci-archive:{single}",
                        f"dir:{out2}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sha256_file(out2 / "manifest.json") == big.digest
    for b in big.blobs:
        assert sha256_file(out2 / b.digest.split(":")[1]) == b.digest


def test_import_reports_what_it_added(sites: Sites) -> None:
    out = sites.import_out
    for r in IMAGES:
        assert f"imported docker.io/{r} {sites.catalog[r].digest}" in out, out
    assert "import: 2 tags, 10 new blobs" in out, out


def skopeo_pull(mirror: MirrorProcess, ref: str, out: Path, *extra: str) -> None:
    r = subprocess.run(["skopeo", "--tmpdir", str(out.parent), "copy", *extra,
                        "--src-tls-verify=false", f"docker://{mirror.hostport}/{ref}",
                        f"dir:{out}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{r.stderr}\n--- mirror log:\n{mirror.log_text()[-3000:]}"


def test_offline_site_serves_both_images_to_skopeo(sites: Sites, tmp_path: Path) -> None:
    need("skopeo")
    multi, big = sites.catalog["library/multiarch:latest"], sites.catalog["library/big:latest"]
    skopeo_pull(sites.offline, "library/multiarch:latest", tmp_path / "m", "--all")
    assert sha256_file(tmp_path / "m" / "manifest.json") == multi.digest
    for child in multi.children:  # dir: keeps every platform's manifest, named by digest
        assert sha256_file(tmp_path / "m" / f"{child.digest.split(':')[1]}.manifest.json") == \
            child.digest
    for b in multi.all_blobs():
        assert sha256_file(tmp_path / "m" / b.digest.split(":")[1]) == b.digest
    skopeo_pull(sites.offline, "library/big:latest", tmp_path / "b")
    assert sha256_file(tmp_path / "b" / "manifest.json") == big.digest
    for b in big.blobs:
        assert sha256_file(tmp_path / "b" / b.digest.split(":")[1]) == b.digest
    # Offline: the mirror never built an upstream client, so it never asked anyone.
    with urllib.request.urlopen(f"{sites.offline.url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert "mirror_upstream_requests_total{" not in metrics


def test_offline_site_serves_both_images_to_containerd(sites: Sites, tmp_path: Path) -> None:
    need("containerd", "ctr", "unshare")
    reason = can_unshare_net()
    if reason is not None:  # never run a client that may fall back without its jail
        pytest.fail(f"cannot jail ctr: {reason}", pytrace=False)
    hosts = tmp_path / "certs.d" / "docker.io"
    hosts.mkdir(parents=True)
    # The fallback (`server`) is the dead port: no pull may end anywhere but at the mirror.
    hosts.joinpath("hosts.toml").write_text(
        f'server = "http://127.0.0.1:{sites.dead_port}"\n\n'
        f'[host."{sites.offline.url}"]\n  capabilities = ["pull", "resolve"]\n')
    daemon = Containerd(tmp_path / "containerd")
    daemon.start()
    jail = NetJail([sites.offline.port])
    try:
        for ref in IMAGES:
            image = f"docker.io/{ref}"
            cmd = jail.command(["ctr", "--address", str(daemon.socket), "-n", "airgap",
                                "images", "pull", "--hosts-dir", str(tmp_path / "certs.d"),
                                image])
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{sites.offline.log_text()[-2000:]}"
            listed = daemon.ctr("images", "ls", namespace="airgap").stdout
            row = next(ln.split() for ln in listed.splitlines() if ln.startswith(image + " "))
            assert row[2] == sites.catalog[ref].digest, listed
            check = daemon.ctr("images", "check", f"name=={image}", namespace="airgap").stdout
            assert "complete" in check, check
    finally:
        jail.close()
        daemon.stop()


def flip_byte_in_largest_blob(src: Path, dst: Path) -> str:
    """Copy the bundle with one bit flipped in the middle of its largest blob; its digest."""
    shutil.copyfile(src, dst)
    with tarfile.open(dst) as tf:
        member = max((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.size)
    with open(dst, "r+b") as f:
        pos = member.offset_data + member.size // 2
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x01]))
    return "sha256:" + member.name.rsplit("/", 1)[1]


def test_corrupt_bundle_is_refused_and_nothing_is_served(sites: Sites, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    broken = flip_byte_in_largest_blob(sites.bundle, bad)
    big = sites.catalog["library/big:latest"]
    assert broken == big.layers[0].digest
    cache = tmp_path / "cache"
    cfg = write_config(tmp_path / "mirror.yaml", offline_config(cache, sites.dead_port))
    r = mirror_cli("import", "-c", str(cfg), str(bad), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"blob {broken}" in r.stderr and "corrupt" in r.stderr, r.stderr
    assert "imported" not in r.stdout
    # Nothing committed, nothing left behind in tmp/, no tag record.
    assert not [p for p in (cache / "blobs").rglob("*") if p.is_file()]
    assert not list((cache / "tmp").iterdir())
    proc = MirrorProcess(yaml.safe_load(cfg.read_text()), workdir=tmp_path).start()
    try:
        config_blob = big.config
        assert config_blob is not None
        for path in ("/v2/library/big/manifests/latest",
                     "/v2/library/multiarch/manifests/latest",
                     f"/v2/library/big/manifests/{big.digest}",
                     f"/v2/library/big/blobs/{config_blob.digest}"):  # a blob that did verify
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(proc.url + path, timeout=10)
            assert e.value.code == 404, path
    finally:
        proc.stop()


def test_cut_bundle_is_refused(sites: Sites, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar"
    with open(sites.bundle, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(sites.bundle.stat().st_size // 2))
    cfg = write_config(tmp_path / "mirror.yaml",
                       offline_config(tmp_path / "cache", sites.dead_port))
    r = mirror_cli("import", "-c", str(cfg), str(cut), cwd=tmp_path)
    assert r.returncode == 1 and "import refused" in r.stderr, r.stderr
    for sub in ("blobs", "tmp"):
        assert not [p for p in (tmp_path / "cache" / sub).rglob("*") if p.is_file()], sub


def test_import_accepts_a_skopeo_layout_directory(sites: Sites, tmp_path: Path) -> None:
    need("skopeo")
    app = sites.catalog["org/team/app:1.0"]
    layout = tmp_path / "layout"
    # The usual way other tools name an image in a layout: only the tag.
    r = subprocess.run(["skopeo", "--tmpdir", str(tmp_path), "copy", "--preserve-digests",
                        "--src-tls-verify=false",
                        f"docker://{sites.catalog.registry_url.removeprefix('http://')}"
                        "/org/team/app:1.0", f"oci:{layout}:1.0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cfg = write_config(tmp_path / "mirror.yaml",
                       offline_config(tmp_path / "cache", sites.dead_port))
    r = mirror_cli("import", "-c", str(cfg), str(layout), cwd=tmp_path)
    assert r.returncode == 1 and "--repo" in r.stderr, r.stderr
    r = mirror_cli("import", "-c", str(cfg), "--repo", "docker.io/org/team/app", str(layout),
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"imported docker.io/org/team/app:1.0 {app.digest}" in r.stdout, r.stdout
    proc = MirrorProcess(yaml.safe_load(cfg.read_text()), workdir=tmp_path).start()
    try:
        req = urllib.request.Request(f"{proc.url}/v2/org/team/app/manifests/1.0",
                                     headers={"Accept": app.media_type})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Docker-Content-Digest"] == app.digest
            assert hashlib.sha256(resp.read()).hexdigest() == app.digest.split(":")[1]
        for b in app.blobs:
            with urllib.request.urlopen(f"{proc.url}/v2/org/team/app/blobs/{b.digest}",
                                        timeout=10) as resp:
                assert "sha256:" + hashlib.sha256(resp.read()).hexdigest() == b.digest
    finally:
        proc.stop()


def test_offline_serves_imported_tags_of_any_age(sites: Sites, tmp_path: Path) -> None:
    """A bundle whose tags were confirmed long ago: offline serves them anyway. The same cache
    online, with its upstream unreachable and tags past cache.max_stale, does not."""
    old = tmp_path / "old.tar"
    with tarfile.open(sites.bundle) as src, tarfile.open(old, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "index.json":
                assert data is not None
                index = json.load(data)
                for m in index["manifests"]:
                    m["annotations"]["io.github.mirror.tag.checked-at"] = "2001-01-01T00:00:00Z"
                body = json.dumps(index).encode()
                member.size = len(body)
                dst.addfile(member, io.BytesIO(body))
            else:
                dst.addfile(member, data)
    cfg = offline_config(tmp_path / "cache", sites.dead_port)
    cfg["cache"].update({"tag_ttl": "1s", "max_stale": "1s"})
    path = write_config(tmp_path / "mirror.yaml", cfg)
    r = mirror_cli("import", "-c", str(path), str(old), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    want = sites.catalog["library/multiarch:latest"].digest
    accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
    with MirrorProcess(cfg, workdir=tmp_path) as proc:
        req = urllib.request.Request(f"{proc.url}/v2/library/multiarch/manifests/latest",
                                     headers=accept)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Docker-Content-Digest"] == want
    with MirrorProcess({**cfg, "offline": False}, workdir=tmp_path) as proc:
        req = urllib.request.Request(f"{proc.url}/v2/library/multiarch/manifests/latest",
                                     headers=accept)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code >= 500  # expired and unconfirmable: online it is not served
