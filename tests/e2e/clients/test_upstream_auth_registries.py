"""Upstream authentication against real registries (issue #16): CNCF distribution with
`auth: token` (tokens from tests/support/token_issuer.py: RS256 JWTs signed by a key whose
certificate chains to distribution's rootcertbundle) and with htpasswd Basic auth. The mirror
holds the credentials; skopeo and containerd pull through it without any, in network jails
that reach only the mirror. A wrong password is named in the error skopeo prints."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Catalog, ImagePusher, PushedImage, RegistryProcess, fetch
from tests.support.certs import write_htpasswd
from tests.support.clientrun import E2EMirror, e2e_mirror, need_tools
from tests.support.daemons import Containerd
from tests.support.images import synthetic_layer
from tests.support.netjail import NetJail
from tests.support.token_issuer import TokenIssuer
from tests.support.verify import verify_dir_copy

pytestmark = pytest.mark.e2e

USER, PASSWORD = "mirror-robot", "upstream-Pa55-for-the-mirror"
NAMES = {"token": "token.registry.test", "basic": "basic.registry.test"}
WRONG = "wrong.registry.test"  # the token registry again, with a wrong password
KINDS = list(NAMES)


@dataclass
class AuthRegistries:
    registries: dict[str, RegistryProcess]
    issuer: TokenIssuer
    images: dict[str, PushedImage]


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistries]:
    work = tmp_path_factory.mktemp("auth-registries")
    issuer = TokenIssuer(work / "issuer", {USER: PASSWORD})
    htpasswd = write_htpasswd(work / "htpasswd", {USER: PASSWORD})
    auth = {"token": issuer.registry_config(),
            "basic": ("auth:\n  htpasswd:\n    realm: mirror-test\n"
                      f"    path: {json.dumps(str(htpasswd))}\n")}
    registries: dict[str, RegistryProcess] = {}
    images: dict[str, PushedImage] = {}
    try:
        for kind in KINDS:
            root = work / kind
            # Pushed without auth (the test pusher speaks none), then served with it.
            with RegistryProcess(root=root) as plain:
                images[kind] = ImagePusher(plain.url, salt=f"auth-{kind}").push_image(
                    "team/app", "1.0", [synthetic_layer(f"auth-{kind}", 64)])
            registries[kind] = RegistryProcess(root=root, extra_config=auth[kind]).start()
        yield AuthRegistries(registries, issuer, images)
    finally:
        for reg in registries.values():
            reg.stop()
        issuer.stop()


@pytest.fixture(scope="module")
def mirror(upstreams: AuthRegistries, catalog: Catalog, dead_port: int, netns_ok: None,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EMirror]:
    work = tmp_path_factory.mktemp("auth-upstream-mirror")
    right, wrong = work / "upstream-password", work / "wrong-password"
    right.write_text(PASSWORD + "\n")
    wrong.write_text("not-the-password\n")
    for f in (right, wrong):
        f.chmod(0o600)
    more = {NAMES[k]: upstreams.registries[k].url for k in KINDS}
    more[WRONG] = upstreams.registries["token"].url
    creds = {name: {"username": USER, "password_file": str(right)} for name in NAMES.values()}
    creds[WRONG] = {"username": USER, "password_file": str(wrong)}
    with e2e_mirror(catalog, dead_port, work, more, {"prefetch": {"enabled": False}},
                    creds) as m:
        yield m


@pytest.mark.parametrize("kind", KINDS)
def test_the_registries_really_want_credentials(upstreams: AuthRegistries, kind: str) -> None:
    reg = upstreams.registries[kind]
    r = fetch(f"{reg.url}/v2/team/app/manifests/1.0")
    assert r.status == 401
    challenge = r.header("WWW-Authenticate") or ""
    assert challenge.startswith("Bearer " if kind == "token" else "Basic "), challenge


@pytest.mark.parametrize("kind", KINDS)
def test_skopeo_pulls_through_the_mirror(mirror: E2EMirror, upstreams: AuthRegistries,
                                         kind: str, tmp_path: Path) -> None:
    need_tools("skopeo")
    img, name = upstreams.images[kind], NAMES[kind]
    out, log = tmp_path / "out", tmp_path / "skopeo.log"
    jail = NetJail([mirror.tap.port])
    try:
        cmd = jail.command(["skopeo", "--tmpdir", str(tmp_path), "copy", "--src-tls-verify=false",
                            f"docker://{mirror.hostport}/{name}/team/app:1.0", f"dir:{out}"])
        with open(log, "w") as fh:
            r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=180)
    finally:
        jail.close()
    assert r.returncode == 0, f"{log.read_text()[-3000:]}\n--- mirror:\n{mirror.proc.log_text()[-3000:]}"
    verify_dir_copy(out, img)
    # The mirror authenticated upstream: Bearer tokens from the issuer, or Basic.
    tap = mirror.upstream_taps[name]
    sent = {(q.header("Authorization") or "").split(" ", 1)[0] for q in tap.requests
            if q.path != "/v2/" and q.status == 200}
    assert sent == {"Bearer" if kind == "token" else "Basic"}, tap.describe()
    if kind == "token":
        assert (USER, ["repository:team/app:pull"]) in upstreams.issuer.issued
    assert PASSWORD not in mirror.proc.log_text()


@pytest.mark.parametrize("kind", KINDS)
def test_containerd_pulls_through_the_mirror(mirror: E2EMirror, upstreams: AuthRegistries,
                                             kind: str, tmp_path: Path) -> None:
    need_tools("containerd", "ctr")
    img, name = upstreams.images[kind], NAMES[kind]
    daemon = Containerd(tmp_path / "containerd")
    daemon.start()
    jail = NetJail([mirror.tap.port])
    try:
        hosts = tmp_path / "clients"
        files = mirror.client_config(hosts)
        assert f"certs.d/{name}/hosts.toml" in files
        log = tmp_path / "ctr.log"
        cmd = jail.command(["ctr", "--debug", "--address", str(daemon.socket), "-n", "auth",
                            "images", "pull", "--hosts-dir", str(hosts / "certs.d"),
                            f"{name}/team/app:1.0"])
        with open(log, "w") as fh:
            r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=180)
        assert r.returncode == 0, f"{log.read_text()[-3000:]}\n--- mirror:\n{mirror.proc.log_text()[-3000:]}"
        listed = daemon.ctr("images", "ls", namespace="auth").stdout
        assert f"{name}/team/app:1.0" in listed and img.digest in listed, listed
        check = daemon.ctr("images", "check", f"name=={name}/team/app:1.0", namespace="auth").stdout
        assert "complete" in check, check
        assert "trying next host" not in log.read_text()
    finally:
        jail.close()
        daemon.stop()
        shutil.rmtree(tmp_path / "containerd", ignore_errors=True)


def test_a_wrong_password_is_named_in_the_clients_error(mirror: E2EMirror,
                                                        upstreams: AuthRegistries,
                                                        tmp_path: Path) -> None:
    need_tools("skopeo")
    refused = upstreams.issuer.refused
    r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                        f"docker://{mirror.hostport}/{WRONG}/team/app:1.0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"the mirror's credentials for upstream {WRONG}" in r.stderr, r.stderr
    assert upstreams.issuer.refused > refused  # the real issuer said no
    status = json.loads(fetch(f"{mirror.proc.url}/status.json").body)
    states = {u["name"]: u["state"] for u in status["upstreams"]}
    assert states[WRONG] == "auth-failed"
    assert states[NAMES["token"]] != "auth-failed"
