"""Who may pull what, over TLS, with nothing leaked: the mirror as users run it (`mirror serve`)
with real skopeo and curl, a throw-away CA, SIGHUP certificate reloads, mTLS and the listener's
limits. The last test greps every log, /metrics page and error body these tests produced for
the configured secrets."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Catalog, FakeRegistry, RecordingProxy, fetch
from tests.support.certs import Issued, TestCA, served_serial, write_htpasswd
from tests.support.images import synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.verify import verify_dir_copy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ALICE, ALICE_PW = "alice", "Alice-Client-Pw-5b2e91"
BOB, BOB_PW = "bob", "Bob-Client-Pw-c04d77"
UP_A_USER, UP_A_PW = "robot-a", "Upstream-A-Secret-8d1f33"
UP_B_USER, UP_B_PW = "robot-b", "Upstream-B-Secret-e6a902"
ACCEPT = ", ".join(ALL_MANIFEST_TYPES)
SMALL = ["library/alpine-ish:3.19", "org/team/app:1.0"]


def secret_forms() -> list[str]:
    """Every form in which a configured secret could show up in text."""
    forms = []
    for user, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW), (UP_A_USER, UP_A_PW), (UP_B_USER, UP_B_PW)):
        forms += [pw, f"{user}:{pw}", base64.b64encode(f"{user}:{pw}".encode()).decode()]
    return forms


class Evidence:
    """Everything the mirror wrote during this module: logs, /metrics, error bodies."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, name: str, text: str | bytes) -> None:
        self.texts[f"{len(self.texts)}:{name}"] = text.decode(errors="replace") if isinstance(
            text, bytes) else text

    def add_process(self, proc: MirrorProcess) -> None:
        self.add(f"log {proc.workdir}", proc.log_text())
        audit = proc.workdir / "audit.log"
        if audit.exists():
            self.add(f"audit {proc.workdir}", audit.read_text())


@pytest.fixture(scope="module")
def evidence() -> Evidence:
    return Evidence()


class TlsMirrorProcess(MirrorProcess):
    """MirrorProcess over https: the readiness poll trusts the test CA (and shows a client
    certificate when the mirror wants one)."""

    def __init__(self, config: dict[str, Any], workdir: Path, ca: TestCA,
                 client: Issued | None = None) -> None:
        super().__init__(config, workdir=workdir)
        self.ctx = self.ssl_context = ssl.create_default_context(cafile=str(ca.cert))
        if client is not None:
            self.ctx.load_cert_chain(client.cert, client.key)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (make system-deps)", pytrace=False)


def skopeo(tmp_path: Path, src: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    shutil.rmtree(out, ignore_errors=True)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    empty_conf = tmp_path / "registries.conf"
    empty_conf.write_text("")
    # A private HOME and auth file: the machine's own logins must play no part.
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(home),
           "REGISTRY_AUTH_FILE": str(home / "auth.json")}
    cmd = ["skopeo", "--registries-conf", str(empty_conf), "--tmpdir", str(tmp_path), "copy",
           "--all", *args, f"docker://{src}", f"dir:{out}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def cert_dir(tmp_path: Path, ca: TestCA, client: Issued | None = None) -> Path:
    """A containers/image certs.d-style directory: *.crt are CAs, *.cert/*.key a client pair."""
    d = tmp_path / "certs.d"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca.cert, d / "ca.crt")
    if client is not None:
        shutil.copy(client.cert, d / "client.cert")
        shutil.copy(client.key, d / "client.key")
    return d


# -- client auth with skopeo -------------------------------------------------------------------

