"""containerd's `ctr images pull` through a mirror, run in a network jail with a private
containerd and generated hosts.toml files."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.clientrun import E2EMirror
from tests.support.daemons import Containerd
from tests.support.netjail import NetJail


@dataclass
class Ctr:
    mirror: E2EMirror
    daemon: Containerd
    hosts_dir: Path
    jail: NetJail

    def pull_status(self, namespace: str, image: str, log: Path) -> int:
        """Run the pull, its output in `log`; the exit status."""
        cmd = self.jail.command(["ctr", "--debug", "--address", str(self.daemon.socket),
                                 "-n", namespace, "images", "pull", "--hosts-dir",
                                 str(self.hosts_dir), image])
        with open(log, "w") as fh:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=180).returncode

    def pull(self, namespace: str, image: str, log: Path) -> None:
        """The pull, which must succeed."""
        code = self.pull_status(namespace, image, log)
        assert code == 0, (f"ctr pull {image}\n{log.read_text()[-3000:]}\n"
                           f"--- mirror log:\n{self.mirror.proc.log_text()[-2000:]}")
