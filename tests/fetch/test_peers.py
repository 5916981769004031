"""Cluster pieces without processes: rendezvous ownership, the peer set (down marks expire,
DNS resolution via localhost), and the `cluster` config section (one line per problem, each
naming its key; the secret never printed)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mirror.cli.main import main
from mirror.config import ClusterConfig, Secret, parse_config
from mirror.fetch.peers import PeerSet, address_url
from mirror.fetch.rendezvous import ranked
from mirror.oci.errors import ConfigError

UP = {"docker.io": {"url": "http://127.0.0.1:9"}}
SECRET = "s3cret-" + "k" * 30
PEERS = [f"http://10.0.0.{i}:5000" for i in range(1, 6)]


def test_rendezvous_agrees_everywhere_and_moves_only_the_lost_peers_keys() -> None:
    keys = [f"sha256:{i:064x}" for i in range(2000)]
    owners = {k: ranked(k, PEERS)[0] for k in keys}
    assert owners == {k: ranked(k, list(reversed(PEERS)))[0] for k in keys}  # order-free
    counts = {p: sum(1 for o in owners.values() if o == p) for p in PEERS}
    assert all(300 < c < 500 for c in counts.values()), counts  # spread evenly
    gone = PEERS[2]
    after = {k: ranked(k, [p for p in PEERS if p != gone])[0] for k in keys}
    moved = [k for k in keys if after[k] != owners[k]]
    assert moved and all(owners[k] == gone for k in moved)
    # ...and each moves to the lost peer's runner-up, which every node computes alike.
    assert all(after[k] == ranked(k, PEERS)[1] for k in moved)


def cluster(**kw: Any) -> ClusterConfig:
    return ClusterConfig(PEERS[0], Secret(SECRET), tuple(PEERS), **kw)


def test_owners_skip_down_peers_until_their_time_is_up() -> None:
    now = [100.0]
    peers = PeerSet(cluster(down_for=30.0), clock=lambda: now[0])
    key = next(f"k{i}" for i in range(100) if ranked(f"k{i}", PEERS)[0] not in (PEERS[0],)
               and ranked(f"k{i}", PEERS)[1] != PEERS[0])
    order = ranked(key, PEERS)
    assert peers.owners(key)[0] == order[0]
    assert peers.owners(key)[-1] == PEERS[0]  # the list ends at this node
    peers.mark_down(order[0], "refused")
    assert peers.owners(key)[0] == order[1]
    assert [r["state"] for r in peers.status() if r["url"] == order[0]] == ["down"]
    now[0] += 31
    assert peers.owners(key)[0] == order[0]


def test_secret_check() -> None:
    peers = PeerSet(cluster())
    assert peers.authorized(SECRET)
    assert not peers.authorized(None)
    assert not peers.authorized(SECRET[:-1])
    assert not peers.authorized(SECRET + "x")
    assert SECRET not in repr(peers.config)


def test_dns_name_resolves_to_the_peers() -> None:
    peers = PeerSet(ClusterConfig("http://127.0.0.1:5000", Secret(SECRET),
                                  dns="http://localhost:5000"))
    asyncio.run(peers.resolve())
    assert "http://127.0.0.1:5000" in peers.members
    assert address_url("http", "::1", 5000) == "http://[::1]:5000"
    peers.set_members([address_url("http", "10.1.0.7", 5000)])
    assert set(peers.members) == {"http://127.0.0.1:5000", "http://10.1.0.7:5000"}


def problems(raw: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config({"upstreams": UP, "cluster": raw}, env=env or {}, base=tmp_path)
    return e.value.problems


@pytest.mark.parametrize(("raw", "expected"), [
    ({"self": "http://a:5000", "peers": ["http://a:5000"]},
     "cluster: secret_env or secret_file is required"),
    ({"self": "http://a:5000", "peers": ["http://a:5000"], "secret_env": "NOPE"},
     "cluster.secret_env: environment variable NOPE is not set"),
    ({"self": "http://a:5000", "peers": ["http://a:5000"], "secret": "x"},
     "cluster.secret: secrets are not read from the config file"),
    ({"peers": ["http://a:5000"], "secret_env": "S"}, "cluster.self: is required"),
    ({"self": "a:5000", "peers": ["http://a:5000"], "secret_env": "S"}, "cluster.self: must be a URL"),
    ({"self": "http://a:5000", "peers": "http://svc", "secret_env": "S"},
     "cluster.peers: a DNS name needs a port"),
    ({"self": "http://a:5000", "peers": 5, "secret_env": "S"}, "cluster.peers: must be a list"),
    ({"self": "http://a:5000", "peers": ["ftp://b"], "secret_env": "S"},
     "cluster.peers[0]: must be a URL"),
    ({"self": "http://${POD_IP}:5000", "peers": ["http://a:5000"], "secret_env": "S"},
     "cluster.self: environment variable POD_IP is not set"),
    ({"self": "http://a:5000", "peers": ["http://a:5000"], "secret_env": "SHORT"},
     "cluster.secret_env: the secret is too short"),
    ({"self": "http://a:5000", "peers": ["http://a:5000"], "secret_env": "S",
      "peer_timeout": "0s"}, "cluster.peer_timeout: must be more than 0s"),
    ({"self": "http://a:5000", "peers": ["http://b:5000", "http://c:5000"], "secret_env": "S"},
     "cluster.self: http://a:5000 is not one of cluster.peers"),
    ({"self": "http://a:5000", "peers": ["http://a:5000"], "secret_env": "S", "port": 1},
     "cluster.port: unknown key"),
])
def test_cluster_problems_name_their_key(tmp_path: Path, raw: dict[str, Any],
                                         expected: str) -> None:
    p = problems(raw, tmp_path, env={"S": SECRET, "SHORT": "abc"})
    assert any(line.startswith(expected) for line in p), p
    assert all(SECRET not in line and "\n" not in line for line in p)


def test_cluster_config_parsed_and_shown_masked(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    raw = {"self": "http://${POD_IP}:5000", "peers": "http://mirror-peers.ns.svc:5000",
           "secret_file": "secret", "peer_timeout": "2s"}
    c = parse_config({"upstreams": UP, "cluster": raw}, env={"POD_IP": "10.2.3.4"},
                     base=tmp_path).cluster
    assert c is not None
    assert (c.self_url, c.dns, c.peers, c.peer_timeout) == (
        "http://10.2.3.4:5000", "http://mirror-peers.ns.svc:5000", (), 2.0)
    assert c.secret.reveal() == SECRET
    assert parse_config({"upstreams": UP}, env={}).cluster is None
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text("upstreams: {docker.io: http://127.0.0.1:9}\ncluster:\n"
                   "  self: http://127.0.0.1:5000\n  peers: [http://127.0.0.1:5000]\n"
                   "  secret_env: CLUSTER_SECRET\n")
    monkeypatch.setenv("CLUSTER_SECRET", SECRET)
    assert main(["check-config", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "cluster: self http://127.0.0.1:5000, 1 peers, secret from environment variable " \
           "CLUSTER_SECRET (****)" in out
    assert SECRET not in out
