"""`mirror seed` against the real registry, watched through a recording tap: platforms, resume
after a failure, tag globs and semver ranges, exit codes, seeding through a running mirror, and
warm rules that cost one HEAD per unchanged tag (issue 8)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support import Catalog, FakeRegistry, Fault, RecordingProxy, fetch, layer_bytes
from tests.support.images import MT_OCI_MANIFEST
from tests.support.mirror_proc import MirrorProcess
from tests.support.terminal import read_terminal


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def config(tmp_path: Path, upstream: str, **extra: Any) -> Path:
    cfg = {"upstreams": {"docker.io": {"url": upstream}}, "cache": {"dir": str(tmp_path / "cache")},
           **extra}
    path = tmp_path / "mirror.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fetched_digests(tap: RecordingProxy, kind: str) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in tap.filter("GET", kind=kind)]


def test_platforms_then_the_rest_then_nothing(catalog: Catalog, registry_tap: RecordingProxy,
                                              tmp_path: Path) -> None:
    img = catalog["library/multiarch:latest"]
    amd, arm = img.child("amd64"), img.child("arm64")
    cfg = config(tmp_path, registry_tap.url)
    r = cli("seed", "-c", str(cfg), "--platform", "linux/amd64", "library/multiarch", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 manifests" not in r.stdout and "1 platforms skipped" in r.stdout, r.stdout
    assert fetched_digests(registry_tap, "manifest") == ["latest", amd.digest]
    assert sorted(fetched_digests(registry_tap, "blob")) == sorted(b.digest for b in amd.blobs)

    registry_tap.clear()
    r = cli("seed", "-c", str(cfg), "library/multiarch:latest", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # Only what was missing: the arm64 manifest and its blobs (the tag is fresh, not re-asked).
    assert fetched_digests(registry_tap, "manifest") == [arm.digest]
    assert sorted(fetched_digests(registry_tap, "blob")) == sorted(
        b.digest for b in arm.blobs if b.digest not in {a.digest for a in amd.blobs})

    registry_tap.clear()
    r = cli("seed", "-c", str(cfg), "library/multiarch:latest", cwd=tmp_path)
    assert r.returncode == 0 and registry_tap.requests == [], registry_tap.describe()
    assert "0 blobs fetched (0 B), 4 already cached" in r.stdout, r.stdout


def test_a_failed_seed_resumes(catalog: Catalog, registry_tap: RecordingProxy,
                               tmp_path: Path) -> None:
    big = catalog["library/big:latest"]
    layer = big.layers[0].digest
    cfg = config(tmp_path, registry_tap.url)
    # Every GET of the big layer breaks after 1 MiB: the fetcher's resumes fail too.
    registry_tap.set_fault(Fault("reset", offset=1 << 20, match=layer, method="GET"))
    r = cli("seed", "-c", str(cfg), "library/big:latest", "library/alpine-ish:3.19", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "seed: 1 images ok, 1 failed" in r.stdout, r.stdout
    assert "failed: docker.io/library/big:latest" in r.stdout, r.stdout

    registry_tap.clear_fault()
    registry_tap.clear()
    r = cli("seed", "-c", str(cfg), "library/big:latest", "library/alpine-ish:3.19", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert fetched_digests(registry_tap, "blob") == [layer]  # the config was kept
    assert "seed: 2 images ok, 0 failed; 1 blobs fetched" in r.stdout, r.stdout


def test_tag_patterns_and_failures(catalog: Catalog, registry_tap: RecordingProxy,
                                   tmp_path: Path) -> None:
    cfg = config(tmp_path, registry_tap.url)
    listing = tmp_path / "images.txt"
    listing.write_text("# images for the ship\nlibrary/busybox:1.*\n\n"
                       "library/alpine-ish:>=3.19,<4\nlibrary/nosuch:1\nlibrary/big:v9.*\n")
    r = cli("seed", "-c", str(cfg), "-f", str(listing), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert f"ok   docker.io/library/busybox:1.36 {catalog['library/busybox:1.36'].digest}" in out
    # A range never picks a pre-release-looking tag (3.19-oci) unless it names one itself.
    assert f"ok   docker.io/library/alpine-ish:3.19 {catalog['library/alpine-ish:3.19'].digest}" \
        in out and "alpine-ish:3.19-oci" not in out, out
    assert "FAIL docker.io/library/nosuch:1" in out and "no tag matches 'v9.*'" in out, out
    assert "seed: 2 images ok, 2 failed" in out, out
    assert registry_tap.count("GET", "/busybox/manifests/latest") == 0  # the glob excluded it


def test_usage_errors(catalog: Catalog, tmp_path: Path) -> None:
    cfg = config(tmp_path, catalog.registry_url)
    r = cli("seed", "-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 2 and "no images given" in r.stderr
    r = cli("seed", "-c", str(cfg), "quay.io/x/y:1", "Busy:1", "--platform", "linux", cwd=tmp_path)
    assert r.returncode == 2
    assert "registry 'quay.io' is not configured" in r.stderr and "Busy:1" in r.stderr
    assert "--platform" in r.stderr
    offline = tmp_path / "offline.yaml"
    offline.write_text(yaml.safe_dump({"offline": True, "cache": {"dir": str(tmp_path / "c2")}}))
    r = cli("seed", "-c", str(offline), "busybox", cwd=tmp_path)
    assert r.returncode == 2 and "offline" in r.stderr
    r = cli("export", "-c", str(cfg), "-o", str(tmp_path / "b.tar"), "busybox", cwd=tmp_path)
    assert r.returncode == 1 and "no cache at" in r.stderr
    cli("seed", "-c", str(cfg), "library/alpine-ish:3.19", cwd=tmp_path)
    r = cli("export", "-c", str(cfg), "-o", str(tmp_path / "b.tar"), "library/alpine-ish:3.19",
            "library/busybox:latest", cwd=tmp_path)
    assert r.returncode == 1 and "library/busybox:latest: not in the cache" in r.stderr, r.stderr
    assert not (tmp_path / "b.tar").exists()  # nothing half-written


def test_seed_through_a_running_mirror(catalog: Catalog, registry_tap: RecordingProxy,
                                       tmp_path: Path) -> None:
    app, base = catalog["org/team/app:1.0"], catalog["library/alpine-ish:3.19"]
    cfg = yaml.safe_load(config(tmp_path, registry_tap.url).read_text())
    with MirrorProcess({**cfg, "listen": "127.0.0.1:0"}, workdir=tmp_path) as mirror:
        r = cli("seed", "--url", mirror.url, "org/team/app:1.0", "library/alpine-ish:3.19",
                cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr + mirror.log_text()
        blobs = fetched_digests(registry_tap, "blob")
        want = {b.digest for b in app.blobs} | {b.digest for b in base.blobs}
        assert sorted(blobs) == sorted(want)  # the shared base layer crossed once
        registry_tap.clear()
        r = cli("seed", "--url", mirror.url, "org/team/app:1.0", cwd=tmp_path)
        assert r.returncode == 0 and registry_tap.count(kind="blob") == 0, registry_tap.describe()
        # Patterns go through the mirror's tag list too.
        r = cli("seed", "--url", mirror.url, "library/busybox:1.*", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ok   docker.io/library/busybox:1.36" in r.stdout and ":latest" not in r.stdout


def test_warm_rules_cost_one_head_per_unchanged_tag(catalog: Catalog,
                                                     registry_tap: RecordingProxy,
                                                     tmp_path: Path) -> None:
    img = catalog["library/busybox:latest"]
    cfg = yaml.safe_load(config(tmp_path, registry_tap.url).read_text())
    cfg.update({"listen": "127.0.0.1:0", "warm": {"interval": "1s", "images": ["busybox"]}})
    cfg["cache"]["tag_ttl"] = "1s"  # every round finds the tag stale and revalidates it
    with MirrorProcess(cfg, workdir=tmp_path) as mirror:
        deadline = time.monotonic() + 60
        while registry_tap.count("HEAD", kind="manifest") < 2:
            assert time.monotonic() < deadline, registry_tap.describe() + mirror.log_text()
            time.sleep(0.2)
    registry_tap.wait_idle()
    requests = registry_tap.requests
    first_head = next(i for i, r in enumerate(requests) if r.method == "HEAD")
    # Round one fetched the list, both platforms and every blob; later rounds only HEAD.
    assert sorted(fetched_digests(registry_tap, "manifest")) == sorted(
        ["latest", *(c.digest for c in img.children)])
    assert sorted(fetched_digests(registry_tap, "blob")) == sorted(b.digest for b in img.all_blobs())
    assert all(r.method == "HEAD" and r.path.endswith("/manifests/latest")
               for r in requests[first_head:]), registry_tap.describe()


def test_referrers_travel_in_the_bundle(make_fake_registry: Callable[..., FakeRegistry],
                                        tmp_path: Path) -> None:
    """An SBOM found through the referrers API and a cosign signature found by its tag are
    seeded with --with-referrers, exported, imported and served offline."""
    fake = make_fake_registry(referrers=True)
    img = fake.add_image("org/signed", "1.0", [layer_bytes({"etc/signed": "yes\n"})], oci=True)
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": fake.add_blob(b"{}"),
             "size": 2}

    def artifact(kind: str, payload: bytes, subject: bool) -> bytes:
        doc: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "artifactType": kind,
            "config": empty,
            "layers": [{"mediaType": kind, "digest": fake.add_blob(payload), "size": len(payload)}]}
        if subject:
            doc["subject"] = {"mediaType": img.media_type, "digest": img.digest, "size": img.size}
        return json.dumps(doc).encode()

    sbom = fake.add_manifest("org/signed", None, artifact("application/spdx+json", b"{}\n", True),
                             MT_OCI_MANIFEST)
    sig_tag = f"sha256-{img.digest.split(':')[1]}.sig"
    sig = fake.add_manifest("org/signed", sig_tag,
                            artifact("application/vnd.dev.cosign.simplesigning.v1+json",
                                     b"signature", False), MT_OCI_MANIFEST)
    cfg = config(tmp_path, fake.url)
    r = cli("seed", "-c", str(cfg), "--with-referrers", "org/signed:1.0", cwd=tmp_path)
    assert r.returncode == 0 and "2 referrers" in r.stdout, r.stdout + r.stderr
    bundle = tmp_path / "signed.tar"
    r = cli("export", "-c", str(cfg), "--with-referrers", "-o", str(bundle), "org/signed:1.0",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"exported docker.io/org/signed:{sig_tag} {sig}" in r.stdout, r.stdout
    assert f"exported docker.io/org/signed@{sbom} {sbom}" in r.stdout, r.stdout

    site = tmp_path / "site"
    site.mkdir()
    offline = {"listen": "127.0.0.1:0", "offline": True, "cache": {"dir": str(site / "cache")},
               "upstreams": {"docker.io": {"url": "http://127.0.0.1:9"}}}
    (site / "mirror.yaml").write_text(yaml.safe_dump(offline))
    r = cli("import", "-c", str(site / "mirror.yaml"), str(bundle), cwd=site)
    assert r.returncode == 0, r.stderr
    with MirrorProcess(offline, workdir=site) as mirror:
        for ref, want in (("1.0", img.digest), (sig_tag, sig), (sbom, sbom)):
            reply = fetch(f"{mirror.url}/v2/org/signed/manifests/{ref}",
                          headers={"Accept": MT_OCI_MANIFEST})
            assert reply.status == 200 and reply.header("Docker-Content-Digest") == want, ref


def test_progress_bar_on_a_terminal(catalog: Catalog, tmp_path: Path) -> None:
    cfg = config(tmp_path, catalog.registry_url)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mirror", "seed", "-c", str(cfg),
                             "library/big:latest"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=slave, text=True)
    os.close(slave)
    screen = read_terminal(master)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    text = screen.decode()
    # A redrawn bar on the terminal ends at 100% of the layer, then the image line above it.
    assert "\r\x1b[2K[" in text and "] 100% " in text, text[-500:]
    assert "ok   docker.io/library/big:latest" in text
    assert out.startswith("seed: 1 images ok, 0 failed") and "\x1b" not in out, out
