"""The `signatures` section: which images must carry a valid cosign signature, by which keys.

    signatures:
      - upstreams: [docker.io]          # globs on the upstream name, like auth.rules
        repositories: ["myorg/**"]      # globs on the repository
        keys: [/etc/mirror/cosign.pub]  # PEM public keys; one valid signature by any suffices
        mode: enforce                   # or warn

Keys are read and parsed here, so `mirror check-config` names an unreadable or malformed key
file by its index. Keyless rules (`keyless:`, `trusted_root:`) are refused: verifying Fulcio
certificates and Rekor entries offline needs the sigstore library, which the mirror does not
ship (docs/security.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from mirror.config.model import SignatureRule, UpstreamConfig
from mirror.config.reader import _Reader, _str_list
from mirror.oci.cosign import KeyProblem, PublicKey, load_public_key

RULE_KEYS = {"name", "upstreams", "repositories", "keys", "mode", "keyless", "trusted_root"}


def _keys(reader: _Reader, sec: dict[str, Any], path: str) -> tuple[PublicKey, ...]:
    raw = sec.get("keys")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        reader.problem(f"{path}.keys", "must be a non-empty list of PEM public key files")
        return ()
    keys: list[PublicKey] = []
    for i, value in enumerate(raw):
        where = f"{path}.keys[{i}]"
        if not isinstance(value, str) or not value:
            reader.problem(where, f"must be a file name, got {value!r}")
            continue
        p = reader.path(value)
        try:
            pem = p.read_bytes()
        except OSError as e:
            reader.problem(where, f"cannot read {p}: {e.strerror}")
            continue
        try:
            keys.append(load_public_key(pem, str(p)))
        except KeyProblem as e:
            reader.problem(where, f"{p}: {e}")
    return tuple(keys)


def _signatures(reader: _Reader, raw: Any,
                upstreams: Mapping[str, UpstreamConfig]) -> tuple[SignatureRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        reader.problem("signatures", "must be a list of rules")
        return ()
    rules: list[SignatureRule] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        path = f"signatures[{i}]"
        sec = reader.section(item, path, RULE_KEYS)
        if not sec:
            if item is not None and isinstance(item, dict):
                reader.problem(path, "needs keys")
            continue
        if "keyless" in sec or "trusted_root" in sec:
            reader.problem(f"{path}.keyless" if "keyless" in sec else f"{path}.trusted_root",
                           "keyless rules are not supported: this mirror verifies only "
                           "key-based signatures (give keys: [cosign.pub])")
            continue
        ups = _str_list(reader, sec, "upstreams", f"{path}.upstreams", ("*",))
        repos = _str_list(reader, sec, "repositories", f"{path}.repositories", ("**",))
        for up in ups:
            if not any(c in up for c in "*?[") and up not in upstreams:
                reader.problem(f"{path}.upstreams", f"{up!r} is not one of upstreams")
        mode: Literal["enforce", "warn"] = "enforce"
        raw_mode = sec.get("mode", "enforce")
        if raw_mode == "warn":
            mode = "warn"
        elif raw_mode != "enforce":
            reader.problem(f"{path}.mode", f"must be enforce or warn, got {raw_mode!r}")
        name = reader.get(sec, "name", f"{path}.name", str, None) or path
        if name in names:
            reader.problem(f"{path}.name", f"{name!r} names another rule already")
        names.add(name)
        keys = _keys(reader, sec, path)
        if keys:
            rules.append(SignatureRule(name, keys, ups, repos, mode))
    return tuple(rules)
