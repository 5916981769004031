"""Run CNCF distribution (`docker-registry`, Debian package) as a throw-away upstream registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType

from ._loop import free_port

DEFAULT_BINARY = "/usr/bin/docker-registry"


def find_binary() -> str | None:
    """Path of the distribution binary, or None when the package is not installed."""
    if Path(DEFAULT_BINARY).is_file():
        return DEFAULT_BINARY
    return shutil.which("docker-registry") or shutil.which("registry")


def _config_yaml(port: int, storage: Path, log_level: str, proxy_remote_url: str | None,
                 extra: str = "", tls: tuple[Path, Path] | None = None) -> str:
    q = json.dumps  # JSON strings are valid YAML scalars, so paths/URLs need no hand-escaping
    lines = [
        "version: 0.1",
        "log:",
        f"  level: {log_level}",
        "  formatter: text",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {q(str(storage))}",
        "  delete:",
        "    enabled: true",
        "  cache:",
        "    blobdescriptor: inmemory",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: {q(f'127.0.0.1:{port}')}",
        *(["  tls:", f"    certificate: {q(str(tls[0]))}", f"    key: {q(str(tls[1]))}"]
          if tls else []),
        "health:",
        "  storagedriver:",
        "    enabled: false",
    ]
    if proxy_remote_url:
        lines += ["proxy:", f"  remoteurl: {q(proxy_remote_url)}"]
    return "\n".join(lines) + "\n" + extra


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: never leave a registry behind, even if a test run is aborted."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class RegistryProcess:
    """`docker-registry serve` on a free 127.0.0.1 port with filesystem storage in a temp dir.

    Usage: `with RegistryProcess() as reg: ... reg.url ...` or `reg = RegistryProcess().start()`.
    `proxy_remote_url` runs distribution as a pull-through cache of that URL (push is then
    refused by distribution itself). `extra_config`: more top-level YAML, e.g. an `auth:`
    section (tests/support/token_issuer.py); a `root` of an earlier instance keeps its images.
    """

    def __init__(
        self,
        *,
        proxy_remote_url: str | None = None,
        root: Path | None = None,
        log_level: str = "info",
        binary: str | None = None,
        start_timeout: float = 30.0,
        extra_config: str = "",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.proxy_remote_url = proxy_remote_url
        self.tls = tls  # (certificate, key): serve https
        self.extra_config = extra_config
        self.log_level = log_level
        self.binary = binary or find_binary()
        self.start_timeout = start_timeout
        self._own_root = root is None
        # A temp root is only made by start(), so an instance that never ran leaves nothing.
        self._root = Path(root) if root is not None else None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("RegistryProcess has no directory before start()")
        return self._root

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a pushed blob's bytes."""
        algo, hexpart = digest.split(":", 1)
        return self.storage_dir / "docker/registry/v2/blobs" / algo / hexpart[:2] / hexpart / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> RegistryProcess:
        if self.binary is None:
            raise FileNotFoundError(
                "CNCF distribution is not installed (no /usr/bin/docker-registry): "
                "apt-get install docker-registry"
            )
        if self._own_root:
            self._root = Path(tempfile.mkdtemp(prefix="mirror-test-registry-"))
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        # distribution cannot report a port it picked itself, so pick one and retry if another
        # process grabbed it in between.
        for _attempt in range(5):
            self.port = free_port()
            self.config_path.write_text(
                _config_yaml(self.port, self.storage_dir, self.log_level, self.proxy_remote_url,
                             self.extra_config, self.tls)
            )
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            weakref.finalize(self, _kill, self._proc)
            if self._wait_ready():
                return self
            if "address already in use" not in self.log_text():
                break
        tail = "\n".join(self.log_text().splitlines()[-20:])
        self.stop()
        raise RuntimeError(f"docker-registry did not become ready on {self.url}:\n{tail}")

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=2) as r:
                    if r.status == 200:
                        return True
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        _kill(self._proc)
        return False

    def stop(self) -> None:
        """Terminate the process and delete the temp dir (the log text is kept in memory)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                _kill(self._proc)
        self._proc = None
        if self._own_root and self._root is not None:
            self._final_log = self.log_text()
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def log_text(self) -> str:
        """distribution's app log and access log (Apache combined format, with ?query)."""
        if self._root is not None and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return self._final_log or ""

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
