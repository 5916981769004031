"""Config sections for who may pull and how they connect: tls, auth (users, rules, tokens), limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from mirror.config.htpasswd import parse_htpasswd
from mirror.config.model import (
    AccessRule,
    AuthConfig,
    LimitsConfig,
    RateLimitConfig,
    Secret,
    TlsConfig,
    TokenConfig,
    UpstreamConfig,
)
from mirror.config.reader import (
    _readable,
    _Reader,
    _str_list,
    _url,
    parse_duration,
    parse_size,
)


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal; fail instead.
    raise ValueError("encrypted private keys are not supported")


def _tls(reader: _Reader, raw: Any) -> TlsConfig | None:
    if raw is None:
        return None
    sec = reader.section(raw, "tls", {"cert", "key", "client_ca"})
    cert = _readable(reader, sec, "cert", "tls.cert")
    key = _readable(reader, sec, "key", "tls.key")
    client_ca = _readable(reader, sec, "client_ca", "tls.client_ca")
    for k in ("cert", "key"):
        if not sec.get(k):
            reader.problem(f"tls.{k}", "is required (a PEM file)")
    if cert is None or key is None:
        return None
    import ssl  # only configs with TLS pay for it

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, _no_password)
    except (ssl.SSLError, ValueError) as e:
        reader.problem("tls.key", f"cert and key do not load as a pair: {getattr(e, 'reason', e)}")
        return None
    if client_ca is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(client_ca)
        except ssl.SSLError as e:
            reader.problem("tls.client_ca", f"not a PEM CA bundle: {e.reason}")
    return TlsConfig(cert, key, client_ca)


def _rules(reader: _Reader, raw: Any, upstreams: Mapping[str, UpstreamConfig],
           users: frozenset[str] | None) -> tuple[AccessRule, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        reader.problem("auth.rules", "must be a list of rules")
        return None
    rules = []
    for i, item in enumerate(raw):
        path = f"auth.rules[{i}]"
        sec = reader.section(item, path, {"allow", "deny", "users", "upstreams", "repositories"})
        if ("allow" in sec) == ("deny" in sec):
            reader.problem(path, "needs exactly one of allow: true or deny: true")
            continue
        verb: Literal["allow", "deny"] = "allow" if "allow" in sec else "deny"
        if sec[verb] is not True:
            reader.problem(f"{path}.{verb}", "must be true")
        who = _str_list(reader, sec, "users", f"{path}.users", ())
        ups = _str_list(reader, sec, "upstreams", f"{path}.upstreams", ("*",))
        repos = _str_list(reader, sec, "repositories", f"{path}.repositories", ("**",))
        for up in ups:
            if not any(c in up for c in "*?[") and up not in upstreams:
                reader.problem(f"{path}.upstreams", f"{up!r} is not one of upstreams")
        for user in who:
            if users is not None and user not in ("*", "anonymous") and user not in users:
                reader.problem(f"{path}.users", f"{user!r} is not in auth.htpasswd")
        rules.append(AccessRule(verb, who, ups, repos))
    return tuple(rules)


MIN_TOKEN_KEY = 32  # characters: at least the 256 bits of the HMAC-SHA256 it keys, as hex/base64


def _token_key(reader: _Reader, tok: dict[str, Any]) -> tuple[Secret | None, str | None]:
    """auth.token.key_file / key_env: the key signing Bearer tokens, as text (whitespace
    around it ignored). Problems name the key and never show its value."""
    file_name = reader.get(tok, "key_file", "auth.token.key_file", str, None)
    env_name = reader.get(tok, "key_env", "auth.token.key_env", str, None)
    if file_name and env_name:
        reader.problem("auth.token", "give key_file or key_env, not both")
        return None, None
    if file_name:
        path, p = "auth.token.key_file", reader.path(file_name)
        try:
            value = p.read_bytes().decode().strip()
        except OSError as e:
            reader.problem(path, f"cannot read {p}: {e.strerror}")
            return None, None
        except UnicodeDecodeError:
            reader.problem(path, f"{p} is not text; write the key as text "
                                 "(e.g. openssl rand -hex 32)")
            return None, None
        source = f"file {p}"
    elif env_name:
        path = "auth.token.key_env"
        if env_name not in reader.env:
            reader.problem(path, f"environment variable {env_name} is not set")
            return None, None
        value, source = reader.env[env_name].strip(), f"environment variable {env_name}"
    else:
        return None, None
    if len(value) < MIN_TOKEN_KEY:
        reader.problem(path, f"the key is too short: at least {MIN_TOKEN_KEY} characters "
                             "(e.g. openssl rand -hex 32)")
        return None, None
    return Secret(value), source


def _auth(reader: _Reader, raw: Any, upstreams: Mapping[str, UpstreamConfig]) -> AuthConfig | None:
    if raw is None:
        return None
    sec = reader.section(raw, "auth", {"htpasswd", "realm", "rules", "policy", "default",
                                       "protect_metrics", "protect_status", "token"})
    d = AuthConfig()
    htpasswd = _readable(reader, sec, "htpasswd", "auth.htpasswd")
    users: frozenset[str] | None = None
    if htpasswd is not None:
        try:
            users = frozenset(parse_htpasswd(htpasswd.read_text()))
        except (ValueError, UnicodeDecodeError) as e:
            reader.problem("auth.htpasswd", str(e))
    realm = reader.get(sec, "realm", "auth.realm", str, d.realm)
    if '"' in realm or "\\" in realm:
        reader.problem("auth.realm", "must not contain quotes or backslashes")
        realm = d.realm
    policy = reader.get(sec, "policy", "auth.policy", str, d.policy)
    if policy not in ("first-match", "deny-overrides"):
        reader.problem("auth.policy", "must be first-match or deny-overrides")
        policy = d.policy
    default = reader.get(sec, "default", "auth.default", str, d.default)
    if default not in ("allow", "deny"):
        reader.problem("auth.default", "must be allow or deny")
        default = d.default
    rules = _rules(reader, sec.get("rules"), upstreams, users)
    token = None
    if sec.get("token") is not None:
        tok = reader.section(sec["token"], "auth.token", {"ttl", "realm", "key_file", "key_env"})
        ttl = reader.convert(tok, "ttl", "auth.token.ttl", parse_duration, TokenConfig.ttl)
        if ttl < 1:
            reader.problem("auth.token.ttl", "must be at least 1s")
        token_realm = tok.get("realm")
        if token_realm is not None:
            token_realm = _url(reader, "auth.token.realm", token_realm, ("http", "https"))
        key, source = _token_key(reader, tok)
        token = TokenConfig(max(ttl, 1.0), token_realm, key, source)
    return AuthConfig(
        htpasswd=htpasswd,
        realm=realm,
        rules=d.rules if rules is None else rules,
        policy=policy,
        default=default,
        protect_metrics=reader.get(sec, "protect_metrics", "auth.protect_metrics", bool, True),
        protect_status=reader.get(sec, "protect_status", "auth.protect_status", bool, True),
        token=token,
    )


def _limits(reader: _Reader, raw: Any) -> LimitsConfig:
    sec = reader.section(raw, "limits", {"max_header_size", "max_headers", "max_connections",
                                         "client_timeout", "rate_limit", "send_timeout",
                                         "max_connections_per_client"})
    d = LimitsConfig()
    header = reader.convert(sec, "max_header_size", "limits.max_header_size", parse_size,
                            d.max_header_size)
    if not 1024 <= header <= 1024 * 1024:
        reader.problem("limits.max_header_size", "must be between 1KiB and 1MiB")
        header = d.max_header_size
    count = reader.get(sec, "max_headers", "limits.max_headers", int, d.max_headers)
    if count < 16:
        reader.problem("limits.max_headers", "must be at least 16")
        count = d.max_headers
    conns = reader.get(sec, "max_connections", "limits.max_connections", int, d.max_connections)
    if conns == 0:
        conns = None  # explicitly unlimited
    elif conns is not None and conns < 0:
        reader.problem("limits.max_connections", "must be a positive number, or 0 for unlimited")
        conns = d.max_connections
    timeout = reader.convert(sec, "client_timeout", "limits.client_timeout", parse_duration,
                             d.client_timeout)
    if timeout < 1:
        reader.problem("limits.client_timeout", "must be at least 1s")
        timeout = d.client_timeout
    send = reader.convert(sec, "send_timeout", "limits.send_timeout", parse_duration,
                          d.send_timeout)
    if send < 1:
        reader.problem("limits.send_timeout", "must be at least 1s")
        send = d.send_timeout
    per_client = reader.get(sec, "max_connections_per_client", "limits.max_connections_per_client",
                            int, d.max_connections_per_client)
    if per_client == 0:
        per_client = None  # explicitly unlimited
    elif per_client is not None and per_client < 0:
        reader.problem("limits.max_connections_per_client",
                       "must be a positive number, or 0 for unlimited")
        per_client = d.max_connections_per_client
    rate_limit = None
    if sec.get("rate_limit") is not None:
        rl = reader.section(sec["rate_limit"], "limits.rate_limit", {"rate", "burst"})
        rate = reader.convert(rl, "rate", "limits.rate_limit.rate", float, 0.0)
        if rate <= 0:
            reader.problem("limits.rate_limit.rate", "is required: requests per second (> 0)")
        burst = reader.get(rl, "burst", "limits.rate_limit.burst", int, max(1, int(rate * 10)))
        if burst < 1:
            reader.problem("limits.rate_limit.burst", "must be at least 1")
        rate_limit = RateLimitConfig(max(rate, 0.001), max(burst, 1))
    return LimitsConfig(header, count, conns, timeout, rate_limit, send, per_client)
