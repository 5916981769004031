"""An air-gapped site fed week after week (issue 19), with the real command line, the real
registry and skopeo.

Week 1: the connected site seeds library/multiarch:latest and library/big:latest (a
MIRROR_TEST_BIG_MB MiB layer) and exports a full bundle; site A imports it. Site A writes its
inventory (from its cache directory, and the same from a running mirror's /inventory.json).
Week 2: weekly/app:2 appears upstream, built on big's layer plus a new 3 MiB layer. The
connected site exports all three images with `--have` site A's inventory and `--split 1MiB`:
the parts carry the new content only (sizes asserted), site A imports them and serves all three
images offline, every manifest and blob checked by skopeo against the registry's digests. The
same parts are refused at a site without week 1 (the missing digests named, nothing new
visible); a damaged part and a missing part are named; an interrupted export and an interrupted
import (a file size limit makes the write fail half way, as a full disk would) resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import re
import resource
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

import bcrypt
import pytest
import yaml

from tests.support import Catalog, ImagePusher, PushedImage, big_layer
from tests.support.clientrun import dead_loopback_port
from tests.support.mirror_proc import MirrorProcess
from tests.support.terminal import read_terminal
from tests.support.verify import sha256_file, verify_dir_copy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WEEK1 = ("library/multiarch:latest", "library/big:latest")
NEW = "weekly/app:2"
WEEK2 = (*WEEK1, NEW)
NEW_LAYER_MB = 3
SPLIT = 1 << 20
HEADER = 512
MiB = 1 << 20


def mirror_cli(*args: str, cwd: Path, fsize_limit: int | None = None, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # a full disk, exactly at this size: the write fails with EFBIG
        assert fsize_limit is not None
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run([sys.executable, "-m", "mirror", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          preexec_fn=limit if fsize_limit is not None else None)


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"{r.args}\n{r.stdout}\n{r.stderr}"
    return r


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def offline_site(root: Path, dead_port: int) -> Path:
    return write_config(root / "mirror.yaml", {
        "listen": "127.0.0.1:0", "offline": True,
        "upstreams": {"docker.io": {"url": f"http://127.0.0.1:{dead_port}"}},
        "cache": {"dir": str(root / "cache")}})


def digests_of(img: PushedImage) -> set[str]:
    """Every manifest and blob of an image, as a full export carries them."""
    return ({img.digest} | {c.digest for c in img.children} |
            {b.digest for b in img.all_blobs()})


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@dataclass
class Weekly:
    catalog: Catalog
    root: Path
    connected: Path
    week1: Path  # the full bundle of week 1
    site_a: Path  # config of the site fed both weeks
    inventory: dict[str, Any]
    inventory_url: dict[str, Any]  # the same, from the running mirror
    parts: list[Path]  # week 2, differential, split
    export2: str
    import2: str
    new: PushedImage
    dead_port: int

    def image(self, ref: str) -> PushedImage:
        return self.new if ref == NEW else self.catalog[ref]


@pytest.fixture(scope="module")
def weekly(catalog: Catalog, image_cache_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weekly]:
    root = tmp_path_factory.mktemp("weekly")
    # Week 2's image upstream: big's layer (shared, the far site has it) plus a new one.
    pusher = ImagePusher(catalog.registry_url)
    base = big_layer(catalog.big_mb, image_cache_dir)
    assert base.digest == catalog["library/big:latest"].layers[0].digest
    fresh = big_layer(NEW_LAYER_MB, image_cache_dir, seed="weekly-2")
    new = pusher.push_image("weekly/app", "2", [base, fresh], oci=True)

    connected = write_config(root / "connected" / "mirror.yaml", {
        "upstreams": {"docker.io": {"url": catalog.registry_url}},
        "cache": {"dir": str(root / "connected" / "cache")}})
    ok(mirror_cli("seed", "-c", str(connected), *WEEK1, cwd=root))
    week1 = root / "week1.tar"
    ok(mirror_cli("export", "-c", str(connected), "-o", str(week1), *WEEK1, cwd=root))
    with dead_loopback_port() as dead:
        site_a = offline_site(root / "site-a", dead)
        ok(mirror_cli("import", "-c", str(site_a), str(week1), cwd=root))
        inv = root / "site-a.inventory.json"
        ok(mirror_cli("inventory", "-c", str(site_a), "-o", str(inv), cwd=root))
        with MirrorProcess(yaml.safe_load(site_a.read_text()), workdir=root / "site-a") as proc:
            by_url = ok(mirror_cli("inventory", "-c", str(site_a), "--url", proc.url, cwd=root))

        ok(mirror_cli("seed", "-c", str(connected), NEW, cwd=root))
        bundle2 = root / "out" / "week2.tar"
        bundle2.parent.mkdir()
        export2 = ok(mirror_cli("export", "-c", str(connected), "-o", str(bundle2), "--have",
                                str(inv), "--split", "1MiB", *WEEK2, cwd=root))
        parts = sorted(bundle2.parent.glob("week2.tar.*"))
        # The first part is enough: import finds the others beside it.
        import2 = ok(mirror_cli("import", "-c", str(site_a), str(parts[0]), cwd=root))
        yield Weekly(catalog, root, connected, week1, site_a, json.loads(inv.read_text()),
                     json.loads(by_url.stdout), parts, export2.stdout, import2.stdout, new, dead)


def test_inventory_lists_what_the_site_holds(weekly: Weekly) -> None:
    inv = weekly.inventory
    assert inv["format"] == "mirror-inventory" and inv["mirror_version"]
    held = set(inv["manifests"]) | set(inv["blobs"])
    assert held == set().union(*(digests_of(weekly.catalog[r]) for r in WEEK1))
    multi = weekly.catalog["library/multiarch:latest"]
    assert multi.digest in inv["manifests"] and multi.children[0].digest in inv["manifests"]
    assert weekly.catalog["library/big:latest"].layers[0].digest in inv["blobs"]
    assert inv["tags"] == {f"docker.io/{r}": weekly.catalog[r].digest for r in WEEK1}
    for key in ("manifests", "blobs", "tags"):  # the running mirror says the same
        assert weekly.inventory_url[key] == inv[key], key


def read_parts(parts: list[Path]) -> tuple[list[dict[str, Any]], bytes]:
    headers, stream = [], b""
    for p in parts:
        data = p.read_bytes()
        headers.append(json.loads(data[:HEADER].split(b"\n", 1)[1]))
        stream += data[HEADER:]
    return headers, stream


def test_week2_parts_carry_only_the_new_content(weekly: Weekly) -> None:
    new_content = {weekly.new.digest: weekly.new.size} | {b.digest: b.size for b in weekly.new.blobs}
    big_layer_digest = weekly.catalog["library/big:latest"].layers[0].digest
    del new_content[big_layer_digest]  # shared with week 1
    new_bytes = sum(new_content.values())
    assert new_bytes > NEW_LAYER_MB * MiB

    assert [p.name for p in weekly.parts] == [f"week2.tar.{i:03d}" for i in range(len(weekly.parts))]
    assert all(p.stat().st_size <= SPLIT for p in weekly.parts)
    headers, stream = read_parts(weekly.parts)
    assert len(weekly.parts) == -(-len(stream) // (SPLIT - HEADER)) > 1  # as few as fit
    assert [h["part"] for h in headers] == list(range(len(weekly.parts)))
    assert {h["bundle"] for h in headers} == {headers[0]["bundle"]}
    for h, p in zip(headers, weekly.parts, strict=True):
        assert h["sha256"] == hashlib.sha256(p.read_bytes()[HEADER:]).hexdigest()
    # The total is the new content plus tar headers, index.json and the expectations.
    total = sum(p.stat().st_size for p in weekly.parts)
    assert new_bytes < total < new_bytes + 64 * 1024, (total, new_bytes)
    full = weekly.week1.stat().st_size
    assert full > weekly.catalog.big_mb * MiB > 10 * total  # what week 2 did not resend

    with tarfile.open(fileobj=io.BytesIO(stream)) as tf:
        names = tf.getnames()
        index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
        meta = json.load(tf.extractfile("mirror-bundle.json"))  # type: ignore[arg-type]
    sent = {"sha256:" + n.rsplit("/", 1)[1] for n in names if n.startswith("blobs/sha256/")}
    assert sent == set(new_content)
    named = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
             for m in index["manifests"]}
    assert named == {f"docker.io/{r}": weekly.image(r).digest for r in WEEK2}
    expected = set().union(*(digests_of(weekly.image(r)) for r in WEEK2)) - sent
    assert {e["digest"] for e in meta["expects"]} == expected
    assert big_layer_digest in expected

    left_out = len(expected)
    assert (f"export: 3 images, {len(sent)} blobs ({(new_bytes / MiB):.1f} MiB) to "
            f"{len(weekly.parts)} parts of at most 1.0 MiB") in weekly.export2, weekly.export2
    assert f"{left_out} blobs left out as already present" in weekly.export2, weekly.export2
    assert (f"import: 3 tags, {len(sent)} new blobs" in weekly.import2 and
            f"differential bundle: {left_out} blobs left out" in weekly.import2), weekly.import2


def skopeo_dir(mirror: MirrorProcess, ref: str, out: Path) -> None:
    r = subprocess.run(["skopeo", "--tmpdir", str(out.parent), "copy", "--all",
                        "--src-tls-verify=false", f"docker://{mirror.hostport}/{ref}",
                        f"dir:{out}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{r.stderr}\n--- mirror log:\n{mirror.log_text()[-3000:]}"


def test_site_a_serves_every_image_offline(weekly: Weekly, tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo not installed (make system-deps)", pytrace=False)
    with MirrorProcess(yaml.safe_load(weekly.site_a.read_text()), workdir=tmp_path) as proc:
        for i, ref in enumerate(WEEK2):
            out = tmp_path / f"image{i}"
            skopeo_dir(proc, ref, out)
            checked = verify_dir_copy(out, weekly.image(ref))
            assert set(checked) == digests_of(weekly.image(ref)), ref
        with urllib.request.urlopen(f"{proc.url}/metrics", timeout=10) as resp:
            assert "mirror_upstream_requests_total{" not in resp.read().decode()


def assert_nothing_new_visible(config: Path, cwd: Path, also_absent: tuple[str, ...] = ()) -> None:
    """No tag of week 2, no blob of it under blobs/, nothing served."""
    cfg = yaml.safe_load(config.read_text())
    cache = Path(cfg["cache"]["dir"])
    inv = json.loads(ok(mirror_cli("inventory", "-c", str(config), cwd=cwd)).stdout)
    assert f"docker.io/{NEW}" not in inv["tags"]
    for d in also_absent:
        assert d not in inv["manifests"] + inv["blobs"], d
        assert not (cache / "blobs" / "sha256" / d[7:9] / d[7:]).exists(), d
    with MirrorProcess(cfg, workdir=cwd) as proc:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{proc.url}/v2/weekly/app/manifests/2", timeout=10)
        assert e.value.code == 404


def test_refused_at_a_site_without_week1(weekly: Weekly, tmp_path: Path) -> None:
    site_b = offline_site(tmp_path / "site-b", weekly.dead_port)
    r = mirror_cli("import", "-c", str(site_b), str(weekly.parts[0]), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line_error(r)
    assert "differential bundle" in line and "nothing was imported" in line, line
    big = weekly.catalog["library/big:latest"]
    multi = weekly.catalog["library/multiarch:latest"]
    for d in (big.layers[0].digest, big.digest, multi.digest):
        assert d in line, (d, line)
    assert "imported" not in r.stdout
    new = weekly.new
    cache = tmp_path / "site-b" / "cache"
    assert not [p for p in (cache / "blobs").rglob("*") if p.is_file()]
    assert not [p for p in (cache / "import").rglob("*") if p.name != ".lock"]
    assert_nothing_new_visible(site_b, tmp_path, (new.digest, new.layers[1].digest))


def site_with_week1(weekly: Weekly, root: Path) -> Path:
    cfg = offline_site(root, weekly.dead_port)
    ok(mirror_cli("import", "-c", str(cfg), str(weekly.week1), cwd=root))
    return cfg


def test_a_damaged_part_is_named_then_the_import_resumes(weekly: Weekly, tmp_path: Path) -> None:
    site = site_with_week1(weekly, tmp_path / "site")
    copies = []
    for p in weekly.parts:
        copies.append(tmp_path / p.name)
        shutil.copyfile(p, copies[-1])
    with open(copies[1], "r+b") as f:  # one bit, in the middle of the new layer
        f.seek(HEADER + 1000)
        byte = f.read(1)
        f.seek(HEADER + 1000)
        f.write(bytes([byte[0] ^ 0x01]))
    r = mirror_cli("import", "-c", str(site), str(copies[0]), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line_error(r)
    assert "part week2.tar.001 is damaged" in line, line
    assert_nothing_new_visible(site, tmp_path, (weekly.new.digest, weekly.new.layers[1].digest))

    shutil.copyfile(weekly.parts[1], copies[1])  # copied again
    r = ok(mirror_cli("import", "-c", str(site), *map(str, copies), cwd=tmp_path))
    # The config came before the damage: verified then, taken as it was now.
    assert "import: resumed: 1 blobs verified by an interrupted import" in r.stdout, r.stdout
    assert f"imported docker.io/{NEW} {weekly.new.digest}" in r.stdout, r.stdout


def test_a_missing_part_is_named(weekly: Weekly, tmp_path: Path) -> None:
    site = site_with_week1(weekly, tmp_path / "site")
    for p in weekly.parts:
        if not p.name.endswith(".002"):
            shutil.copyfile(p, tmp_path / p.name)
    for given in ([tmp_path / "week2.tar.000"], [tmp_path / "week2.tar"],
                  [tmp_path / p.name for p in weekly.parts if not p.name.endswith(".002")]):
        r = mirror_cli("import", "-c", str(site), *map(str, given), cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        line = one_line_error(r)
        assert "part week2.tar.002 missing" in line, line
    assert_nothing_new_visible(site, tmp_path, (weekly.new.digest,))


def test_nothing_left_out_is_a_plain_oci_layout(weekly: Weekly, tmp_path: Path) -> None:
    """An inventory that lists none of the images' content: the bundle is the full one, byte for
    byte, without mirror-bundle.json, and skopeo reads it."""
    unrelated = tmp_path / "other-site.json"
    unrelated.write_text(json.dumps({"format": "mirror-inventory", "version": 1,
                                     "blobs": ["sha256:" + "0" * 64]}))
    out = tmp_path / "w1.tar"
    r = ok(mirror_cli("export", "-c", str(weekly.connected), "-o", str(out), "--have",
                      str(unrelated), *WEEK1, cwd=tmp_path))
    assert "0 blobs left out as already present (0 B)" in r.stdout, r.stdout
    assert sha256_file(out) == sha256_file(weekly.week1)
    with tarfile.open(out) as tf:
        assert "mirror-bundle.json" not in tf.getnames()
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo not installed (make system-deps)", pytrace=False)
    multi = weekly.catalog["library/multiarch:latest"]
    r = subprocess.run(["skopeo", "--tmpdir", str(tmp_path), "copy", "--all",
                        f"oci-archive:{out}:docker.io/library/multiarch:latest",
                        f"dir:{tmp_path / 'multi'}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert set(verify_dir_copy(tmp_path / "multi", multi)) == digests_of(multi)


def test_nothing_new_is_a_bundle_of_names_only(weekly: Weekly, tmp_path: Path) -> None:
    """Week 1 again, against site A's inventory: no blob travels, the tags are renewed."""
    out = tmp_path / "again.tar"
    r = ok(mirror_cli("export", "-c", str(weekly.connected), "-o", str(out), "--have",
                      str(weekly.root / "site-a.inventory.json"), *WEEK1, cwd=tmp_path))
    assert "export: 2 images, 0 blobs (0 B)" in r.stdout, r.stdout
    assert out.stat().st_size < 16 * 1024
    site = site_with_week1(weekly, tmp_path / "site")
    r = ok(mirror_cli("import", "-c", str(site), str(out), cwd=tmp_path))
    assert "import: 2 tags, 0 new blobs (0 B), 0 already cached" in r.stdout, r.stdout
    assert "differential bundle: 10 blobs left out" in r.stdout, r.stdout


