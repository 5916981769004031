"""The `cluster` section: this node's URL, its peers (a list of URLs or one DNS name), the shared
secret of peer requests and the failure timings. Every problem names its key; the secret's
value never appears in one."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from mirror.config.model import ClusterConfig, Secret
from mirror.config.reader import _Reader, _url, parse_duration

MIN_SECRET = 16
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(reader: _Reader, path: str, value: str) -> str | None:
    """`${POD_IP}` and the like in cluster.self (a pod learns its address from the env)."""
    missing = [m for m in _ENV_REF.findall(value) if m not in reader.env]
    if missing:
        reader.problem(path, f"environment variable {missing[0]} is not set")
        return None
    return _ENV_REF.sub(lambda m: reader.env[m.group(1)], value)


def _secret(reader: _Reader, sec: dict[str, Any]) -> tuple[Secret | None, str]:
    env_name = reader.get(sec, "secret_env", "cluster.secret_env", str, None)
    file_name = reader.get(sec, "secret_file", "cluster.secret_file", str, None)
    if "secret" in sec:
        reader.problem("cluster.secret", "secrets are not read from the config file; "
                                         "use secret_env or secret_file")
    if env_name and file_name:
        reader.problem("cluster", "give secret_env or secret_file, not both")
        return None, ""
    if env_name:
        path = "cluster.secret_env"
        if env_name not in reader.env:
            reader.problem(path, f"environment variable {env_name} is not set")
            return None, ""
        value, source = reader.env[env_name].strip(), f"environment variable {env_name}"
    elif file_name:
        path, p = "cluster.secret_file", reader.path(file_name)
        try:
            value = p.read_bytes().decode().strip()
        except (OSError, UnicodeDecodeError) as e:
            reader.problem(path, f"cannot read {p}: {getattr(e, 'strerror', None) or 'not text'}")
            return None, ""
        source = f"file {p}"
    else:
        reader.problem("cluster", "secret_env or secret_file is required: peers answer only "
                                  "requests that carry the shared secret")
        return None, ""
    if len(value) < MIN_SECRET:
        reader.problem(path, f"the secret is too short: at least {MIN_SECRET} characters "
                             "(e.g. openssl rand -hex 32)")
        return None, ""
    return Secret(value), source


def _peers(reader: _Reader, raw: Any) -> tuple[tuple[str, ...], str | None]:
    if isinstance(raw, str):  # one DNS name: its addresses are the peers
        dns = _url(reader, "cluster.peers", raw, ("http", "https"))
        if dns is not None and urlsplit(dns).port is None:
            reader.problem("cluster.peers", "a DNS name needs a port, e.g. "
                                            "http://mirror-peers.ns.svc:5000")
            return (), None
        return (), dns
    if not isinstance(raw, list) or not raw:
        reader.problem("cluster.peers", "must be a list of peer URLs, or one URL whose DNS "
                                        "name resolves to the peers")
        return (), None
    urls = [_url(reader, f"cluster.peers[{i}]", v, ("http", "https")) for i, v in enumerate(raw)]
    return tuple(u for u in urls if u is not None), None


def _cluster(reader: _Reader, raw: Any) -> ClusterConfig | None:
    if raw is None:
        return None
    sec = reader.section(raw, "cluster", {"self", "peers", "secret_env", "secret_file",
                                          "secret", "peer_timeout", "down_for",
                                          "resolve_interval"})
    if not sec:
        return None
    me = sec.get("self")
    if isinstance(me, str):
        me = _expand(reader, "cluster.self", me)
    self_url = _url(reader, "cluster.self", me, ("http", "https"))
    peers, dns = _peers(reader, sec.get("peers"))
    secret, source = _secret(reader, sec)
    timeout = reader.convert(sec, "peer_timeout", "cluster.peer_timeout", parse_duration, 3.0)
    if timeout <= 0:
        reader.problem("cluster.peer_timeout", "must be more than 0s")
    down_for = reader.convert(sec, "down_for", "cluster.down_for", parse_duration, 30.0)
    interval = reader.convert(sec, "resolve_interval", "cluster.resolve_interval",
                              parse_duration, 5.0)
    if interval < 1:
        reader.problem("cluster.resolve_interval", "must be at least 1s")
    if self_url is not None and peers and self_url not in peers:
        # Every node ranks owners over the same names: a node listed under another spelling
        # would ask itself as a peer and wait out peer_timeout on its own fetch.
        reader.problem("cluster.self", f"{self_url} is not one of cluster.peers; give every "
                                       "node the same list, itself included, spelled alike")
    if self_url is None or secret is None:
        return None
    return ClusterConfig(self_url, secret, peers, dns, max(timeout, 0.1), down_for,
                         max(interval, 1.0), source)
