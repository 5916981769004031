"""The client-config generator (mirror/clientconf.py, `mirror client-config`) and the examples in
deploy/clients/, which must be exactly its output for the default config. The end-to-end tests
in tests/e2e/clients/ configure the real clients with the same generator."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mirror.cli.clientconf import (
    client_files,
    daemon_json,
    hosts_toml,
    mirror_base,
    registries_conf,
)
from mirror.config import load_config, parse_config
from mirror.oci.routing import resolve_route

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "clients"
DEFAULT_CONFIG = ROOT / "mirror" / "default.yaml"
EXAMPLE_URL = "http://mirror.internal:5000"


def test_deploy_examples_are_the_generators_output() -> None:
    files = client_files(load_config(DEFAULT_CONFIG, env={}), EXAMPLE_URL)
    on_disk = {str(p.relative_to(DEPLOY)): p.read_text() for p in DEPLOY.rglob("*")
               if p.is_file() and p.name != "README.md"}
    assert on_disk == files, ("deploy/clients is stale: run `mirror client-config -c "
                              f"mirror/default.yaml --mirror-url {EXAMPLE_URL} -o deploy/clients`")
    # one hosts.toml per default upstream
    assert sorted(p for p in files if p.startswith("certs.d/")) == [
        "certs.d/docker.io/hosts.toml", "certs.d/ghcr.io/hosts.toml",
        "certs.d/quay.io/hosts.toml", "certs.d/registry.k8s.io/hosts.toml"]


def test_generated_files_parse_and_say_what_clients_need() -> None:
    files = client_files(load_config(DEFAULT_CONFIG, env={}), EXAMPLE_URL)
    assert json.loads(files["daemon.json"]) == {"registry-mirrors": [EXAMPLE_URL]}
    hub = tomllib.loads(files["certs.d/docker.io/hosts.toml"])
    assert hub == {"server": "https://registry-1.docker.io",
                   "host": {EXAMPLE_URL: {"capabilities": ["pull", "resolve"]}}}
    assert tomllib.loads(files["certs.d/ghcr.io/hosts.toml"])["server"] == "https://ghcr.io"
    conf = tomllib.loads(files["registries.conf"])
    assert conf["unqualified-search-registries"] == ["docker.io"]
    by_prefix = {r["prefix"]: r for r in conf["registry"]}
    assert set(by_prefix) == {"docker.io", "ghcr.io", "quay.io", "registry.k8s.io"}
    for name, reg in by_prefix.items():
        assert reg["location"] == name
        assert "insecure" not in reg
        assert reg["mirror"] == [{"location": f"mirror.internal:5000/{name}", "insecure": True}]


def test_registries_conf_mirror_locations_route_to_their_registry() -> None:
    # podman sends /v2/<mirror path>/<repo>/...: the path prefix must route to the right upstream.
    cfg = load_config(DEFAULT_CONFIG, env={})
    conf = tomllib.loads(client_files(cfg, EXAMPLE_URL)["registries.conf"])
    aliases = cfg.alias_table()
    for reg in conf["registry"]:
        path = reg["mirror"][0]["location"].split("/", 1)[1]
        route = resolve_route(f"{path}/team/app", None, aliases, cfg.default_upstream)
        assert (route.upstream, route.repo, route.via) == (reg["prefix"], "team/app", "prefix")


def test_fallback_replaces_every_registrys_own_address() -> None:
    cfg = load_config(DEFAULT_CONFIG, env={})
    files = client_files(cfg, "http://127.0.0.1:5000", fallback="http://127.0.0.1:5099")
    for name in cfg.upstreams:
        assert tomllib.loads(files[f"certs.d/{name}/hosts.toml"])["server"] == "http://127.0.0.1:5099"
    for reg in tomllib.loads(files["registries.conf"])["registry"]:
        assert (reg["location"], reg["insecure"]) == ("127.0.0.1:5099", True)


def test_https_mirror_is_not_insecure() -> None:
    conf = tomllib.loads(registries_conf(["ghcr.io"], "https://mirror.example:443"))
    assert conf["registry"][0]["mirror"] == [{"location": "mirror.example:443/ghcr.io"}]
    assert "unqualified-search-registries" not in conf  # only when Docker Hub is mirrored
    assert daemon_json("https://mirror.example") == {"registry-mirrors": ["https://mirror.example"]}
    assert tomllib.loads(hosts_toml("ghcr.io", "https://m.example/", "https://ghcr.io"))["host"] == {
        "https://m.example": {"capabilities": ["pull", "resolve"]}}


def test_no_daemon_json_when_docker_hub_is_not_the_default() -> None:
    cfg = parse_config({"upstreams": {"ghcr.io": "https://ghcr.io"}}, env={})
    files = client_files(cfg, EXAMPLE_URL)
    assert "daemon.json" not in files  # dockerd names no registry: it needs default docker.io
    assert set(files) == {"certs.d/ghcr.io/hosts.toml", "registries.conf"}


@pytest.mark.parametrize("url", ["mirror:5000", "ftp://mirror", "http://mirror:5000/v2",
                                 "http://user:pw@mirror", "http://mirror?x=1", "http://",
                                 'http://mi"rror'])
def test_mirror_url_must_be_a_bare_http_root(url: str) -> None:
    with pytest.raises(ValueError):
        mirror_base(url)


def test_mirror_base_normalises() -> None:
    assert mirror_base(" http://Mirror.example:5000/ ") == "http://Mirror.example:5000"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", "client-config", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_cli_writes_the_files(tmp_path: Path) -> None:
    r = run_cli("-c", str(DEFAULT_CONFIG), "--mirror-url", EXAMPLE_URL, "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    written = {str(p.relative_to(tmp_path)): p.read_text() for p in tmp_path.rglob("*")
               if p.is_file()}
    assert written == client_files(load_config(DEFAULT_CONFIG, env={}), EXAMPLE_URL)
    assert len(r.stdout.splitlines()) == len(written)


def test_cli_prints_without_output_dir() -> None:
    r = run_cli("-c", str(DEFAULT_CONFIG), "--mirror-url", EXAMPLE_URL)
    assert r.returncode == 0, r.stderr
    assert "==> daemon.json <==" in r.stdout and "==> registries.conf <==" in r.stdout


def test_cli_rejects_a_bad_url_and_a_bad_config(tmp_path: Path) -> None:
    r = run_cli("-c", str(DEFAULT_CONFIG), "--mirror-url", "mirror:5000")
    assert r.returncode == 2 and "mirror URL" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: {docker.io: {url: nope}}\n")
    r = run_cli("-c", str(bad), "--mirror-url", EXAMPLE_URL)
    assert r.returncode == 2 and "upstreams.docker.io.url" in r.stderr