def test_bad_input_is_one_line(weekly: Weekly, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for content in ("{not json", json.dumps({"format": "something-else"}),
                    json.dumps({"format": "mirror-inventory", "version": 1, "blobs": ["x"]})):
        bad.write_text(content)
        r = mirror_cli("export", "-c", str(weekly.connected), "-o", str(tmp_path / "b.tar"),
                       "--have", str(bad), *WEEK1, cwd=tmp_path)
        assert r.returncode == 2 and "--have" in one_line_error(r), r.stderr
    r = mirror_cli("export", "-c", str(weekly.connected), "-o", str(tmp_path / "b.tar"),
                   "--split", "lots", *WEEK1, cwd=tmp_path)
    assert r.returncode == 2 and "--split" in one_line_error(r), r.stderr
    assert not (tmp_path / "b.tar").exists()
    r = mirror_cli("import", "-c", str(weekly.site_a), str(tmp_path / "nothing.tar.000"),
                   cwd=tmp_path)
    assert r.returncode == 1 and "nothing.tar.000" in one_line_error(r), r.stderr


def resumed_at_mib(stdout: str) -> float:
    line = next(ln for ln in stdout.splitlines() if "resumed an interrupted export at" in ln)
    return float(line.split(" at ")[1].split(" MiB")[0])


def test_an_interrupted_export_resumes(weekly: Weekly, tmp_path: Path) -> None:
    out = tmp_path / "week1.tar"
    limit = 40 * MiB
    r = mirror_cli("export", "-c", str(weekly.connected), "-o", str(out), *WEEK1, cwd=tmp_path,
                   fsize_limit=limit)
    assert r.returncode == 1 and "File too large" in one_line_error(r), r.stderr
    assert not out.exists()  # only a whole bundle has the real name
    r = ok(mirror_cli("export", "-c", str(weekly.connected), "-o", str(out), *WEEK1,
                      cwd=tmp_path))
    assert 16 <= resumed_at_mib(r.stdout) <= limit / MiB  # fsynced progress, not from 0
    assert sha256_file(out) == sha256_file(weekly.week1)  # as if never interrupted
    assert not list(tmp_path.glob(".week1.tar*"))

    # In parts: stopped inside the first part, resumed inside it; the parts' slices join into
    # the very same stream.
    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    args = ("export", "-c", str(weekly.connected), "-o", str(parts_dir / "w1.tar"), "--split",
            "30MiB", *WEEK1)
    r = mirror_cli(*args, cwd=tmp_path, fsize_limit=20 * MiB)
    assert r.returncode == 1 and "File too large" in one_line_error(r), r.stderr
    assert not list(parts_dir.glob("w1.tar.*"))
    r = ok(mirror_cli(*args, cwd=tmp_path))
    assert 16 <= resumed_at_mib(r.stdout) <= 20
    parts = sorted(parts_dir.glob("w1.tar.*"))
    assert [p.name for p in parts] == ["w1.tar.000", "w1.tar.001", "w1.tar.002"]
    headers, stream = read_parts(parts)
    assert stream == weekly.week1.read_bytes()
    for h, p in zip(headers, parts, strict=True):
        assert h["sha256"] == hashlib.sha256(p.read_bytes()[HEADER:]).hexdigest()
    assert not list(parts_dir.glob(".*"))


def test_an_interrupted_import_resumes(weekly: Weekly, tmp_path: Path) -> None:
    site = offline_site(tmp_path / "site", weekly.dead_port)
    r = mirror_cli("import", "-c", str(site), str(weekly.week1), cwd=tmp_path,
                   fsize_limit=16 * MiB)  # the big layer cannot be staged
    assert r.returncode == 1 and "File too large" in one_line_error(r), r.stderr
    cache = tmp_path / "site" / "cache"
    assert not [p for p in (cache / "blobs").rglob("*") if p.is_file()]
    inv = json.loads(ok(mirror_cli("inventory", "-c", str(site), cwd=tmp_path)).stdout)
    assert inv["tags"] == {} and inv["blobs"] == inv["manifests"] == []  # nothing visible
    staged = list((cache / "import" / "sha256").iterdir())
    with tarfile.open(weekly.week1) as tf:
        order = [m.name.rsplit("/", 1)[1] for m in tf if m.name.startswith("blobs/sha256/")]
    big_layer_hex = weekly.catalog["library/big:latest"].layers[0].digest[7:]
    before_big = order[:order.index(big_layer_hex)]
    assert sorted(p.name for p in staged) == sorted(before_big)
    r = ok(mirror_cli("import", "-c", str(site), str(weekly.week1), cwd=tmp_path))
    assert f"import: resumed: {len(before_big)} blobs verified" in r.stdout, r.stdout
    for ref in WEEK1:
        assert f"imported docker.io/{ref} {weekly.catalog[ref].digest}" in r.stdout
    assert not [p for p in (cache / "import").rglob("*") if p.name != ".lock"]
    inv = json.loads(ok(mirror_cli("inventory", "-c", str(site), cwd=tmp_path)).stdout)
    assert set(inv["manifests"]) | set(inv["blobs"]) == set().union(
        *(digests_of(weekly.catalog[r]) for r in WEEK1))


def test_inventory_url_is_protected_like_the_status_page(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    cfg = yaml.safe_load(offline_site(tmp_path, 9).read_text())
    cfg["auth"] = {"htpasswd": str(htpasswd)}
    config = write_config(tmp_path / "auth.yaml", cfg)
    with MirrorProcess(cfg, workdir=tmp_path / "proc") as proc:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{proc.url}/inventory.json", timeout=10)
        assert e.value.code == 401
        r = mirror_cli("inventory", "-c", str(config), "--url", proc.url, cwd=tmp_path)
        assert r.returncode == 1 and "401" in one_line_error(r) and "--user" in r.stderr
        r = mirror_cli("inventory", "-c", str(config), "--url", proc.url, "--user", "alice",
                       cwd=tmp_path, env={"MIRROR_PASSWORD": "wrong"})
        assert r.returncode == 1 and "401" in one_line_error(r)
        r = ok(mirror_cli("inventory", "-c", str(config), "--url", proc.url, "--user", "alice",
                          cwd=tmp_path, env={"MIRROR_PASSWORD": "pw"}))
        doc = json.loads(r.stdout)
        assert doc["format"] == "mirror-inventory" and doc["blobs"] == doc["manifests"] == []


def on_terminal(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (where the progress bar is drawn); exit code, what
    the terminal showed, stdout."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mirror", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    screen = read_terminal(master)
    assert proc.stdout is not None
    out = proc.stdout.read()
    return proc.wait(60), screen.decode(errors="replace"), out


def test_progress_on_a_terminal_and_a_summary(weekly: Weekly, tmp_path: Path) -> None:
    bar = re.compile(r"\[[#.]+\] +[0-9]+% [0-9.]+ (B|KiB|MiB) / 65\.[0-9] MiB")
    code, screen, out = on_terminal("export", "-c", str(weekly.connected), "-o",
                                    str(tmp_path / "w1.tar"), "--split", "16MiB", *WEEK1,
                                    cwd=tmp_path)
    assert code == 0, screen
    assert bar.search(screen) and screen.endswith("\r\x1b[2K"), screen[-300:]
    assert "export: 2 images, 10 blobs (65.1 MiB) to 5 parts of at most 16.0 MiB" in out, out
    site = offline_site(tmp_path / "site", weekly.dead_port)
    code, screen, out = on_terminal("import", "-c", str(site), str(tmp_path / "w1.tar.000"),
                                    cwd=tmp_path)
    assert code == 0, screen
    assert bar.search(screen), screen[-300:]
    assert "import: 2 tags, 10 new blobs (65.1 MiB), 0 already cached; all verified" in out, out
