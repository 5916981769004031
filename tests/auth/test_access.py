"""Access rules without I/O: globs, users, both policies and the default."""

from __future__ import annotations

import pytest

from mirror.auth.access import AccessPolicy
from mirror.config import AccessRule
from mirror.oci.globs import glob_regex


@pytest.mark.parametrize(("pattern", "name", "match"), [
    ("library/*", "library/nginx", True),
    ("library/*", "library/a/b", False),
    ("library/**", "library/a/b", True),
    ("**", "org/team/app", True),
    ("org/*/app", "org/team/app", True),
    ("org/*/app", "org/team/x/app", False),
    ("app-?", "app-a", True),
    ("app-?", "app-ab", False),
    ("a.b+c", "a.b+c", True),
    ("a.b+c", "aXb+c", False),  # regex metacharacters are literal
    ("ghcr.io", "ghcr.io", True),
    ("*.io", "quay.io", True),
])
def test_globs(pattern: str, name: str, match: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(name)) is match


RULES = (
    AccessRule("allow", users=("anonymous",), upstreams=("docker.io",), repositories=("library/*",)),
    AccessRule("deny", users=("bob",), repositories=("org/secret/**",)),
    AccessRule("allow", users=("*",)),
)


def test_first_match() -> None:
    p = AccessPolicy(RULES)
    assert p.decide(None, "docker.io", "library/nginx").allowed
    assert not p.decide(None, "docker.io", "library/a/b").allowed
    assert not p.decide(None, "ghcr.io", "library/nginx").allowed
    d = p.decide(None, "docker.io", "org/app")
    assert not d.allowed and d.rule is None  # nothing matched: the default
    d = p.decide("bob", "ghcr.io", "org/secret/app")
    assert not d.allowed and d.rule == 1
    assert p.decide("bob", "ghcr.io", "org/public/app").allowed
    assert p.decide("alice", "ghcr.io", "org/secret/app").allowed


def test_order_matters_for_first_match_but_not_for_deny_overrides() -> None:
    broad_first = (AccessRule("allow", users=("*",)),
                   AccessRule("deny", users=("bob",), repositories=("org/secret/**",)))
    assert AccessPolicy(broad_first).decide("bob", "x", "org/secret/app").allowed
    d = AccessPolicy(broad_first, "deny-overrides").decide("bob", "x", "org/secret/app")
    assert not d.allowed and d.rule == 1
    d = AccessPolicy(broad_first, "deny-overrides").decide("bob", "x", "org/app")
    assert d.allowed and d.rule == 0


def test_users_omitted_means_everyone_and_star_means_authenticated() -> None:
    everyone = AccessPolicy((AccessRule("allow", repositories=("public/*",)),))
    assert everyone.decide(None, "x", "public/a").allowed
    assert everyone.decide("alice", "x", "public/a").allowed
    authed = AccessPolicy((AccessRule("allow", users=("*",)),))
    assert authed.decide("alice", "x", "anything/at/all").allowed
    assert not authed.decide(None, "x", "anything").allowed


def test_default_allow() -> None:
    p = AccessPolicy((AccessRule("deny", users=("anonymous",), upstreams=("ghcr.io",)),),
                     default="allow")
    assert p.decide(None, "docker.io", "library/x").allowed
    assert not p.decide(None, "ghcr.io", "org/x").allowed
    assert p.decide("alice", "ghcr.io", "org/x").allowed


def test_no_rules_default_config_allows_authenticated_only() -> None:
    from mirror.config import AuthConfig

    a = AuthConfig()
    p = AccessPolicy(a.rules, a.policy, a.default)
    assert p.decide("alice", "docker.io", "library/x").allowed
    assert not p.decide(None, "docker.io", "library/x").allowed