def test_skopeo_pulls_only_with_good_credentials(registry_tap: RecordingProxy, catalog: Catalog,
                                                 tmp_path: Path, evidence: Evidence) -> None:
    need("skopeo")
    ht = write_htpasswd(tmp_path / "htpasswd", {ALICE: ALICE_PW, BOB: BOB_PW})
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        auth={"htpasswd": str(ht), "rules": [
                            {"deny": True, "users": [BOB], "repositories": ["org/**"]},
                            {"allow": True, "users": ["*"]}]},
                        log={"level": "debug", "audit": str(tmp_path / "audit.log")})
    with MirrorProcess(cfg, workdir=tmp_path) as proc:
        ref = "org/team/app:1.0"
        src = f"{proc.hostport}/{ref}"
        out = tmp_path / "out"
        r = skopeo(tmp_path, src, out, "--src-tls-verify=false")
        assert r.returncode != 0 and "unauthorized" in r.stderr, r.stderr
        r = skopeo(tmp_path, src, out, "--src-tls-verify=false", f"--src-creds={ALICE}:wrong")
        assert r.returncode != 0 and "unauthorized" in r.stderr, r.stderr
        assert registry_tap.requests == []

        r = skopeo(tmp_path, src, out, "--src-tls-verify=false", f"--src-creds={ALICE}:{ALICE_PW}")
        assert r.returncode == 0, f"{r.stderr}\n--- mirror log:\n{proc.log_text()}"
        verify_dir_copy(out, catalog[ref])
        assert registry_tap.requests
        assert all(rec.header("Authorization") is None for rec in registry_tap.requests)

        # bob may log in but not pull org/**: 403, and the upstream hears nothing of it
        registry_tap.clear()
        r = skopeo(tmp_path, src, out, "--src-tls-verify=false", f"--src-creds={BOB}:{BOB_PW}")
        assert r.returncode != 0 and "denied" in r.stderr.lower(), r.stderr
        assert registry_tap.requests == []
        reply = fetch(f"{proc.url}/v2/org/team/app/manifests/1.0",
                      headers={"Accept": ACCEPT, "Authorization": "Basic " + base64.b64encode(
                          f"{BOB}:{BOB_PW}".encode()).decode()})
        assert reply.status == 403 and b'"DENIED"' in reply.body
        evidence.add("403 body", reply.body + str(reply.headers).encode())
        reply = fetch(f"{proc.url}/metrics")
        evidence.add("401 metrics", reply.body + str(reply.headers).encode())
    audit = (tmp_path / "audit.log").read_text()
    assert f'"user":"{ALICE}"' in audit
    evidence.add_process(proc)


def test_skopeo_with_bearer_tokens_from_the_mirror(registry_tap: RecordingProxy, catalog: Catalog,
                                                   tmp_path: Path, evidence: Evidence) -> None:
    """auth.token: containers/image follows the Bearer challenge to the mirror's /auth/token
    with its credentials and pulls with the token it gets."""
    need("skopeo")
    ht = write_htpasswd(tmp_path / "htpasswd", {ALICE: ALICE_PW})
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        auth={"htpasswd": str(ht), "token": {"ttl": "1m"}}, log={"level": "debug"})
    with MirrorProcess(cfg, workdir=tmp_path) as proc:
        ref, out = "library/alpine-ish:3.19", tmp_path / "out"
        r = skopeo(tmp_path, f"{proc.hostport}/{ref}", out, "--src-tls-verify=false",
                   f"--src-creds={ALICE}:{BOB_PW}")
        assert r.returncode != 0 and registry_tap.requests == [], r.stderr
        r = skopeo(tmp_path, f"{proc.hostport}/{ref}", out, "--src-tls-verify=false",
                   f"--src-creds={ALICE}:{ALICE_PW}")
        assert r.returncode == 0, f"{r.stderr}\n--- mirror log:\n{proc.log_text()}"
        verify_dir_copy(out, catalog[ref])
        text = fetch(f"{proc.url}/metrics", headers=_basic(ALICE, ALICE_PW)).body.decode()
        assert 'mirror_client_auth_total{result="token_issued"}' in text
        evidence.add("metrics", text)
    evidence.add_process(proc)


