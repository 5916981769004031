"""Command line: `mirror serve`, `mirror check-config` and the maintenance commands."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mirror import __version__
from mirror.config import Config, load_config
from mirror.oci.errors import ConfigError

if TYPE_CHECKING:
    from mirror.http.workers import WorkerRole

EXIT_CONFIG = 2


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        for line in e.problems:
            print(f"mirror: config error: {line}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from mirror.cli.allocator import keep_large_buffers_on_heap
    from mirror.observe.log import setup_logging

    config = _load(args.config)
    if args.listen:
        from mirror.config import parse_config  # re-validate the override like any config key

        try:
            host, _, port = args.listen.rpartition(":")
            parse_config({"listen": args.listen, "offline": True})
            config = Config(**{**config.__dict__, "listen_host": host or "0.0.0.0",
                               "listen_port": int(port)})
        except (ConfigError, ValueError):
            print(f"mirror: config error: listen: invalid --listen {args.listen!r}", file=sys.stderr)
            return EXIT_CONFIG
    setup_logging(config.log.level, config.log.format)
    keep_large_buffers_on_heap()
    worker = _worker_role()
    if config.server.workers > 1 and worker is None:
        return _supervise(args, config)
    # Only a serving process loads the app (the supervisor stays small: mirror/http/supervisor.py).
    from mirror.http.app import create_app
    from mirror.http.server import run

    app = create_app(config, worker=worker)
    host = "127.0.0.1" if config.listen_host in ("0.0.0.0", "::") else config.listen_host
    where = f"{host}:{config.listen_port}"
    scheme = "https" if config.tls is not None else "http"

    def banner(_: str) -> None:
        if worker is not None:
            return  # the supervisor printed it once for all workers
        print(f"mirror {__version__} serving on {scheme}://{config.listen} (config {config.source})\n"
              f"  upstreams: {', '.join(config.upstreams) or 'none'}"
              f"{' (offline)' if config.offline else ''}; cache: {config.cache.dir}\n"
              f"  status page: {scheme}://{where}/   metrics: {scheme}://{where}/metrics\n"
              f"  dockerd:    daemon.json {{\"registry-mirrors\": [\"{scheme}://{where}\"]}}\n"
              f"  containerd: certs.d/<registry>/hosts.toml [host.\"{scheme}://{where}\"]\n"
              # The path names the registry: a bare host:port would send every registry's
              # pulls to the default upstream (ghcr.io images looked up on Docker Hub).
              f"  podman:     registries.conf [[registry.mirror]] location = \"{where}/<registry>\""
              f" (e.g. {where}/docker.io; `mirror client-config` writes them all)",
              flush=True)

    sock = socket.socket(socket.AF_INET6 if ":" in config.listen_host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if worker is not None:  # one of server.workers processes on the same port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((config.listen_host, config.listen_port))
    except OSError as e:
        print(f"mirror: cannot listen on {config.listen}: {e.strerror}", file=sys.stderr)
        return 1
    from mirror.store.dirlock import CacheDirBusy

    try:
        run(app, sock, banner, shutdown_timeout=5)  # like web.run_app, plus TLS reload and limits
    except CacheDirBusy as e:
        print(f"mirror: {e}", file=sys.stderr)
        return 1
    return 0


def _supervise(args: argparse.Namespace, config: Config) -> int:
    """server.workers > 1: this process starts and watches the workers (mirror/http/supervisor.py)."""
    from mirror.http.supervisor import WORKER_ENV, Supervisor

    def command(index: int, pipe_fd: int, key_fd: int | None) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "mirror", "serve"]
        if args.config:
            argv += ["-c", args.config]
        fds = f"{pipe_fd}" if key_fd is None else f"{pipe_fd},{key_fd}"
        return ([*argv, "--listen", f"{config.listen_host}:{supervisor.port}"],
                {WORKER_ENV: f"{index},{fds}"})

    def banner(where: str) -> None:
        scheme = "https" if config.tls is not None else "http"
        print(f"mirror {__version__} serving on {scheme}://{where} with "
              f"{config.server.workers} worker processes (config {config.source})\n"
              f"  upstreams: {', '.join(config.upstreams) or 'none'}"
              f"{' (offline)' if config.offline else ''}; cache: {config.cache.dir}", flush=True)

    supervisor = Supervisor(config, command)
    return supervisor.run(banner)


def _worker_role() -> WorkerRole | None:
    """This process is a worker the supervisor started (its environment says so)."""
    from mirror.http.supervisor import WORKER_ENV

    role = os.environ.get(WORKER_ENV)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not role:
        return None
    from mirror.http.workers import WorkerRole, read_token_key
    fields = role.split(",")
    if not metrics_dir or len(fields) not in (2, 3) or not all(f.isdigit() for f in fields):
        raise SystemExit(f"mirror: {WORKER_ENV} is set by `mirror serve` for its workers "
                         "(server.workers), not by hand")
    index, pipe, *key_fd = fields
    try:
        key = read_token_key(int(key_fd[0])) if key_fd else None
    except OSError as e:
        raise SystemExit(f"mirror: cannot read the token key from the supervisor: {e}") from None
    return WorkerRole(int(index), Path(metrics_dir), int(pipe), key)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    workers = f", {config.server.workers} workers" if config.server.workers > 1 else ""
    print(f"{config.source}: ok ({len(config.upstreams)} upstreams, cache {config.cache.dir}, "
          f"listen {config.listen}{workers})")
    for up in config.upstreams.values():
        cred = f", user {up.username}, password ****" if up.username else ""
        print(f"  {up.name}: {up.url}{cred}")
    for line in _security_lines(config):
        print(f"  {line}")
    return 0


def _security_lines(config: Config) -> list[str]:
    """TLS, client auth and limits for check-config: paths and counts, never a secret."""
    lines = []
    if config.tls is not None:
        mtls = f", client CA {config.tls.client_ca} (mTLS)" if config.tls.client_ca else ""
        lines.append(f"tls: cert {config.tls.cert}, key {config.tls.key} (****){mtls}")
    if config.auth is not None:
        a = config.auth
        who = f"htpasswd {a.htpasswd} (hashes ****)" if a.htpasswd else "no htpasswd: anonymous only"
        token = "off" if a.token is None else (
            f"on (key from {a.token.key_source}, ****)" if a.token.key_source
            else "on (key made at each start)")
        lines.append(f"auth: {who}, realm {a.realm!r}, {len(a.rules)} rules ({a.policy}, "
                     f"default {a.default}), token {token}, protect "
                     f"metrics {a.protect_metrics}, status {a.protect_status}")
    lim = config.limits
    rate = f", rate {lim.rate_limit.rate}/s burst {lim.rate_limit.burst}" if lim.rate_limit else ""
    lines.append(f"limits: header {lim.max_header_size} B, connections "
                 f"{lim.max_connections or 'unlimited'} ({lim.max_connections_per_client or 'any'} "
                 f"per address), client timeout {lim.client_timeout:g}s, send timeout "
                 f"{lim.send_timeout:g}s{rate}")
    if config.cluster is not None:
        c = config.cluster
        peers = f"DNS {c.dns}" if c.dns else f"{len(c.peers)} peers"
        lines.append(f"cluster: self {c.self_url}, {peers}, secret from {c.secret_source} "
                     f"(****), peer timeout {c.peer_timeout:g}s, down for {c.down_for:g}s")
    for r in config.signatures:
        lines.append(f"signatures: {r.name} ({r.mode}) upstreams {' '.join(r.upstreams)}, "
                     f"repositories {' '.join(r.repositories)}, keys "
                     f"{', '.join(k.name for k in r.keys)}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mirror",
        description="A pull-through caching mirror for container registries: Docker Hub, ghcr.io, "
                    "quay.io, registry.k8s.io and private registries behind one address.",
        epilog="The config file is taken from -c, else $MIRROR_CONFIG, else the built-in default.")
    p.add_argument("--version", action="version", version=f"mirror {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", metavar="FILE",
                        help="config file (default: $MIRROR_CONFIG, else the built-in default)")

    s = sub.add_parser("serve", help="serve the registry pull API",
                       description="Serve the OCI distribution pull API, the status page (/), "
                                   "/metrics, /healthz and /readyz on the listen address.")
    config_arg(s)
    s.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")

    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check-config", help="validate a config file",
                       description="Validate a config file. Exit 0 if it is usable, else 2 with "
                                   "one line per problem, each naming its key. Secrets are masked.")
    config_arg(c)
    c.set_defaults(func=cmd_check_config)

    from mirror.cli.airgap import IMAGES_HELP, add_airgap_commands  # seed
    from mirror.cli.transfer import add_transfer_commands  # export, import, inventory

    add_airgap_commands(sub, config_arg, _load)
    add_transfer_commands(sub, config_arg, _load, IMAGES_HELP)

    from mirror.cli.clientconf import add_client_config_command

    add_client_config_command(sub, config_arg)

    from mirror.cli.stats import add_stats_command

    add_stats_command(sub, config_arg)

    from mirror.cli.gc import add_gc_command

    add_gc_command(sub, config_arg, _load)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
