"""Private containerd and dockerd daemons for end-to-end tests.

Each daemon keeps all of its state (root, state, sockets, exec-root) under one directory the
test owns, runs in its own network namespace (NetJail) in its own process group, and is stopped
in teardown: SIGTERM to the daemon, SIGKILL to its group if it lingers, then the shims it started
(found by our state path in their command line), then every mount left under its directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .netjail import NetJail


def umount_under(directory: Path) -> list[str]:
    """Unmount everything mounted at or below `directory`, deepest first."""
    d = os.path.realpath(directory)
    mounts = []
    with open("/proc/mounts") as f:
        for line in f:
            target = line.split()[1].replace("\\040", " ")
            if target == d or target.startswith(d + "/"):
                mounts.append(target)
    failed = []
    for m in sorted(set(mounts), key=len, reverse=True):
        if subprocess.run(["umount", m], capture_output=True).returncode != 0 and \
                subprocess.run(["umount", "-l", m], capture_output=True).returncode != 0:
            failed.append(m)
    return failed


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (a path only our daemon's children use)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class JailedDaemon:
    """A long-running command in a NetJail, in its own session and process group."""

    name = "daemon"

    def __init__(self, root: Path, bridged_ports: Sequence[int] = ()) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"{self.name}.log"
        self.jail = NetJail(bridged_ports)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.jail.command(self.command()), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ready():
                return
            time.sleep(0.2)
        tail = "\n".join(self.log_text().splitlines()[-30:])
        self.stop()
        raise RuntimeError(f"{self.name} did not come up:\n{tail}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            # TERM to the jail wrapper only: it hands it to the daemon, which stops its own
            # children in order (dockerd its containerd). The group gets KILL afterwards.
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(10)
            _signal_group(proc.pid, signal.SIGKILL)  # anything of ours still in the group
        # Shims re-parent themselves into their own session: find them by our private paths.
        for pid in pids_mentioning(str(self.root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.jail.close()
        umount_under(self.root)


class Containerd(JailedDaemon):
    """containerd with root, state and sockets under `root`. It needs no network: with ctr 1.6
    the registry traffic is made by the ctr client. Namespaces do not share content
    (content_sharing_policy = isolated), so a pull in a fresh namespace fetches every blob."""

    name = "containerd"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.socket = root / "containerd.sock"
        self.config_path = root / "config.toml"
        disabled = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper"]
        self.config_path.write_text(
            "version = 2\n"
            f"root = {json.dumps(str(root / 'root'))}\n"
            f"state = {json.dumps(str(root / 'state'))}\n"
            f"disabled_plugins = {json.dumps(disabled)}\n"
            "[grpc]\n"
            f"  address = {json.dumps(str(self.socket))}\n"
            "[ttrpc]\n"
            f"  address = {json.dumps(str(self.socket) + '.ttrpc')}\n"
            "[debug]\n"
            f"  address = {json.dumps(str(root / 'debug.sock'))}\n"
            '  level = "info"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f"  path = {json.dumps(str(root / 'opt'))}\n"
            '[plugins."io.containerd.metadata.v1.bolt"]\n'
            '  content_sharing_policy = "isolated"\n'
        )

    def command(self) -> list[str]:
        return ["containerd", "--config", str(self.config_path)]

    def ready(self) -> bool:
        return self.ctr("version", namespace=None, check=False).returncode == 0

    def ctr(self, *args: str, namespace: str | None = "default", check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = ["ctr", "--address", str(self.socket)]
        if namespace:
            cmd += ["-n", namespace]
        r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd + list(args))} -> {r.returncode}\n{r.stderr}")
        return r


class Dockerd(JailedDaemon):
    """dockerd (Debian's 20.10) with vfs, no iptables, no bridge, data/exec root under `root`,
    `daemon` merged into its daemon.json (the registry-mirrors part comes from
    mirror.cli.clientconf, as users get it). Only `bridged_ports` are reachable from it."""

    name = "dockerd"

    def __init__(self, root: Path, daemon: Mapping[str, Any], bridged_ports: Sequence[int]) -> None:
        super().__init__(root, bridged_ports)
        self.socket = root / "docker.sock"
        self.config_path = root / "daemon.json"
        self.docker_config = root / "cli"
        self.docker_config.mkdir(exist_ok=True)
        settings: dict[str, Any] = {
            **daemon,
            "storage-driver": "vfs",
            "iptables": False,
            "ip-masq": False,
            "bridge": "none",
            "data-root": str(root / "data"),
            "exec-root": str(root / "exec"),
            "pidfile": str(root / "dockerd.pid"),
            "hosts": [f"unix://{self.socket}"],
            "debug": True,
            "max-concurrent-downloads": 3,
        }
        self.config_path.write_text(json.dumps(settings, indent=2))

    def command(self) -> list[str]:
        return [shutil.which("dockerd") or "/usr/sbin/dockerd", "--config-file",
                str(self.config_path)]

    def ready(self) -> bool:
        return self.docker("version", check=False).returncode == 0

    def docker(self, *args: str, check: bool = True,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
        cmd = [shutil.which("docker") or "docker", "-H", f"unix://{self.socket}", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "DOCKER_CONFIG": str(self.docker_config)})
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r