def test_podman_pulls_with_credentials(registry_tap: RecordingProxy, catalog: Catalog,
                                       tmp_path: Path, evidence: Evidence) -> None:
    need("podman", "unshare")
    from tests.support.daemons import umount_under
    from tests.support.netjail import NetJail

    ht = write_htpasswd(tmp_path / "htpasswd", {ALICE: ALICE_PW})
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        auth={"htpasswd": str(ht)})
    (tmp_path / "registries.conf").write_text("")
    (tmp_path / "auth.json").write_text('{"auths": {}}')  # no machine-wide logins
    (tmp_path / "containers.conf").write_text(
        '[engine]\nevents_logger = "file"\n'
        f'events_logfile_path = "{tmp_path}/events.log"\ncgroup_manager = "cgroupfs"\n')
    short = Path(tempfile.mkdtemp(prefix="pa-", dir="/tmp"))  # podman wants a short runroot
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(tmp_path / "registries.conf"),
           "CONTAINERS_CONF": str(tmp_path / "containers.conf"), "HOME": str(tmp_path),
           "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    podman = ["podman", "--root", str(tmp_path / "root"), "--runroot", str(short / "run"),
              "--tmpdir", str(short / "tmp"), "--storage-driver", "vfs"]
    ref = "org/team/app:1.0"
    try:
        with MirrorProcess(cfg, workdir=tmp_path) as proc, NetJail([proc.port]) as jail:
            image = f"{proc.hostport}/{ref}"

            def pull(*creds: str) -> subprocess.CompletedProcess[str]:
                # Direct pull from the mirror's address, jailed all the same: loopback only.
                cmd = jail.command([*podman, "pull", "--tls-verify=false", *creds, image])
                return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)

            r = pull()
            assert r.returncode != 0 and "unauthorized" in r.stderr.lower(), r.stderr
            r = pull("--creds", f"{ALICE}:wrong")
            assert r.returncode != 0 and registry_tap.requests == [], r.stderr
            r = pull("--creds", f"{ALICE}:{ALICE_PW}")
            assert r.returncode == 0, f"{r.stderr}\n--- mirror log:\n{proc.log_text()}"
            r = subprocess.run([*podman, "image", "inspect", "--format", "{{.Digest}}", image],
                               capture_output=True, text=True, timeout=60, env=env)
            assert r.stdout.strip() == catalog[ref].digest, r.stderr
        evidence.add_process(proc)
    finally:
        umount_under(tmp_path)
        umount_under(short)
        shutil.rmtree(short, ignore_errors=True)


# -- TLS -----------------------------------------------------------------------------------------

def tls_config(registry_tap: RecordingProxy, tmp_path: Path, server: Issued,
               **extra: Any) -> dict[str, Any]:
    tls = {"cert": str(server.cert), "key": str(server.key), **extra.pop("tls", {})}
    return mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache", tls=tls,
                         log={"level": "debug"}, **extra)


def test_tls_pull_with_a_test_ca(registry_tap: RecordingProxy, catalog: Catalog, pki: TestCA,
                                 tmp_path: Path, evidence: Evidence) -> None:
    need("skopeo", "curl")
    server = pki.server()
    with TlsMirrorProcess(tls_config(registry_tap, tmp_path, server), tmp_path, pki) as proc:
        r = curl("--cacert", str(pki.cert), f"{proc.url}/v2/", "-D", "-")
        assert r.returncode == 0 and "docker-distribution-api-version: registry/2.0" in r.stdout.lower()
        r = curl(f"{proc.url}/v2/")  # the system trust store does not know our CA
        assert r.returncode == 60, r.stderr
        r = curl(f"http://{proc.hostport}/v2/")  # plain HTTP on the TLS port gets nowhere
        assert r.returncode != 0 or "400" in r.stdout
        certs = cert_dir(tmp_path, pki)
        for ref in SMALL:
            out = tmp_path / "out"
            r = skopeo(tmp_path, f"{proc.hostport}/{ref}", out, f"--src-cert-dir={certs}")
            assert r.returncode == 0, f"{r.stderr}\n--- mirror log:\n{proc.log_text()}"
            verify_dir_copy(out, catalog[ref])
        # skopeo with TLS verification and no CA refuses the mirror
        r = skopeo(tmp_path, f"{proc.hostport}/{SMALL[0]}", tmp_path / "out")
        assert r.returncode != 0 and "certificate" in r.stderr, r.stderr
    evidence.add_process(proc)


