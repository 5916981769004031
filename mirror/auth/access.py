"""Who may pull what: access rules (config `auth.rules`), evaluated without any I/O.

A pull is described by (user, upstream, repository): `user` is None for a client that sent no
credentials, `upstream` the canonical upstream name the router picked, `repository` the name as
that upstream knows it (after Docker Hub's `library/` rule, so `nginx` is `library/nginx`).

A rule matches when its users, upstreams and repositories all match:
  users         names from htpasswd; `*` any authenticated user; `anonymous` a client without
                credentials; omitted: everyone
  upstreams     globs on the upstream name (default `*`)
  repositories  globs on the repository (default `**`)
Globs: `*` matches within one path component, `**` across components, `?` one character; every
other character is literal. So `library/*` is `library/nginx` but not `library/a/b`.

Two policies (`auth.policy`):
  first-match     (default) rules are read top to bottom and the first match decides, like a
                  firewall: put narrow denies above broad allows.
  deny-overrides  every matching rule counts and one deny beats any number of allows; the order
                  of rules does not matter.
When no rule matches, `auth.default` decides (deny unless configured otherwise). Without an
`auth.rules` key the rule list is `[{allow: true, users: ["*"]}]`: any authenticated user may
pull anything and anonymous clients nothing.

The check runs after routing and before the pull service is called, so a denied pull never
causes an upstream request (mirror/clientauth.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mirror.config import AccessRule
from mirror.oci.globs import glob_regex

ANONYMOUS = "anonymous"
ANY_USER = "*"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: int | None  # index in auth.rules of the deciding rule; None: auth.default decided

    def describe(self) -> str:
        return f"rule {self.rule}" if self.rule is not None else "default"


class _CompiledRule:
    __slots__ = ("allow", "anyone", "names", "repos", "upstreams")

    def __init__(self, rule: AccessRule) -> None:
        self.allow = rule.action == "allow"
        self.anyone = not rule.users
        self.names = frozenset(rule.users)
        self.upstreams = [glob_regex(p) for p in rule.upstreams]
        self.repos = [glob_regex(p) for p in rule.repositories]

    def matches(self, user: str | None, upstream: str, repo: str) -> bool:
        if not self.anyone:
            if user is None:
                if ANONYMOUS not in self.names:
                    return False
            elif ANY_USER not in self.names and user not in self.names:
                return False
        return (any(p.fullmatch(upstream) for p in self.upstreams)
                and any(p.fullmatch(repo) for p in self.repos))


class AccessPolicy:
    def __init__(self, rules: Sequence[AccessRule],
                 policy: Literal["first-match", "deny-overrides"] = "first-match",
                 default: Literal["allow", "deny"] = "deny") -> None:
        self._rules = [_CompiledRule(r) for r in rules]
        self._deny_overrides = policy == "deny-overrides"
        self._default = default == "allow"

    def decide(self, user: str | None, upstream: str, repo: str) -> Decision:
        allowed_by: int | None = None
        for i, rule in enumerate(self._rules):
            if not rule.matches(user, upstream, repo):
                continue
            if not self._deny_overrides or not rule.allow:
                return Decision(rule.allow, i)
            if allowed_by is None:
                allowed_by = i
        if allowed_by is not None:
            return Decision(True, allowed_by)
        return Decision(self._default, None)
