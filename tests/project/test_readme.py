"""The README states facts the code decides: they are checked here, so they cannot drift.

- Configuration reference: the table's keys are exactly the keys mirror/config.py accepts.
  The code's side is recorded while parsing a config that has every documented key: each
  `_Reader.section(raw, path, known)` call reports which keys that section accepts, so a key
  added to the code without a README row fails, and so does a row for a key the code dropped.
- Metrics: the table lists exactly the metric families a running `mirror serve` exposes, with
  every optional feature that adds metrics turned on.
- Commands: every subcommand is in the commands table, and its `--help` describes it and every
  option.
- Links: every relative link points at a file or directory of the repository.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from mirror import config as config_module
from mirror.cli.main import build_parser
from mirror.config import reader as config_reader
from mirror.oci.errors import ConfigError
from tests.support.mirror_proc import MirrorProcess, mirror_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
NAME = "<name>"
SAMPLE_UPSTREAM = "registry.example"  # stands for <name> while parsing


def section(title: str) -> str:
    """The text under `## title` up to the next `## ` heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def first_cells(text: str) -> list[str]:
    """The backticked first cell of every table row (header and rule rows skipped)."""
    cells = []
    for line in text.splitlines():
        m = re.match(r"^\|\s*`([^`]+)`", line)
        if m:
            cells.append(m.group(1))
    return cells


# ------------------------------------------------------------------ configuration reference


def documented_keys() -> set[str]:
    keys = set(first_cells(section("Configuration reference")))
    assert len(keys) > 50, keys
    return keys


def _walk(path: str) -> list[str]:
    # "auth.rules[].allow" -> ["auth", "rules", "[]", "allow"]; "upstreams.<name>.url" keeps <name>
    parts: list[str] = []
    for piece in path.split("."):
        if piece.endswith("[]"):
            parts += [piece[:-2], "[]"]
        else:
            parts.append(piece)
    return parts


def config_with(keys: set[str]) -> dict[str, Any]:
    """A raw config holding every documented key, so the parser visits every section. Values
    are None (= not given) except where a section needs to exist; problems are expected."""
    raw: dict[str, Any] = {}
    for key in sorted(keys):
        node: Any = raw
        parts = [SAMPLE_UPSTREAM if p == NAME else p for p in _walk(key)]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "[]":
                continue
            nxt = None if last else parts[i + 1]
            if nxt == "[]":
                lst = node.setdefault(part, [{}]) if isinstance(node.get(part), list) else None
                if lst is None:
                    node[part] = lst = [{}]
                node = lst[0]
            elif last:
                node.setdefault(part, None)
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
    return raw


