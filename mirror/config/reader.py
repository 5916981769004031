"""Config validation helpers: units, URLs, secrets, and a reader that collects every problem
with its key instead of stopping at the first."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mirror.config.model import Secret

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}


_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


_REGISTRY_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$")


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size like 20GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size like 20GiB or 500MB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    text = str(value).strip()
    total, pos = 0.0, 0
    for m in re.finditer(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|)", text):
        if m.start() != pos or (not m.group(2) and m.end() != len(text)):
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m, got {value!r}")
    return total


class _Reader:
    """Walks the YAML tree collecting problems instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str], base: Path) -> None:
        self.problems: list[str] = []
        self.env = env
        self.base = base

    def problem(self, key: str, msg: str) -> None:
        self.problems.append(f"{key}: {msg}")

    def section(self, raw: Any, key: str, known: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(key, f"must be a mapping, got {type(raw).__name__}")
            return {}
        for k in raw:
            if str(k) not in known:
                self.problem(f"{key}.{k}" if key else str(k), "unknown key")
        return raw

    def get(self, raw: dict[str, Any], key: str, path: str, kind: type, default: Any) -> Any:
        if key not in raw or raw[key] is None:
            return default
        value = raw[key]
        if kind is bool and not isinstance(value, bool):
            self.problem(path, f"must be true or false, got {value!r}")
            return default
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.problem(path, f"must be an integer, got {value!r}")
            return default
        if kind is str and not isinstance(value, str):
            self.problem(path, f"must be a string, got {value!r}")
            return default
        return value

    def convert(self, raw: dict[str, Any], key: str, path: str, fn: Any, default: Any) -> Any:
        if key not in raw or raw[key] is None:
            return default
        try:
            return fn(raw[key])
        except ValueError as e:
            self.problem(path, str(e))
            return default

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.base / p


def _url(reader: _Reader, path: str, value: Any, schemes: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or not value:
        reader.problem(path, "is required (a URL)")
        return None
    u = urlsplit(value)
    if u.scheme not in schemes or not (u.netloc or u.scheme == "file"):
        reader.problem(path, f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return None
    if u.username or u.password:
        reader.problem(path, "must not contain credentials; use username and password_env")
        return None
    return value.rstrip("/")


def _password(reader: _Reader, raw: dict[str, Any], path: str) -> Secret | None:
    env_name = reader.get(raw, "password_env", f"{path}.password_env", str, None)
    file_name = reader.get(raw, "password_file", f"{path}.password_file", str, None)
    if "password" in raw:
        reader.problem(f"{path}.password", "secrets are not read from the config file; "
                       "use password_env or password_file")
    if env_name and file_name:
        reader.problem(path, "give password_env or password_file, not both")
        return None
    if env_name:
        if env_name not in reader.env:
            reader.problem(f"{path}.password_env", f"environment variable {env_name} is not set")
            return None
        return Secret(reader.env[env_name])
    if file_name:
        try:
            return Secret(reader.path(file_name).read_text().strip())
        except OSError as e:
            reader.problem(f"{path}.password_file", f"cannot read: {e.strerror}")
    return None


def _readable(reader: _Reader, raw: dict[str, Any], key: str, path: str) -> Path | None:
    value = reader.get(raw, key, path, str, None)
    if not value:
        return None
    p = reader.path(value)
    try:
        p.read_bytes()
    except OSError as e:
        reader.problem(path, f"cannot read {p}: {e.strerror}")
        return None
    return p


def _str_list(reader: _Reader, raw: dict[str, Any], key: str, path: str,
              default: tuple[str, ...]) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        reader.problem(path, "must be a non-empty list of strings")
        return default
    return tuple(value)
