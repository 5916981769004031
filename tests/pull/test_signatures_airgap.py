"""Signatures travel with `seed`/`export --with-referrers`, and `import` applies the importing
site's signature rules (issue #20): a connected site with no rules seeds and exports a signed
and an unsigned image; an offline site with a rule imports the bundle, reports a verdict for
each, serves the signed image and refuses the unsigned one, with nothing to ask upstream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support import Catalog, ImagePusher, RecordingProxy, fetch
from tests.support.cosign import CosignKey, push_signature
from tests.support.images import synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES
from tests.support.mirror_proc import MirrorProcess, mirror_config

ACCEPT = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def write(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_signatures_travel_and_the_importing_site_decides(catalog: Catalog,
                                                          registry_tap: RecordingProxy,
                                                          tmp_path: Path) -> None:
    key = CosignKey.generate(tmp_path, "site")
    p = ImagePusher(catalog.registry_url)
    signed = p.push_image("sigair/signed", "1.0", [synthetic_layer("sigair-signed", 16)], oci=True)
    unsigned = p.push_image("sigair/unsigned", "1.0", [synthetic_layer("sigair-unsigned", 16)],
                            oci=True)
    push_signature(catalog.registry_url, signed.repo, signed.digest, key)
    refs = [signed.ref, unsigned.ref]

    connected = write(tmp_path / "connected.yaml",
                      mirror_config({"docker.io": registry_tap.url}, tmp_path / "connected"))
    r = cli("seed", "-c", str(connected), "--with-referrers", *refs, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    bundle = tmp_path / "site.tar"
    r = cli("export", "-c", str(connected), "-o", str(bundle), "--with-referrers", *refs,
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    rule = {"name": "site-keys", "repositories": ["sigair/**"], "keys": [str(key.pub_path)]}
    offline = mirror_config({"docker.io": "http://127.0.0.1:9"}, tmp_path / "offline",
                            offline=True, signatures=[rule])
    r = cli("import", "-c", str(write(tmp_path / "offline.yaml", offline)), str(bundle),
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"signatures: docker.io/{signed.ref}: site-keys: verified" in r.stdout, r.stdout
    assert (f"signatures: docker.io/{unsigned.ref}: site-keys: refused, will not be served: "
            f"no signature") in r.stdout, r.stdout

    registry_tap.clear()
    with MirrorProcess(offline, workdir=tmp_path / "serve") as mirror:
        ok = fetch(f"{mirror.url}/v2/{signed.repo}/manifests/1.0", headers=ACCEPT)
        assert ok.status == 200 and ok.body == signed.manifest
        no = fetch(f"{mirror.url}/v2/{unsigned.repo}/manifests/1.0", headers=ACCEPT)
        assert no.status == 403, no.body
        assert json.loads(no.body)["errors"][0]["code"] == "DENIED"
    assert registry_tap.requests == []
