"""Signature rules (issue #20) against the real registry, through a recording tap.

Signatures are made by tests/support/cosign.py (written from cosign's published format, not
from the mirror's code) and pushed to the registry under `sha256-<hex>.sig`, or as sigstore
bundles in the referrers tag schema. Every image here has its own repository under sigtest/,
so the tap shows exactly which of its blobs were asked for."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import AMD64, ARM64, Catalog, Fault, ImagePusher, PushedImage, RecordingProxy
from tests.support.cosign import (
    CosignKey,
    push_bundle,
    push_signature,
    simple_signing_payload,
)
from tests.support.images import synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES, make_app
from tests.support.promtext import parse

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ACCEPT = ", ".join(ALL_MANIFEST_TYPES)


@dataclass
class Keys:
    good: CosignKey
    other: CosignKey


@dataclass
class Images:
    signed: PushedImage
    unsigned: PushedImage
    wrong_key: PushedImage
    tampered: PushedImage
    outside: PushedImage  # in a repository no rule matches
    index_signed: PushedImage  # only the index carries a signature
    index_unsigned: PushedImage
    bundle_signed: PushedImage
    bundle_wrong_key: PushedImage
    bad_annotation: PushedImage  # its .sig layer's signature is not base64


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("cosign-keys")
    return Keys(CosignKey.generate(d, "good"), CosignKey.generate(d, "other"))


@pytest.fixture(scope="module")
def images(catalog: Catalog, keys: Keys) -> Images:
    url = catalog.registry_url
    p = ImagePusher(url)

    def image(repo: str) -> PushedImage:
        return p.push_image(repo, "1.0", [synthetic_layer(repo.replace("/", "-"), 16)], oci=True)

    def index(repo: str) -> PushedImage:
        amd = p.push_image(repo, None, [synthetic_layer(f"{repo}-amd64".replace("/", "-"), 8)],
                           AMD64, oci=True)
        arm = p.push_image(repo, None, [synthetic_layer(f"{repo}-arm64".replace("/", "-"), 8)],
                           ARM64, oci=True)
        return p.push_index(repo, "1.0", [amd, arm], oci=True)

    imgs = Images(image("sigtest/signed"), image("sigtest/unsigned"), image("sigtest/wrongkey"),
                  image("sigtest/tampered"), image("elsewhere/unsigned"),
                  index("sigtest/index-signed"), index("sigtest/index-unsigned"),
                  image("sigtest/bundle"), image("sigtest/bundle-wrongkey"),
                  image("sigtest/bad-annotation"))
    push_signature(url, imgs.signed.repo, imgs.signed.digest, keys.good)
    push_signature(url, imgs.wrong_key.repo, imgs.wrong_key.digest, keys.other)
    # Signed by the right key, but the payload names another image: a signature moved over.
    push_signature(url, imgs.tampered.repo, imgs.tampered.digest, keys.good,
                   payload=simple_signing_payload(imgs.signed.digest, imgs.signed.repo))
    push_signature(url, imgs.index_signed.repo, imgs.index_signed.digest, keys.good)
    push_signature(url, imgs.bad_annotation.repo, imgs.bad_annotation.digest, keys.good,
                   signature="%%% not base64 %%%")
    for img, key in ((imgs.bundle_signed, keys.good), (imgs.bundle_wrong_key, keys.other)):
        push_bundle(url, img.repo, img.digest, img.media_type, img.size, key)
    return imgs


def rule(keys: Keys, mode: str = "enforce", **extra: Any) -> dict[str, Any]:
    return {"repositories": ["sigtest/**"], "keys": [str(keys.good.pub_path)], "mode": mode,
            **extra}


@pytest.fixture
def app_for(aiohttp_client: ClientFactory, registry_tap: RecordingProxy,
            tmp_path: Path) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(signatures: list[dict[str, Any]], **extra: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(make_app({"docker.io": registry_tap.url}, tmp_path / "cache",
                                             signatures=signatures, **extra))
    return make


async def get_manifest(client: TestClient[Any, Any], repo: str, ref: str) -> tuple[int, bytes]:
    r = await client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    return r.status, await r.read()


def blob_requests(tap: RecordingProxy, img: PushedImage) -> list[str]:
    """Requests the upstream saw for any blob of `img` (its children's included)."""
    tap.wait_idle()
    wanted = {b.digest for b in img.all_blobs()}
    return [r.path for r in tap.filter(kind="blob") if r.path.rsplit("/", 1)[1] in wanted]


async def checks(client: TestClient[Any, Any]) -> dict[str, float]:
    scrape = parse(await (await client.get("/metrics")).text())
    return scrape.by("mirror_signature_checks_total", "outcome")


def denied(body: bytes) -> str:
    err = json.loads(body)["errors"][0]
    assert err["code"] == "DENIED", err
    return str(err["message"])


async def test_signed_image_pulls(app_for: Any, images: Images, keys: Keys,
                                  registry_tap: RecordingProxy) -> None:
    client = await app_for([rule(keys)])
    status, body = await get_manifest(client, images.signed.repo, "1.0")
    assert status == 200 and body == images.signed.manifest
    layer = images.signed.layers[0]
    r = await client.get(f"/v2/{images.signed.repo}/blobs/{layer.digest}")
    assert r.status == 200 and len(await r.read()) == layer.size
    assert (await checks(client)).get("verified") == 1.0


@pytest.mark.parametrize("which,reason", [
    ("unsigned", "no signature"),
    ("wrong_key", "no valid signature for the configured keys"),
    ("tampered", "signs sha256:"),
    ("bundle_wrong_key", "no valid signature for the configured keys"),
    ("bad_annotation", "no valid base64 signature annotation"),
])
async def test_refused_with_no_blob_fetched(app_for: Any, images: Images, keys: Keys,
                                            registry_tap: RecordingProxy, which: str,
                                            reason: str) -> None:
    img: PushedImage = getattr(images, which)
    client = await app_for([rule(keys, name="org-signed")])  # prefetch on, as by default
    for ref in ("1.0", img.digest):
        status, body = await get_manifest(client, img.repo, ref)
        assert status == 403, body
        message = denied(body)
        assert "org-signed" in message and reason in message, message
    assert blob_requests(registry_tap, img) == [], registry_tap.describe()
    if which == "unsigned":  # nothing to read at all; the others' signature payloads only
        assert [r.path for r in registry_tap.filter(kind="blob") if f"/{img.repo}/" in r.path] == []
    assert (await checks(client)).get("refused") == 2.0


async def test_tampered_payload_names_the_other_image(app_for: Any, images: Images,
                                                      keys: Keys) -> None:
    client = await app_for([rule(keys)])
    status, body = await get_manifest(client, images.tampered.repo, "1.0")
    assert status == 403
    assert f"signs {images.signed.digest}, not {images.tampered.digest}" in denied(body)


async def test_image_no_rule_matches_pulls(app_for: Any, images: Images, keys: Keys) -> None:
    client = await app_for([rule(keys)])
    status, body = await get_manifest(client, images.outside.repo, "1.0")
    assert status == 200 and body == images.outside.manifest
    assert await checks(client) == {}


async def test_warn_mode_serves_counts_and_shows(app_for: Any, images: Images, keys: Keys) -> None:
    client = await app_for([rule(keys, mode="warn", name="soft")])
    status, body = await get_manifest(client, images.unsigned.repo, "1.0")
    assert status == 200 and body == images.unsigned.manifest
    assert (await checks(client)) == {"warn": 1.0}
    doc = await (await client.get("/status.json")).json()
    refusals = doc["signatures"]["recent_refusals"]
    assert [(r["digest"], r["rule"], r["mode"]) for r in refusals] == [
        (images.unsigned.digest, "soft", "warn")]
    page = await (await client.get("/")).text()
    assert "Signature policy" in page and images.unsigned.digest in page


async def test_signed_index_vouches_for_its_children(app_for: Any, images: Images,
                                                     keys: Keys,
                                                     registry_tap: RecordingProxy) -> None:
    client = await app_for([rule(keys)])
    status, body = await get_manifest(client, images.index_signed.repo, "1.0")
    assert status == 200 and body == images.index_signed.manifest
    for child in images.index_signed.children:  # no signature of their own
        status, body = await get_manifest(client, child.repo, child.digest)
        assert status == 200 and body == child.manifest
    # A client without index support gets the amd64 child, vouched for too.
    r = await client.get(f"/v2/{images.index_signed.repo}/manifests/1.0",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 200 and await r.read() == images.index_signed.child("amd64").manifest


async def test_unsigned_index_children_are_refused_one_by_one(app_for: Any, images: Images,
                                                              keys: Keys,
                                                              registry_tap: RecordingProxy) -> None:
    client = await app_for([rule(keys)])
    status, body = await get_manifest(client, images.index_unsigned.repo, "1.0")
    assert status == 200, body  # an index alone runs nothing; what it lists is checked
    for child in images.index_unsigned.children:
        status, body = await get_manifest(client, child.repo, child.digest)
        assert status == 403 and "no signature" in denied(body)
    r = await client.get(f"/v2/{images.index_unsigned.repo}/manifests/1.0",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 403
    assert blob_requests(registry_tap, images.index_unsigned) == [], registry_tap.describe()


async def test_sigstore_bundle_in_referrers_verifies(app_for: Any, images: Images,
                                                     keys: Keys) -> None:
    client = await app_for([rule(keys)])
    status, body = await get_manifest(client, images.bundle_signed.repo, "1.0")
    assert status == 200 and body == images.bundle_signed.manifest


async def test_signature_artifacts_are_served(app_for: Any, images: Images, keys: Keys) -> None:
    """cosign verify through the mirror reads the .sig manifest, which is not signed itself."""
    client = await app_for([rule(keys)])
    tag = images.signed.digest.replace(":", "-") + ".sig"
    status, _ = await get_manifest(client, images.signed.repo, tag)
    assert status == 200


async def test_verdicts_persist_and_hold_offline(aiohttp_client: ClientFactory,
                                                 registry_tap: RecordingProxy, images: Images,
                                                 keys: Keys, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    online = await aiohttp_client(make_app({"docker.io": registry_tap.url}, cache,
                                           signatures=[rule(keys)]))
    assert (await get_manifest(online, images.signed.repo, "1.0"))[0] == 200
    assert (await get_manifest(online, images.unsigned.repo, "1.0"))[0] == 403
    await online.close()
    with sqlite3.connect(cache / "index.db") as db:
        rows = dict(db.execute("SELECT digest, verdict FROM signature_verdicts").fetchall())
    assert rows[images.signed.digest] == "verified"
    assert rows[images.unsigned.digest] == "refused"

    registry_tap.clear()
    offline = await aiohttp_client(make_app({"docker.io": registry_tap.url}, cache,
                                            offline=True, signatures=[rule(keys)]))
    status, body = await get_manifest(offline, images.signed.repo, "1.0")
    assert status == 200 and body == images.signed.manifest
    status, body = await get_manifest(offline, images.unsigned.repo, "1.0")
    assert status == 403 and "no signature" in denied(body)
    assert registry_tap.requests == []
    await offline.close()

    # Another key: the verdicts of the old one do not apply; the cached .sig is checked again.
    other = await aiohttp_client(make_app(
        {"docker.io": registry_tap.url}, cache, offline=True,
        signatures=[{**rule(keys), "keys": [str(keys.other.pub_path)]}]))
    status, body = await get_manifest(other, images.signed.repo, "1.0")
    assert status == 403 and "no valid signature for the configured keys" in denied(body)


async def test_refusal_is_audited(app_for: Any, images: Images, keys: Keys,
                                  tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    client = await app_for([rule(keys)], log={"audit": str(audit)})
    assert (await get_manifest(client, images.wrong_key.repo, "1.0"))[0] == 403
    await client.close()  # flushes the audit writer
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    events = [x for x in lines if x.get("event") == "signature-refused"]
    assert len(events) == 1, lines
    assert events[0]["digest"] == images.wrong_key.digest
    assert events[0]["rule"] == "signatures[0]"
    assert events[0]["reason"] == "no valid signature for the configured keys"


async def test_a_signature_that_cannot_be_read_fails_closed_then_recovers(
        app_for: Any, images: Images, keys: Keys, registry_tap: RecordingProxy) -> None:
    """The payload blob arrives corrupt: refused with a clear reason (never a 500, never
    served), and not remembered: once the upstream sends good bytes the image pulls."""
    client = await app_for([rule(keys)])
    registry_tap.set_fault(Fault("corrupt", offset=10, match=f"/{images.signed.repo}/blobs/"))
    status, body = await get_manifest(client, images.signed.repo, "1.0")
    assert status == 403, body
    assert "could not be fetched" in denied(body)
    registry_tap.clear_fault()
    status, body = await get_manifest(client, images.signed.repo, "1.0")
    assert status == 200 and body == images.signed.manifest
