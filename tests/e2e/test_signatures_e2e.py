"""Signature rules with a real client (skopeo) through a `mirror serve` process, and a policy
change picked up on SIGHUP (issue #20). Signatures come from tests/support/cosign.py."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import Catalog, ImagePusher, PushedImage, RecordingProxy, fetch
from tests.support.cosign import CosignKey, push_signature
from tests.support.images import synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.verify import verify_dir_copy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Setup:
    mirror: MirrorProcess
    tap: RecordingProxy
    good: CosignKey
    other: CosignKey
    signed: PushedImage
    unsigned: PushedImage
    other_signed: PushedImage  # signed by `other`, which the rule does not trust at first


@pytest.fixture
def setup(catalog: Catalog, registry_tap: RecordingProxy, tmp_path: Path) -> Iterator[Setup]:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (make system-deps)", pytrace=False)
    good, other = CosignKey.generate(tmp_path, "good"), CosignKey.generate(tmp_path, "other")
    p = ImagePusher(catalog.registry_url)
    suffix = tmp_path.name[-12:].lower().replace("_", "-")

    def image(name: str) -> PushedImage:
        repo = f"sige2e/{name}-{suffix}"
        return p.push_image(repo, "1.0", [synthetic_layer(repo.replace("/", "-"), 32)], oci=True)

    signed, unsigned, other_signed = image("signed"), image("unsigned"), image("other")
    push_signature(catalog.registry_url, signed.repo, signed.digest, good)
    push_signature(catalog.registry_url, other_signed.repo, other_signed.digest, other)
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        signatures=[{"name": "sige2e", "repositories": ["sige2e/**"],
                                     "keys": [str(good.pub_path)]}])
    with MirrorProcess(cfg, workdir=tmp_path) as proc:
        yield Setup(proc, registry_tap, good, other, signed, unsigned, other_signed)


def skopeo_copy(mirror: MirrorProcess, ref: str, out: Path) -> subprocess.CompletedProcess[str]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["skopeo", "--tmpdir", str(out.parent), "copy", "--src-tls-verify=false",
           f"docker://{mirror.hostport}/{ref}", f"dir:{out}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_skopeo_pulls_signed_and_is_refused_unsigned(setup: Setup, tmp_path: Path) -> None:
    r = skopeo_copy(setup.mirror, setup.signed.ref, tmp_path / "signed")
    assert r.returncode == 0, f"{r.stderr}\n{setup.mirror.log_text()}"
    verify_dir_copy(tmp_path / "signed", setup.signed)

    r = skopeo_copy(setup.mirror, setup.unsigned.ref, tmp_path / "unsigned")
    assert r.returncode != 0
    assert "denied" in r.stderr.lower() and "sige2e" in r.stderr and "no signature" in r.stderr, \
        r.stderr
    setup.tap.wait_idle()
    blobs = {b.digest for b in setup.unsigned.blobs}
    asked = [x.path for x in setup.tap.filter(kind="blob") if x.path.rsplit("/", 1)[1] in blobs]
    assert asked == [], setup.tap.describe()


def test_sighup_applies_a_new_key(setup: Setup, tmp_path: Path) -> None:
    r = skopeo_copy(setup.mirror, setup.other_signed.ref, tmp_path / "before")
    assert r.returncode != 0 and "no valid signature for the configured keys" in r.stderr, r.stderr

    cfg = yaml.safe_load(setup.mirror.config_path.read_text())
    cfg["signatures"][0]["keys"] = [str(setup.other.pub_path)]
    setup.mirror.config_path.write_text(yaml.safe_dump(cfg))
    assert setup.mirror.proc is not None
    setup.mirror.proc.send_signal(signal.SIGHUP)
    url = f"{setup.mirror.url}/v2/{setup.other_signed.repo}/manifests/1.0"
    accept = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}
    wait_for("the reloaded key to admit the image", lambda: fetch(url, headers=accept).status == 200)
    r = skopeo_copy(setup.mirror, setup.other_signed.ref, tmp_path / "after")
    assert r.returncode == 0, r.stderr
    verify_dir_copy(tmp_path / "after", setup.other_signed)
    # ... and the image the old key signed is now refused.
    assert fetch(f"{setup.mirror.url}/v2/{setup.signed.repo}/manifests/1.0",
                 headers=accept).status == 403


def test_sighup_brings_the_first_rule(setup: Setup, registry_tap: RecordingProxy,
                                      tmp_path: Path) -> None:
    """A mirror started without `signatures` takes its first rule on SIGHUP."""
    work = tmp_path / "norules"
    cfg = mirror_config({"docker.io": registry_tap.url}, work / "cache")
    accept = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}
    with MirrorProcess(cfg, workdir=work) as proc:
        url = f"{proc.url}/v2/{setup.unsigned.repo}/manifests/1.0"
        assert fetch(url, headers=accept).status == 200
        cfg["signatures"] = [{"repositories": ["sige2e/**"], "keys": [str(setup.good.pub_path)]}]
        cfg["listen"] = f"127.0.0.1:{proc.port}"
        proc.config_path.write_text(yaml.safe_dump(cfg))
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        wait_for("the first rule to refuse the unsigned image",
                 lambda: fetch(url, headers=accept).status == 403)
        assert fetch(f"{proc.url}/v2/{setup.signed.repo}/manifests/1.0",
                     headers=accept).status == 200