def test_sighup_serves_a_renewed_certificate(registry_tap: RecordingProxy, pki: TestCA,
                                             tmp_path: Path, evidence: Evidence) -> None:
    first = pki.server("first")
    live = Issued(tmp_path / "live.crt", tmp_path / "live.key", first.serial)
    shutil.copy(first.cert, live.cert)
    shutil.copy(first.key, live.key)
    with TlsMirrorProcess(tls_config(registry_tap, tmp_path, live), tmp_path, pki) as proc:
        assert served_serial("127.0.0.1", proc.port, pki.cert) == first.serial
        assert proc.proc is not None
        # A renewal: new key and cert, each replaced atomically, then SIGHUP.
        renewed = pki.server("renewed")
        for src, dst in ((renewed.key, live.key), (renewed.cert, live.cert)):
            shutil.copy(src, dst.with_suffix(".tmp"))
            os.replace(dst.with_suffix(".tmp"), dst)
        assert served_serial("127.0.0.1", proc.port, pki.cert) == first.serial  # not before HUP
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while served_serial("127.0.0.1", proc.port, pki.cert) != renewed.serial:
            assert time.monotonic() < deadline, proc.log_text()
            time.sleep(0.1)
        # A broken renewal (key of another cert) is refused; the served cert stays valid.
        shutil.copy(first.key, live.key)
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "not reloaded" not in proc.log_text():
            assert time.monotonic() < deadline, proc.log_text()
            time.sleep(0.1)
        assert proc.proc.poll() is None
        assert served_serial("127.0.0.1", proc.port, pki.cert) == renewed.serial
        r = curl("--cacert", str(pki.cert), f"{proc.url}/healthz")
        assert r.returncode == 0 and "ok" in r.stdout
    evidence.add_process(proc)


def test_mtls_rejects_a_client_without_a_certificate(registry_tap: RecordingProxy,
                                                      catalog: Catalog, pki: TestCA,
                                                      tmp_path: Path, evidence: Evidence) -> None:
    need("skopeo", "curl")
    server, client = pki.server(), pki.client()
    other_ca = TestCA(tmp_path / "other-pki", "some other CA")
    stranger = other_ca.client("stranger")
    cfg = tls_config(registry_tap, tmp_path, server, tls={"client_ca": str(pki.cert)})
    with TlsMirrorProcess(cfg, tmp_path, pki, client=client) as proc:
        r = curl("--cacert", str(pki.cert), f"{proc.url}/v2/")
        assert r.returncode != 0, r.stdout  # handshake refused: no HTTP status at all
        r = curl("--cacert", str(pki.cert), "--cert", str(stranger.cert), "--key",
                 str(stranger.key), f"{proc.url}/v2/")
        assert r.returncode != 0, r.stdout
        r = curl("--cacert", str(pki.cert), "--cert", str(client.cert), "--key", str(client.key),
                 f"{proc.url}/v2/", "-o", "/dev/null", "-w", "%{http_code}")
        assert r.returncode == 0 and r.stdout == "200"
        ref = SMALL[1]
        r = skopeo(tmp_path, f"{proc.hostport}/{ref}", tmp_path / "out",
                   f"--src-cert-dir={cert_dir(tmp_path / 'ca-only', pki)}")
        assert r.returncode != 0
        r = skopeo(tmp_path, f"{proc.hostport}/{ref}", tmp_path / "out",
                   f"--src-cert-dir={cert_dir(tmp_path, pki, client)}")
        assert r.returncode == 0, f"{r.stderr}\n--- mirror log:\n{proc.log_text()}"
        verify_dir_copy(tmp_path / "out", catalog[ref])
    evidence.add_process(proc)


# -- listener limits -----------------------------------------------------------------------------

