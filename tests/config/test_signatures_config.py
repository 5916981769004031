"""The `signatures` config section: one line per problem, each naming its key (issue #20)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirror.config import ConfigError, parse_config
from tests.support.cosign import CosignKey

UPSTREAMS = {"docker.io": {"url": "http://127.0.0.1:9"}}


def problems(tmp_path: Path, signatures: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config({"upstreams": UPSTREAMS, "signatures": signatures}, env={}, base=tmp_path)
    return e.value.problems


def test_a_valid_rule_loads_its_keys(tmp_path: Path) -> None:
    key = CosignKey.generate(tmp_path)
    config = parse_config({"upstreams": UPSTREAMS, "signatures": [
        {"upstreams": ["docker.io"], "repositories": ["myorg/**"], "keys": ["cosign.pub"],
         "mode": "warn"}]}, env={}, base=tmp_path)
    (rule,) = config.signatures
    assert rule.name == "signatures[0]" and rule.mode == "warn"
    assert rule.upstreams == ("docker.io",) and rule.repositories == ("myorg/**",)
    assert [k.name for k in rule.keys] == [str(key.pub_path)]


def test_unreadable_and_malformed_keys_are_named_by_index(tmp_path: Path) -> None:
    CosignKey.generate(tmp_path)
    (tmp_path / "junk.pub").write_text("not a key\n")
    found = problems(tmp_path, [{"keys": ["cosign.pub", "missing.pub", "junk.pub"]}])
    assert any(p.startswith("signatures[0].keys[1]: cannot read ") and "missing.pub" in p
               for p in found), found
    assert any(p.startswith("signatures[0].keys[2]: ") and "not a PEM public key" in p
               for p in found), found
    assert len(found) == 2, found


@pytest.mark.parametrize("rule,key,text", [
    ({"keys": []}, "signatures[0].keys", "non-empty list"),
    ({"keys": ["cosign.pub"], "mode": "audit"}, "signatures[0].mode", "enforce or warn"),
    ({"keys": ["cosign.pub"], "upstreams": ["ghcr.io"]}, "signatures[0].upstreams",
     "not one of upstreams"),
    ({"keys": ["cosign.pub"], "colour": "red"}, "signatures[0].colour", "unknown key"),
    ({"keyless": [{"issuer": "https://accounts.example", "identity": ".*"}],
      "trusted_root": "root.json"}, "signatures[0].keyless", "keyless rules are not supported"),
])
def test_bad_rules(tmp_path: Path, rule: dict[str, Any], key: str, text: str) -> None:
    CosignKey.generate(tmp_path)
    found = problems(tmp_path, [rule])
    assert any(p.startswith(key + ": ") and text in p for p in found), found


def test_not_a_list(tmp_path: Path) -> None:
    assert problems(tmp_path, {"keys": ["x"]}) == ["signatures: must be a list of rules"]


def test_check_config_prints_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(yaml.safe_dump({"upstreams": UPSTREAMS, "cache": {"dir": str(tmp_path / "c")},
                                   "signatures": [{"keys": ["nope.pub"]}]}))
    r = subprocess.run([sys.executable, "-m", "mirror", "check-config", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert "signatures[0].keys[0]: cannot read" in r.stdout + r.stderr


def test_check_config_lists_the_rules(tmp_path: Path) -> None:
    key = CosignKey.generate(tmp_path)
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(yaml.safe_dump({"upstreams": UPSTREAMS, "cache": {"dir": str(tmp_path / "c")},
                                   "signatures": [{"name": "org", "repositories": ["org/**"],
                                                   "keys": ["cosign.pub"], "mode": "warn"}]}))
    r = subprocess.run([sys.executable, "-m", "mirror", "check-config", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    assert (f"signatures: org (warn) upstreams *, repositories org/**, keys {key.pub_path}"
            in r.stdout), r.stdout
