"""Registry auth: parse WWW-Authenticate challenges (pure) and cache Bearer tokens.

Docker token auth: a 401 carries `Bearer realm="...",service="...",scope="..."`; we GET the realm
with service and scope (Basic credentials if configured) and receive a token with `expires_in`
(default 60 s per the spec). Tokens are cached per (realm, service, scope, credential) so two
upstream credentials never share a token, and one repository's token is never used for another."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')
_SCHEME_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)")
MIN_TOKEN_LIFETIME = 60.0  # the token spec's default when expires_in is missing
EXPIRY_MARGIN = 10.0  # refresh a little early: a token expiring mid-request costs a round trip


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic" (lowercase)
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse one WWW-Authenticate header value; may hold several challenges."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = _SCHEME_RE.match(text, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            pm = _PARAM_RE.match(text, pos)
            # A bare token followed by a space starts the next challenge, not a parameter.
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
            pos = pm.end()
        out.append(Challenge(scheme, params))
        while pos < len(text) and text[pos] in ", ":
            pos += 1
    return out


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


@dataclass(frozen=True, slots=True)
class TokenKey:
    realm: str
    service: str
    scope: str
    credential: str  # the user name, or "" for anonymous; the password is never part of a key


@dataclass(slots=True)
class Token:
    value: str
    expires_at: float

    def fresh(self, now: float) -> bool:
        return now < self.expires_at - EXPIRY_MARGIN


def token_expiry(expires_in: object, issued_at: float) -> float:
    try:
        lifetime = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        lifetime = MIN_TOKEN_LIFETIME
    return issued_at + max(lifetime, MIN_TOKEN_LIFETIME)


class TokenCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens: dict[TokenKey, Token] = {}
        self._clock = clock

    def get(self, key: TokenKey) -> str | None:
        tok = self._tokens.get(key)
        if tok is None:
            return None
        if not tok.fresh(self._clock()):
            del self._tokens[key]
            return None
        return tok.value

    def put(self, key: TokenKey, value: str, expires_in: object) -> None:
        if len(self._tokens) > 10_000:  # bounded: one entry per repository scope
            now = self._clock()
            self._tokens = {k: t for k, t in self._tokens.items() if t.fresh(now)}
        self._tokens[key] = Token(value, token_expiry(expires_in, self._clock()))

    def drop(self, key: TokenKey) -> None:
        self._tokens.pop(key, None)
