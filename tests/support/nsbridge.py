"""Byte-for-byte TCP <-> unix-socket forwarding, to let a process in a private network namespace
reach chosen 127.0.0.1 ports of the host and nothing else. Standard library only.

A path-based unix socket is reachable from every network namespace. So the host side listens on
`<dir>/<port>.sock` and connects to 127.0.0.1:<port> (UnixToTcp, a thread in the test process);
inside the namespace, this file run as a script listens on 127.0.0.1:<port> and connects to
that socket, then runs the command:

    unshare --net -- python nsbridge.py --dir DIR --ports 5000,5001 -- CMD ARGS...

Inside, every other address fails at once ("network is unreachable"): that is the safety net
for clients that silently fall back to registry-1.docker.io when a mirror fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 16


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)  # half-close: the other direction may still be busy
        except OSError:
            pass


def _forward(client: socket.socket, connect: Callable[[], socket.socket]) -> None:
    try:
        upstream = connect()
    except OSError as e:
        print(f"nsbridge: connect failed: {e}", file=sys.stderr, flush=True)
        client.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _serve(listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # listener closed: stop
        threading.Thread(target=_forward, args=(client, connect), daemon=True).start()


def _tcp(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _unix(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


class UnixToTcp:
    """Host side: `<dir>/<port>.sock` forwards to 127.0.0.1:<port> until close()."""

    def __init__(self, directory: Path, port: int) -> None:
        self.path = directory / f"{port}.sock"
        self.port = port
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(256)
        self._thread = threading.Thread(target=_serve, args=(self._listener, lambda: _tcp(port)),
                                        name=f"nsbridge-{port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _inside(directory: str, ports: list[int], cmd: list[str]) -> int:
    """Run in the new namespace: loopback up, a listener per bridged port, then CMD."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for port in ports:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(256)
        path = os.path.join(directory, f"{port}.sock")
        threading.Thread(target=_serve, args=(listener, lambda p=path: _unix(p)),
                         daemon=True).start()
    child = subprocess.Popen(cmd)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = child.wait()
    return 128 - rc if rc < 0 else rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="directory of the <port>.sock sockets")
    parser.add_argument("--ports", default="", help="comma-separated 127.0.0.1 ports to bridge")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command")
    ports = [int(p) for p in args.ports.split(",") if p]
    return _inside(args.dir, ports, cmd)


if __name__ == "__main__":
    sys.exit(main())
