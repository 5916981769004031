"""Docker schema 1 (issue #16): its digest is over the JWS payload without the signatures, so
the signed bytes can never verify. The mirror does not ask for it, and an upstream that answers
it anyway (old registries ignore Accept) gets the client a clear 4xx, never a 502 loop."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import FakeRegistry
from tests.support.mirror_app import ALL_MANIFEST_TYPES, make_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
MT_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json", MT_V1_SIGNED)


def signed_schema1(repo: str, tag: str) -> tuple[bytes, str]:
    """A prettyjws schema 1 manifest as distribution stores it, and its registry digest (the
    sha256 of the payload: the body without the signatures)."""
    payload = json.dumps({
        "schemaVersion": 1, "name": repo, "tag": tag, "architecture": "amd64",
        "fsLayers": [{"blobSum": "sha256:" + "a" * 64}],
        "history": [{"v1Compatibility": json.dumps({"id": "1" * 64})}],
    }, indent=3).encode()
    tail = b"\n}"
    assert payload.endswith(tail)
    protected = base64.urlsafe_b64encode(json.dumps({
        "formatLength": len(payload) - len(tail),
        "formatTail": base64.urlsafe_b64encode(tail).decode().rstrip("="),
    }).encode()).decode().rstrip("=")
    signatures = json.dumps([{"header": {"alg": "ES256"}, "signature": "c2ln",
                              "protected": protected}], indent=3)
    body = payload[:-len(tail)] + b',\n   "signatures": ' + signatures.encode() + tail
    return body, "sha256:" + hashlib.sha256(payload).hexdigest()


async def test_schema1_is_never_asked_for_and_refused_clearly(
        aiohttp_client: ClientFactory, make_fake_registry: Callable[..., FakeRegistry],
        tmp_path: Path) -> None:
    fake = make_fake_registry()
    body, digest = signed_schema1("old/app", "1.0")
    fake.add_manifest("old/app", "1.0", body, MT_V1_SIGNED, digest=digest)
    mirror = await aiohttp_client(make_app({"docker.io": fake.url}, tmp_path / "cache",
                                           prefetch={"enabled": False}))
    accept = {"Accept": ", ".join((*ALL_MANIFEST_TYPES, *SCHEMA1))}  # as old clients send it
    for ref in ("1.0", digest, "1.0"):
        r = await mirror.get(f"/v2/old/app/manifests/{ref}", headers=accept)
        assert r.status == 400, (r.status, await r.text())
        err = (await r.json())["errors"][0]
        assert err["code"] == "MANIFEST_INVALID"
        assert "schema 1" in err["message"]
    asked = fake.filter(kind="manifest")
    assert asked
    for req in asked:
        sent = req.header("Accept") or ""
        assert sent and not any(mt in sent for mt in SCHEMA1), sent
