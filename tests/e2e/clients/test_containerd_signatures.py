"""containerd 1.6 (ctr) through a mirror with a signature rule (issue #20): the signed image
pulls and is complete, the unsigned one is refused (403 DENIED from the mirror in ctr's log)
and none of its blobs is requested upstream. Same set-up as test_containerd.py: a private
containerd, generated hosts.toml, the pull in a network jail with only the mirror reachable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Catalog, ImagePusher, PushedImage, fetch
from tests.support.clientrun import e2e_mirror, need_tools
from tests.support.cosign import CosignKey, push_signature
from tests.support.ctr import Ctr
from tests.support.daemons import Containerd
from tests.support.images import synthetic_layer
from tests.support.netjail import NetJail

pytestmark = pytest.mark.e2e


@dataclass
class SignedCtr(Ctr):
    signed: PushedImage
    unsigned: PushedImage


@pytest.fixture(scope="module")
def sctr(catalog: Catalog, dead_port: int, netns_ok: None,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedCtr]:
    need_tools("containerd", "ctr", "runc")
    key = CosignKey.generate(tmp_path_factory.mktemp("keys"))
    p = ImagePusher(catalog.registry_url)
    signed = p.push_image("sigctr/signed", "1.0", [synthetic_layer("sigctr-signed", 32)], oci=True)
    unsigned = p.push_image("sigctr/unsigned", "1.0", [synthetic_layer("sigctr-unsigned", 32)],
                            oci=True)
    push_signature(catalog.registry_url, signed.repo, signed.digest, key)
    rules = [{"name": "sigctr", "repositories": ["sigctr/**"], "keys": [str(key.pub_path)]}]
    daemon = Containerd(tmp_path_factory.mktemp("containerd"))
    daemon.start()
    try:
        with e2e_mirror(catalog, dead_port, tmp_path_factory.mktemp("mirror"),
                        extra={"signatures": rules}) as mirror:
            conf = daemon.root / "clients"
            mirror.client_config(conf)
            jail = NetJail([mirror.tap.port])
            try:
                yield SignedCtr(mirror, daemon, conf / "certs.d", jail, signed, unsigned)
            finally:
                jail.close()
    finally:
        daemon.stop()


def test_ctr_pulls_signed_and_is_refused_unsigned(sctr: SignedCtr, tmp_path: Path) -> None:
    image = f"docker.io/{sctr.signed.ref}"
    sctr.pull("signed", image, tmp_path / "signed.log")
    check = sctr.daemon.ctr("images", "check", f"name=={image}", namespace="signed").stdout
    assert "complete" in check and sctr.signed.digest in sctr.daemon.ctr(
        "images", "ls", namespace="signed").stdout

    sctr.mirror.upstream_tap.clear()
    log = tmp_path / "unsigned.log"
    assert sctr.pull_status("unsigned", f"docker.io/{sctr.unsigned.ref}", log) != 0
    text = log.read_text()
    # ctr resolves with HEAD (no body): it reports the mirror's status, then falls back to the
    # dead `server` of hosts.toml, which refuses the connection.
    assert f"pulling from host {sctr.mirror.hostport} failed" in text and "403 Forbidden" in text, \
        text[-3000:]
    r = fetch(f"{sctr.mirror.url}/v2/{sctr.unsigned.repo}/manifests/1.0?ns=docker.io")
    error = json.loads(r.body)["errors"][0]
    assert r.status == 403 and error["code"] == "DENIED" and "sigctr" in error["message"]
    sctr.mirror.upstream_tap.wait_idle(30)
    blobs = {b.digest for b in sctr.unsigned.blobs}
    asked = [r.path for r in sctr.mirror.upstream_tap.filter(kind="blob")
             if r.path.rsplit("/", 1)[1] in blobs]
    assert asked == [], sctr.mirror.upstream_tap.describe()
    assert sctr.daemon.ctr("images", "ls", namespace="unsigned").stdout.count("\n") <= 1