def test_connection_limit_and_slow_clients(registry_tap: RecordingProxy, tmp_path: Path,
                                           evidence: Evidence) -> None:
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        limits={"max_connections": 3, "client_timeout": "2s"})
    with MirrorProcess(cfg, workdir=tmp_path) as proc:
        refused = 0  # connections the server answered 503, for the metric below
        held: list[tuple[list[socket.socket], bytes]] = []

        def hold_every_slot() -> bool:
            """Three idle connections, then a fourth: refused once the three hold every slot
            (the readiness poll's connection may still count for a moment: then try again)."""
            nonlocal refused
            idle = [socket.create_connection(("127.0.0.1", proc.port), timeout=30)
                    for _ in range(3)]
            with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as extra:
                answer = _read_all(extra)  # a 503 at once, or (a free slot) closed at timeout
            bounced = [s for s in idle if _peek(s).startswith(b"HTTP/1.1 503 ")]
            refused += len(bounced) + answer.startswith(b"HTTP/1.1 503 ")
            if answer.startswith(b"HTTP/1.1 503 ") and not bounced:
                held.append((idle, answer))
                return True
            for s in idle:
                s.close()
            return False

        wait_for("three connections to hold every slot", hold_every_slot, timeout=30)
        idle, answer = held[0]
        try:
            assert b'"UNAVAILABLE"' in answer and b"Retry-After: 1" in answer
            # Idle and half-sent requests are closed after client_timeout: slots free up.
            idle[0].sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            t0 = time.monotonic()
            for s in idle:
                assert _read_all(s) == b""  # closed by the server without an answer
            assert time.monotonic() - t0 < 25
        finally:
            for s in idle:
                s.close()
        r = fetch(f"{proc.url}/v2/")
        assert r.status == 200
        text = fetch(f"{proc.url}/metrics").body.decode()
        assert f"mirror_connections_rejected_total {refused}.0" in text, (refused, text)
        evidence.add("metrics", text)
    evidence.add_process(proc)


def _peek(s: socket.socket) -> bytes:
    """What the server sent on `s` so far, without waiting or consuming it."""
    try:
        return s.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def _read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


# -- nothing leaked ---------------------------------------------------------------------------

def _basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


@pytest.fixture
def upstreams(make_fake_registry: Any) -> Iterator[tuple[FakeRegistry, FakeRegistry, FakeRegistry]]:
    a = make_fake_registry(auth="basic", username=UP_A_USER, password=UP_A_PW, redirect_blobs=True)
    b = make_fake_registry(auth="bearer", username=UP_B_USER, password=UP_B_PW,
                           redirect_blobs=True)
    stranger = make_fake_registry()  # never configured: must never be contacted
    yield a, b, stranger


