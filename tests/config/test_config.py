"""Config loading: keys, units, and one clear line per problem naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mirror.config import (
    ConfigError,
    default_config_text,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)


def problems(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, env or {}, Path("/tmp"))
    return exc.value.problems


def test_default_config_is_valid_and_matches_the_top_level_file() -> None:
    cfg = load_config(None, env={})
    assert cfg.listen == "0.0.0.0:5000"
    assert cfg.default_upstream == "docker.io"
    assert set(cfg.upstreams) == {"docker.io", "ghcr.io", "quay.io", "registry.k8s.io"}
    assert cfg.upstreams["docker.io"].url == "https://registry-1.docker.io"
    assert "index.docker.io" in cfg.upstreams["docker.io"].aliases
    assert cfg.cache.tag_ttl == 300 and cfg.cache.max_size == 20 * 1024**3
    top = Path(__file__).resolve().parents[2] / "mirror.yaml"
    assert yaml.safe_load(top.read_text()) == yaml.safe_load(default_config_text())


@pytest.mark.parametrize(("text", "value"), [("20GiB", 20 * 1024**3), ("500MB", 500 * 10**6),
                                             ("64MiB", 64 * 1024**2), (1024, 1024), ("1.5G", 1_500_000_000)])
def test_sizes(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("5m", 300), ("30s", 30), ("1h30m", 5400), (0, 0),
                                             ("250ms", 0.25), ("2d", 172800), ("10", 10)])
def test_durations(text: object, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["5 parsecs", "-3s", "", "m5", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_every_problem_is_reported_with_its_key() -> None:
    raw = {
        "listen": "nowhere",
        "upstreams": {"docker.io": {"url": "ftp://x", "password": "hunter2"},
                      "bad name!": {"url": "https://x"},
                      "ghcr.io": {"url": "https://ghcr.io", "username": "u",
                                  "password_env": "NOPE"}},
        "cache": {"max_size": "lots", "tag_ttl": "soon", "colour": "blue"},
        "default_upstream": "quay.io",
        "offline": "yes",
    }
    out = problems(raw)
    keys = [line.split(":", 1)[0] for line in out]
    for key in ["listen", "upstreams.docker.io.url", "upstreams.docker.io.password",
                "upstreams.bad name!", "upstreams.ghcr.io.password_env", "cache.max_size",
                "cache.tag_ttl", "cache.colour", "default_upstream", "offline"]:
        assert key in keys, out
    assert not any("hunter2" in line for line in out)


def test_credentials_from_env_and_file_are_masked(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret-file\n")
    cfg = parse_config({"upstreams": {
        "a.example": {"url": "https://a.example", "username": "u", "password_env": "PW"},
        "b.example": {"url": "https://b.example", "username": "u", "password_file": "pw"}}},
        {"PW": "s3cret-env"}, tmp_path)
    a, b = cfg.upstreams["a.example"], cfg.upstreams["b.example"]
    assert a.password is not None and a.password.reveal() == "s3cret-env"
    assert b.password is not None and b.password.reveal() == "s3cret-file"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(a.password)


def test_relative_cache_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("upstreams: {docker.io: {url: 'http://127.0.0.1:9'}}\ncache: {dir: ./c}\n")
    assert load_config(f, env={}).cache.dir == tmp_path / "c"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("upstreams:\n  docker.io: {url: 'http://127.0.0.1:9', username: u, "
                    "password_env: PW}\n")
    r = run_cli("check-config", "-c", str(good), env={"PW": "topsecret", "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stderr
    assert "topsecret" not in r.stdout + r.stderr and "****" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 1\ncache: {max_size: huge}\nupstreams: {}\n")
    r = run_cli("check-config", "-c", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert any("cache.max_size" in ln for ln in lines) and any("listen" in ln for ln in lines)
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: [unclosed\n")
    r = run_cli("check-config", "-c", str(broken))
    assert r.returncode == 2 and "line" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("check-config", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_mirror_config_env_variable(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("listen: 127.0.0.1:5999\nupstreams: {docker.io: {url: 'http://127.0.0.1:9'}}\n")
    r = run_cli("check-config", env={"MIRROR_CONFIG": str(f), "PATH": "/usr/bin"})
    assert r.returncode == 0 and "127.0.0.1:5999" in r.stdout


def test_prefetch_platforms() -> None:
    up = {"docker.io": {"url": "http://127.0.0.1:9"}}
    cfg = parse_config({"upstreams": up, "prefetch": {"platforms": ["linux/arm64/v8"]}}, {},
                       Path("/tmp"))
    assert [(p.os, p.architecture, p.variant) for p in cfg.prefetch.platforms] == [
        ("linux", "arm64", "v8")]
    assert parse_config({"upstreams": up}, {}, Path("/tmp")).prefetch.platforms == ()
    out = problems({"upstreams": up, "prefetch": {"platforms": ["linux", "linux/amd64"]}})
    assert len(out) == 1 and out[0].startswith("prefetch.platforms[0]: "), out
    out = problems({"upstreams": up, "prefetch": {"platforms": "linux/amd64"}})
    assert len(out) == 1 and out[0].startswith("prefetch.platforms: "), out


@pytest.mark.parametrize("value, expected", [
    (None, 16 * 1024**2), ("64MiB", 64 * 1024**2), ("off", None), (False, None),
])
def test_direct_io_is_a_size_or_off(value: object, expected: int | None) -> None:
    raw: dict[str, object] = {"offline": True,
                              "cache": {} if value is None else {"direct_io": value}}
    assert parse_config(raw, {}, Path("/tmp")).cache.direct_io == expected


@pytest.mark.parametrize("value", ["lots", "0", -5])
def test_a_bad_direct_io_names_its_key(value: object) -> None:
    assert any(p.startswith("cache.direct_io") for p in problems({"cache": {"direct_io": value}}))
