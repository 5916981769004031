"""A token issuer for CNCF distribution's `auth: token`, as Docker Hub's auth.docker.io is one.

`GET /token?service=S&scope=repository:NAME:pull` with Basic credentials of a known user
answers `{"token": JWT}`: an RS256 JWT whose header carries the signing certificate (`x5c`),
issued by a test CA that distribution trusts through `rootcertbundle`; its `access` claim grants
what was asked (pull only). Unknown users or wrong passwords get a 401. distribution checks
the chain, the signature, `iss`, `aud` and the time claims, so a registry started with
`registry_config()` accepts exactly the tokens issued here.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from ._loop import LoopThread


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TokenIssuer:
    """On 127.0.0.1 (own thread and loop). `users`: name -> password."""

    def __init__(self, directory: Path, users: dict[str, str],
                 service: str = "mirror-test-registry", issuer: str = "mirror-test-issuer",
                 ttl: int = 300) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.users, self.service, self.issuer, self.ttl = dict(users), service, issuer, ttl
        self.issued: list[tuple[str, list[str]]] = []  # (user, scopes) per token
        self.refused = 0
        self._lock = threading.Lock()
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder()
              .subject_name(_name("mirror test token CA")).issuer_name(_name("mirror test token CA"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        # RS256 wants an RSA key; the certificate has no extended key usage, so distribution's
        # chain check (ExtKeyUsageAny) accepts it for signing tokens.
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        leaf = (x509.CertificateBuilder()
                .subject_name(_name(issuer)).issuer_name(ca.subject)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        self._x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
        self.root_bundle = directory / "token-root.crt"
        self.root_bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self._thread = LoopThread("token-issuer")
        self.port = self._thread.call(self._start())

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/token", self._token)
        return await self._thread.serve(app)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_config(self) -> str:
        """The `auth:` section for distribution's config (RegistryProcess(extra_config=...))."""
        q = json.dumps
        return ("auth:\n  token:\n"
                f"    realm: {q(self.realm)}\n    service: {q(self.service)}\n"
                f"    issuer: {q(self.issuer)}\n    rootcertbundle: {q(str(self.root_bundle))}\n")

    def _user(self, header: str | None) -> str | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        want = self.users.get(user)
        return user if want is not None and secrets.compare_digest(want, password) else None

    async def _token(self, request: web.Request) -> web.Response:
        user = self._user(request.headers.get("Authorization"))
        if user is None or request.query.get("service") != self.service:
            with self._lock:
                self.refused += 1
            return web.json_response({"errors": [{"code": "UNAUTHORIZED",
                                                  "message": "bad credentials"}]}, status=401)
        scopes = request.query.getall("scope", [])
        access: list[dict[str, object]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name:
                # Pull only: this issuer never grants a push, whatever was asked.
                granted = [a for a in actions.split(",") if a == "pull"]
                access.append({"type": "repository", "name": name, "actions": granted})
        with self._lock:
            self.issued.append((user, scopes))
        return web.json_response({"token": self.sign(user, access), "expires_in": self.ttl,
                                  "issued_at": datetime.datetime.now(datetime.UTC).isoformat()})

    def sign(self, subject: str, access: list[dict[str, object]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self._x5c}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + self.ttl,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def stop(self) -> None:
        self._thread.close()