def accepted_keys(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every key the config code accepts in the sections `raw` makes it visit."""
    seen: dict[str, set[str]] = {}
    original = config_reader._Reader.section

    def recording(self: Any, value: Any, key: str, known: set[str]) -> dict[str, Any]:
        path = re.sub(r"\[\d+\]", "[]", key)
        if path.startswith(f"upstreams.{SAMPLE_UPSTREAM}"):
            path = f"upstreams.{NAME}" + path[len(f"upstreams.{SAMPLE_UPSTREAM}"):]
        seen.setdefault(path, set()).update(known)
        result: dict[str, Any] = original(self, value, key, known)
        return result

    monkeypatch.setattr(config_reader._Reader, "section", recording)
    try:
        config_module.parse_config(raw, env={}, base=Path("/nonexistent"))
    except ConfigError:
        pass  # None values for required keys: the sections were visited all the same
    keys = set()
    for path, known in seen.items():
        for k in known:
            keys.add(f"{path}.{k}" if path else k)
    return keys


def test_config_reference_matches_the_config_code(monkeypatch: pytest.MonkeyPatch) -> None:
    documented = documented_keys()
    accepted = accepted_keys(config_with(documented), monkeypatch)
    # every visited section was reached (else a section's keys would silently go unchecked)
    assert "cache.object_store.url" in accepted and "auth.rules[].allow" in accepted

    def covered(key: str) -> bool:
        """A key is documented by its own row or by rows for keys under it."""
        return key in documented or any(d.startswith((key + ".", key + "[]")) for d in documented)

    missing = sorted(k for k in accepted if not covered(k))
    assert not missing, f"config keys without a row in the README's config reference: {missing}"

    def accepted_key(key: str) -> bool:
        # upstreams.<name> itself is a mapping entry, not a key of a section
        return key in accepted or any(a.startswith(key + ".") for a in accepted)

    unknown = sorted(k for k in documented if not accepted_key(k))
    assert not unknown, f"README documents keys mirror/config.py does not accept: {unknown}"


def test_the_key_recorder_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is only as good as the recording: a key the parser rejects is absent."""
    accepted = accepted_keys({"cache": {"no_such_key": 1}, "tls": {"cert": None}}, monkeypatch)
    assert "cache.dir" in accepted and "tls.client_ca" in accepted
    assert "cache.no_such_key" not in accepted


# ------------------------------------------------------------------ metrics


def documented_metrics() -> set[str]:
    names = set()
    for cell in first_cells(section("Metrics")):
        names.add(cell)
    assert all(n.startswith("mirror_") for n in names), names
    return names


def exposed_metrics(tmp_path: Path) -> set[str]:
    """Metric families of a real `mirror serve` with client auth, the rate limit, the
    connection limit and a cold tier on (features that register metrics of their own)."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    cfg = mirror_config({"docker.io": "http://127.0.0.1:9"}, tmp_path / "cache",
                        auth={"htpasswd": str(htpasswd), "protect_metrics": False},
                        limits={"rate_limit": {"rate": 100}, "max_connections": 100})
    cfg["cache"]["object_store"] = {"url": f"file://{tmp_path / 'cold'}"}
    (tmp_path / "cold").mkdir()
    with MirrorProcess(cfg, workdir=tmp_path) as proc, \
            urllib.request.urlopen(f"{proc.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m and not m.group(1).endswith("_created"):
            names.add(m.group(1))
    return names


def test_metrics_list_matches_a_running_mirror(tmp_path: Path) -> None:
    documented = documented_metrics()
    exposed = exposed_metrics(tmp_path)
    assert exposed - documented == set(), "metrics missing from the README's Metrics table"
    assert documented - exposed == set(), "README lists metrics a running mirror does not expose"


# ------------------------------------------------------------------ commands and --help


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("mirror has no subcommands")


def test_every_command_is_in_the_readme() -> None:
    table = section("Commands")
    for name in subcommands():
        assert f"`mirror {name}" in table, f"mirror {name} is missing from the Commands table"


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_help_describes_the_command_and_every_option(command: str) -> None:
    sub = subcommands()[command]
    assert sub.description and len(sub.description) > 40, f"mirror {command}: no description"
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"mirror {command} {action.dest}: no help text"
    r = subprocess.run([sys.executable, "-m", "mirror", command, "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: mirror {command}")
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in r.stdout


def test_top_level_help_lists_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "mirror", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    parser = build_parser()
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub_action._choices_actions}
    for name in subcommands():
        assert helps.get(name), f"mirror {name} has no one-line help in `mirror --help`"
        assert name in r.stdout


# ------------------------------------------------------------------ links


def test_relative_links_resolve() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link.split("#", 1)[0] for link in links
             if not link.startswith(("http://", "https://", "#", "mailto:"))]
    assert local, "no relative links found"
    missing = [link for link in local if link and not (ROOT / link).exists()]
    assert not missing, f"README links to missing paths: {missing}"
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", README, re.M)}
    bad = [a for a in re.findall(r"\]\(#([^)]+)\)", README) if a not in anchors]
    assert not bad, f"README links to missing headings: {bad}"
