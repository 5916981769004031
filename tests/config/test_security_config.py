"""Config keys tls, auth and limits: parsed values, and problems that name their key;
`mirror check-config` shows them with every secret masked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mirror.cli.main import main
from mirror.config import AccessRule, RateLimitConfig, parse_config
from mirror.oci.errors import ConfigError
from tests.support.certs import TestCA, write_htpasswd

UP = {"docker.io": {"url": "http://127.0.0.1:9"}, "ghcr.io": {"url": "http://127.0.0.1:9"}}


def problems(raw: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config({"upstreams": UP, **raw}, env={}, base=tmp_path)
    return e.value.problems


def test_full_security_config(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    srv = ca.server()
    write_htpasswd(tmp_path / "htpasswd", {"alice": "pw-a", "bob": "pw-b"})
    cfg = parse_config({
        "upstreams": UP,
        "tls": {"cert": str(srv.cert), "key": str(srv.key), "client_ca": str(ca.cert)},
        "auth": {"htpasswd": "htpasswd", "realm": "corp mirror", "policy": "deny-overrides",
                 "default": "allow", "protect_metrics": False, "token": {"ttl": "10m"},
                 "rules": [{"allow": True, "users": ["anonymous"], "repositories": "library/*"},
                           {"deny": True, "users": ["bob"], "upstreams": ["ghcr.io"]}]},
        "limits": {"max_header_size": "16KiB", "max_connections": 0, "client_timeout": "15s",
                   "rate_limit": {"rate": 20, "burst": 50}, "send_timeout": "2m",
                   "max_connections_per_client": 0},
    }, env={}, base=tmp_path)
    assert cfg.tls is not None and cfg.tls.client_ca == ca.cert
    a = cfg.auth
    assert a is not None and a.htpasswd == tmp_path / "htpasswd" and a.realm == "corp mirror"
    assert a.policy == "deny-overrides" and a.default == "allow" and not a.protect_metrics
    assert a.protect_status and a.token is not None and a.token.ttl == 600
    assert a.rules == (AccessRule("allow", ("anonymous",), ("*",), ("library/*",)),
                       AccessRule("deny", ("bob",), ("ghcr.io",), ("**",)))
    lim = cfg.limits
    assert (lim.max_header_size, lim.max_connections, lim.client_timeout) == (16384, None, 15.0)
    assert lim.rate_limit == RateLimitConfig(20.0, 50)
    assert (lim.send_timeout, lim.max_connections_per_client) == (120.0, None)


def test_defaults_without_the_sections(tmp_path: Path) -> None:
    cfg = parse_config({"upstreams": UP}, env={}, base=tmp_path)
    assert cfg.tls is None and cfg.auth is None
    assert cfg.limits.max_connections == 1024 and cfg.limits.rate_limit is None
    assert (cfg.limits.send_timeout, cfg.limits.max_connections_per_client) == (60.0, 256)


def test_tls_problems_name_their_key(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    a, b = ca.server("a"), ca.server("b")
    assert problems({"tls": {"cert": str(a.cert)}}, tmp_path) == ["tls.key: is required (a PEM file)"]
    p = problems({"tls": {"cert": str(a.cert), "key": str(tmp_path / "missing.key")}}, tmp_path)
    assert p[0].startswith("tls.key: cannot read") and "No such file" in p[0]
    p = problems({"tls": {"cert": str(a.cert), "key": str(b.key)}}, tmp_path)
    assert len(p) == 1 and p[0].startswith("tls.key: cert and key do not load as a pair")
    p = problems({"tls": {"cert": str(a.cert), "key": str(a.key), "client_ca": str(a.key)}},
                 tmp_path)
    assert len(p) == 1 and p[0].startswith("tls.client_ca: ")
    assert problems({"tls": {"cert": str(a.cert), "key": str(a.key), "ciphers": "x"}},
                    tmp_path) == ["tls.ciphers: unknown key"]


def test_htpasswd_must_be_bcrypt_and_never_echoed(tmp_path: Path) -> None:
    f = tmp_path / "htpasswd"
    f.write_text("alice:$apr1$abcdefgh$0123456789abcdefghijkl\n")
    p = problems({"auth": {"htpasswd": str(f)}}, tmp_path)
    assert p == ["auth.htpasswd: line 1: user alice: not a bcrypt hash (create it with htpasswd -B)"]
    f.write_text("# comment\n\nbob:plain-text-password\n")
    p = problems({"auth": {"htpasswd": str(f)}}, tmp_path)
    assert p[0].startswith("auth.htpasswd: line 3: user bob") and "plain-text-password" not in p[0]
    write_htpasswd(f, {"anonymous": "x"})
    assert "reserved" in problems({"auth": {"htpasswd": str(f)}}, tmp_path)[0]
    assert problems({"auth": {"htpasswd": str(tmp_path / "nope")}}, tmp_path)[0].startswith(
        "auth.htpasswd: cannot read")


@pytest.mark.parametrize(("auth", "expected"), [
    ({"rules": [{"users": ["alice"]}]}, "auth.rules[0]: needs exactly one of allow: true or deny: true"),
    ({"rules": [{"allow": True, "deny": True}]}, "auth.rules[0]: needs exactly one of"),
    ({"rules": [{"allow": "yes"}]}, "auth.rules[0].allow: must be true"),
    ({"rules": [{"allow": True, "upstreams": ["quay.io"]}]},
     "auth.rules[0].upstreams: 'quay.io' is not one of upstreams"),
    ({"rules": [{"allow": True, "users": ["carol"]}]},
     "auth.rules[0].users: 'carol' is not in auth.htpasswd"),
    ({"rules": [{"allow": True, "repositories": []}]}, "auth.rules[0].repositories: must be a non-empty"),
    ({"rules": [{"allow": True, "repo": "x"}]}, "auth.rules[0].repo: unknown key"),
    ({"rules": {"allow": True}}, "auth.rules: must be a list of rules"),
    ({"policy": "last-match"}, "auth.policy: must be first-match or deny-overrides"),
    ({"default": "maybe"}, "auth.default: must be allow or deny"),
    ({"realm": 'a"b'}, "auth.realm: must not contain quotes"),
    ({"token": {"ttl": "0s"}}, "auth.token.ttl: must be at least 1s"),
    ({"token": {"realm": "ftp://x"}}, "auth.token.realm: must be a URL"),
    ({"protect_metrics": "no"}, "auth.protect_metrics: must be true or false"),
    ({"htpasswd_file": "x"}, "auth.htpasswd_file: unknown key"),
])
def test_auth_problems_name_their_key(tmp_path: Path, auth: dict[str, Any], expected: str) -> None:
    write_htpasswd(tmp_path / "htpasswd", {"alice": "pw"})
    p = problems({"auth": {"htpasswd": str(tmp_path / "htpasswd"), **auth}}, tmp_path)
    assert any(line.startswith(expected) for line in p), p


@pytest.mark.parametrize(("limits", "expected"), [
    ({"max_header_size": "10"}, "limits.max_header_size: must be between 1KiB and 1MiB"),
    ({"max_header_size": "huge"}, "limits.max_header_size: expected a size"),
    ({"max_headers": 3}, "limits.max_headers: must be at least 16"),
    ({"max_connections": -1}, "limits.max_connections: must be a positive number"),
    ({"max_connections": "many"}, "limits.max_connections: must be an integer"),
    ({"client_timeout": "0s"}, "limits.client_timeout: must be at least 1s"),
    ({"send_timeout": "500ms"}, "limits.send_timeout: must be at least 1s"),
    ({"send_timeout": "forever"}, "limits.send_timeout: expected a duration"),
    ({"max_connections_per_client": -2},
     "limits.max_connections_per_client: must be a positive number"),
    ({"max_connections_per_client": "x"}, "limits.max_connections_per_client: must be an integer"),
    ({"rate_limit": {"burst": 5}}, "limits.rate_limit.rate: is required"),
    ({"rate_limit": {"rate": 1, "burst": 0}}, "limits.rate_limit.burst: must be at least 1"),
    ({"rate_limit": {"rate": 1, "per": "ip"}}, "limits.rate_limit.per: unknown key"),
])
def test_limits_problems_name_their_key(tmp_path: Path, limits: dict[str, Any], expected: str) -> None:
    p = problems({"limits": limits}, tmp_path)
    assert any(line.startswith(expected) for line in p), p


def test_check_config_masks_every_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    upstream_secret, client_secret = "Upstream-S3cret-0b9e", "Client-S3cret-71aa"
    ca = TestCA(tmp_path / "pki")
    srv = ca.server()
    ht = write_htpasswd(tmp_path / "htpasswd", {"alice": client_secret})
    (tmp_path / "ghcr-token").write_text(upstream_secret + "\n")
    monkeypatch.setenv("HUB_TOKEN", upstream_secret)
    cfg = {
        "listen": "127.0.0.1:5000", "cache": {"dir": str(tmp_path / "cache")},
        "upstreams": {"docker.io": {"url": "https://registry-1.docker.io", "username": "robot",
                                    "password_env": "HUB_TOKEN"},
                      "ghcr.io": {"url": "https://ghcr.io", "username": "robot",
                                  "password_file": str(tmp_path / "ghcr-token")}},
        "tls": {"cert": str(srv.cert), "key": str(srv.key)},
        "auth": {"htpasswd": str(ht), "token": {"key_file": str(tmp_path / "token.key")}},
        "limits": {"rate_limit": {"rate": 5}},
    }
    (tmp_path / "token.key").write_text(TOKEN_KEY)
    path = tmp_path / "mirror.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "password ****" in text and "tls: cert" in text and "auth: htpasswd" in text
    assert "rate 5.0/s burst 50" in text and "token on (key from file" in text
    hashes = [line.split(":", 1)[1] for line in ht.read_text().splitlines()]
    key_pem = srv.key.read_text()
    for secret in (upstream_secret, client_secret, *hashes, key_pem.splitlines()[1],
                   TOKEN_KEY):
        assert secret not in text


TOKEN_KEY = "0123456789abcdef" * 4  # 64 characters, as `openssl rand -hex 32` writes


def test_token_key_from_a_file_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "token.key").write_text(TOKEN_KEY + "\n")
    cfg = parse_config({"upstreams": UP, "auth": {"token": {"key_file": "token.key"}}},
                       env={}, base=tmp_path)
    token = cfg.auth.token if cfg.auth is not None else None
    assert token is not None and token.key is not None and token.key.reveal() == TOKEN_KEY
    assert TOKEN_KEY not in repr(cfg) and token.key_source == f"file {tmp_path / 'token.key'}"
    cfg = parse_config({"upstreams": UP, "auth": {"token": {"key_env": "MIRROR_TOKEN_KEY"}}},
                       env={"MIRROR_TOKEN_KEY": TOKEN_KEY}, base=tmp_path)
    token = cfg.auth.token if cfg.auth is not None else None
    assert token is not None and token.key is not None and token.key.reveal() == TOKEN_KEY
    cfg = parse_config({"upstreams": UP, "auth": {"token": {}}}, env={}, base=tmp_path)
    assert cfg.auth is not None and cfg.auth.token is not None and cfg.auth.token.key is None


@pytest.mark.parametrize(("token", "files", "env", "expected"), [
    ({"key_file": "missing.key"}, {}, {}, "auth.token.key_file: cannot read"),
    ({"key_file": "short.key"}, {"short.key": "abc123\n"}, {},
     "auth.token.key_file: the key is too short: at least 32 characters"),
    ({"key_file": "binary.key"}, {"binary.key": b"\xff\xfe" * 32}, {},
     "auth.token.key_file: "),
    ({"key_env": "NOPE"}, {}, {}, "auth.token.key_env: environment variable NOPE is not set"),
    ({"key_env": "SHORT"}, {}, {"SHORT": "x" * 31},
     "auth.token.key_env: the key is too short"),
    ({"key_file": "ok.key", "key_env": "OK"}, {"ok.key": TOKEN_KEY}, {"OK": TOKEN_KEY},
     "auth.token: give key_file or key_env, not both"),
    ({"key": TOKEN_KEY}, {}, {}, "auth.token.key: unknown key"),
])
def test_token_key_problems_name_their_key(tmp_path: Path, token: dict[str, Any],
                                           files: dict[str, str | bytes], env: dict[str, str],
                                           expected: str) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as e:
        parse_config({"upstreams": UP, "auth": {"token": token}}, env=env, base=tmp_path)
    p = e.value.problems
    assert len(p) == 1 and p[0].startswith(expected), p
    assert "\n" not in p[0] and TOKEN_KEY not in p[0] and "abc123" not in p[0]
