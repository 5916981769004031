"""Pure pieces of client auth and limits with a fake clock: token expiry and tampering, the
token bucket's refill, htpasswd parsing, and a TLS reload that must not break the context."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mirror.auth.clientauth import TokenIssuer
from mirror.auth.htpasswd import HtpasswdFile
from mirror.config import RateLimitConfig, TlsConfig
from mirror.config.htpasswd import parse_htpasswd
from mirror.http.limits import RateLimiter
from mirror.http.tls import ServerTLS
from tests.support.certs import TestCA, served_serial, write_htpasswd


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_expire_and_cannot_be_forged() -> None:
    clock = Clock()
    issuer = TokenIssuer(60, clock)
    token = issuer.issue("alice")
    ident = issuer.verify(token)
    assert ident.valid and ident.user == "alice"
    anon = issuer.verify(issuer.issue(None))
    assert anon.valid and anon.user is None
    payload, _, sig = token.partition(".")
    assert not TokenIssuer(60, clock).verify(token).valid  # another process's key
    assert not issuer.verify(payload + "." + sig[::-1]).valid
    assert not issuer.verify(payload).valid
    assert not issuer.verify("").valid
    clock.now += 61
    assert not issuer.verify(token).valid


def test_tokens_signed_with_one_key_verify_in_every_issuer_holding_it() -> None:
    """Workers (and replicas with auth.token.key_file) build their own issuers from one key."""
    clock = Clock()
    key = b"k" * 32
    token = TokenIssuer(60, clock, key=key).issue("alice")
    ident = TokenIssuer(60, clock, key=key).verify(token)
    assert ident.valid and ident.user == "alice"
    assert not TokenIssuer(60, clock, key=b"x" * 32).verify(token).valid
    assert not TokenIssuer(60, clock).verify(token).valid


def test_token_bucket_refills_at_the_configured_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimitConfig(rate=2.0, burst=3), CollectorRegistry(), clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # buckets are per client
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 100  # never more than the burst
    assert [limiter.take("a") for _ in range(4)][-1] > 0


def test_htpasswd_parsing_and_checks(tmp_path: Path) -> None:
    f = write_htpasswd(tmp_path / "htpasswd", {"alice": "pw-a", "bob": "pw-b"})
    # Apache's htpasswd -B writes $2y$: the same algorithm.
    f.write_text(f.read_text().replace("$2b$", "$2y$", 1))
    assert set(parse_htpasswd(f.read_text())) == {"alice", "bob"}
    users = HtpasswdFile(f)

    async def checks() -> list[bool]:
        return [await users.check("alice", "pw-a"), await users.check("alice", "pw-a"),
                await users.check("alice", "pw-b"), await users.check("carol", "pw-a"),
                await users.check("bob", "pw-b")]

    assert asyncio.run(checks()) == [True, True, False, False, True]
    f.write_text("alice:not-bcrypt\n")
    users.reload()  # a broken file is refused; the users we had stay
    assert users.users == {"alice", "bob"}
    with pytest.raises(ValueError, match="line 2: user alice appears twice"):
        parse_htpasswd("alice:" + "$2b$04$" + "a" * 53 + "\nalice:" + "$2b$04$" + "b" * 53)


def test_tls_reload_refuses_a_mismatched_pair(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    first, second = ca.server("first"), ca.server("second")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    tls = ServerTLS(TlsConfig(cert, key))
    shutil.copy(second.cert, cert)  # the key is still the first cert's
    assert tls.reload() is False

    async def serve_once() -> int:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.context)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(served_serial, "127.0.0.1", port, ca.cert)
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(serve_once()) == first.serial  # the context still works
    shutil.copy(second.key, key)
    assert tls.reload() is True
    assert asyncio.run(serve_once()) == second.serial
    assert tls.context.verify_mode == ssl.CERT_NONE