def test_zz_no_secret_in_logs_metrics_or_error_bodies(
        upstreams: tuple[FakeRegistry, FakeRegistry, FakeRegistry], tmp_path: Path,
        evidence: Evidence) -> None:
    """Runs last in the module: its own scenario, then every text the module collected."""
    a, b, stranger = upstreams
    img_a = a.add_image("team/app", "1.0", [synthetic_layer("leak-a", 4)])
    img_b = b.add_image("team/app", "1.0", [synthetic_layer("leak-b", 4)])
    ht = write_htpasswd(tmp_path / "htpasswd", {ALICE: ALICE_PW, BOB: BOB_PW})
    (tmp_path / "b-token").write_text(UP_B_PW + "\n")
    cfg = mirror_config({}, tmp_path / "cache", prefetch={"enabled": False},
                        log={"level": "debug", "audit": str(tmp_path / "audit.log")},
                        auth={"htpasswd": str(ht), "token": {"ttl": "1m"}, "rules": [
                            {"deny": True, "users": [BOB], "upstreams": ["b.example.com"]},
                            {"allow": True, "users": ["*"]}]},
                        limits={"max_header_size": "4KiB"})
    cfg["upstreams"] = {
        "a.example.com": {"url": a.url, "username": UP_A_USER, "password_env": "UP_A_TOKEN"},
        "b.example.com": {"url": b.url, "username": UP_B_USER, "password_file": str(tmp_path / "b-token")},
    }
    bodies: list[str] = []

    def get(path: str, headers: dict[str, str] | None = None) -> int | None:
        r = fetch(proc.url + path, headers={"Accept": ACCEPT, **(headers or {})})
        if r.status is None or r.status >= 400:
            bodies.append(f"{path} -> {r.status}\n{r.headers}\n{r.body.decode(errors='replace')}")
        return r.status

    # Proxy variables point at the stranger too: the mirror must not use them either.
    proxies = {k: stranger.url for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                                          "https_proxy")}
    with MirrorProcess(cfg, workdir=tmp_path, env={"UP_A_TOKEN": UP_A_PW, **proxies}) as proc:
        alice = _basic(ALICE, ALICE_PW)
        for name, img in (("a.example.com", img_a), ("b.example.com", img_b)):
            assert get(f"/v2/{name}/team/app/manifests/1.0", alice) == 200
            for blob in img.blobs:
                assert get(f"/v2/{name}/team/app/blobs/{blob.digest}", alice) == 200
        token_reply = fetch(f"{proc.url}/auth/token?service=mirror", headers=_basic(BOB, BOB_PW))
        assert token_reply.status == 200
        # every way a client can get it wrong
        assert get("/v2/a.example.com/team/app/manifests/1.0") == 401
        assert get("/v2/a.example.com/team/app/manifests/1.0", _basic(ALICE, BOB_PW)) == 401
        assert get("/v2/a.example.com/team/app/manifests/1.0", _basic(ALICE_PW, "x")) == 401
        assert get("/v2/a.example.com/team/app/manifests/1.0", _basic(BOB_PW, ALICE_PW)) == 401
        assert get("/v2/b.example.com/team/app/manifests/1.0", _basic(BOB, BOB_PW)) == 403
        assert get("/auth/token", _basic(BOB, ALICE_PW)) == 401
        assert get("/v2/", {"Authorization": "Bearer " + ALICE_PW}) == 401
        assert get("/v2/a.example.com/team/app/manifests/nope", alice) == 404
        assert get("/v2/a.example.com/team/app/blobs/sha256:" + "0" * 64, alice) == 404
        assert get("/v2/a.example.com/Bad/manifests/1.0", alice) in (400, 404)
        assert get("/v2/a.example.com/team/app/manifests/1.0",
                   {"Authorization": "Basic " + ALICE_PW * 200}) == 400  # head too large
        assert '"message": "request head too large"' in bodies[-1]
        assert get("/metrics") == 401 and get("/") == 401
        # names that are not configured upstreams are never contacted
        assert get(f"/v2/{stranger.url[7:]}/team/app/manifests/1.0", alice) == 404
        assert get(f"/v2/team/app/manifests/1.0?ns={stranger.url[7:]}", alice) == 404
        assert get("/v2/team/app/manifests/1.0?ns=ghcr.io", alice) == 404
        metrics = fetch(f"{proc.url}/metrics", headers=alice)
        status = fetch(f"{proc.url}/status.json", headers=alice)
        page = fetch(f"{proc.url}/", headers=alice)
        assert metrics.status == status.status == page.status == 200
    check = subprocess.run([sys.executable, "-m", "mirror", "check-config", "-c", str(proc.config_path)],
                           capture_output=True, text=True, env={**os.environ, "UP_A_TOKEN": UP_A_PW},
                           timeout=60)
    assert check.returncode == 0, check.stderr

    # Each upstream got its own credentials only, the CDNs none, and the stranger nothing.
    assert stranger.requests == []
    assert a.cdn_auth_leaks == [] and b.cdn_auth_leaks == []
    assert a.count(kind="cdn") == len(img_a.blobs) and b.count(kind="cdn") == len(img_b.blobs)
    a_auth = {r.header("Authorization") for r in a.requests} - {None}
    assert a_auth == {_basic(UP_A_USER, UP_A_PW)["Authorization"]}
    b_basic = {r.header("Authorization") for r in b.filter(kind="token")}
    assert b_basic == {_basic(UP_B_USER, UP_B_PW)["Authorization"]}
    assert all((r.header("Authorization") or "Bearer ").startswith("Bearer ")
               for r in b.requests if r.kind != "token")

    evidence.add_process(proc)
    evidence.add("check-config", check.stdout + check.stderr)
    evidence.add("metrics", metrics.body)
    evidence.add("status.json", status.body)
    evidence.add("status page", page.body)
    for i, body in enumerate(bodies):
        evidence.add(f"error body {i}", body)
    assert " DEBUG " in proc.log_text()  # the most verbose level really ran
    assert len(bodies) >= 14
    found = {(name, form) for name, text in evidence.texts.items() for form in secret_forms()
             if form in text}
    assert not found, sorted(found)
