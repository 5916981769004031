"""FakeRegistry: content, token and Basic auth, CDN redirects, rate limits, referrers."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable

from tests.support import FakeRegistry, fetch, layer_bytes
from tests.support.images import MT_OCI_INDEX, MT_OCI_MANIFEST

Make = Callable[..., FakeRegistry]


def _basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def _challenge(header: str | None) -> dict[str, str]:
    assert header is not None and header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def test_serves_manifests_blobs_and_tags(make_fake_registry: Make) -> None:
    fake = make_fake_registry()
    img = fake.add_image("library/app", "v1", [layer_bytes({"a": "1"})])
    fake.add_manifest("library/app", "v2", img.manifest, img.media_type)
    url = f"{fake.url}/v2/library/app"

    head = fetch(f"{url}/manifests/v1", "HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.header("Docker-Content-Digest") == img.digest
    assert head.header("Content-Type") == img.media_type
    assert head.header("Content-Length") == str(img.size)
    assert fetch(f"{url}/manifests/{img.digest}").body == img.manifest
    assert json.loads(fetch(f"{url}/manifests/nope").body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert fetch(f"{fake.url}/v2/other/manifests/v1").status == 404

    layer = img.layers[0]
    blob = fetch(f"{url}/blobs/{layer.digest}")
    assert len(blob.body) == layer.size
    part = fetch(f"{url}/blobs/{layer.digest}", headers={"Range": "bytes=10-19"})
    assert (part.status, part.body) == (206, blob.body[10:20])
    assert part.header("Content-Range") == f"bytes 10-19/{layer.size}"
    assert fetch(f"{url}/blobs/sha256:{'0' * 64}").status == 404

    page = fetch(f"{url}/tags/list?n=1")
    assert json.loads(page.body) == {"name": "library/app", "tags": ["v1"]}
    assert page.header("Link") == '</v2/library/app/tags/list?n=1&last=v1>; rel="next"'
    assert json.loads(fetch(f"{url}/tags/list?last=v1").body)["tags"] == ["v2"]
    assert fake.count(kind="manifest") == 4 and fake.count(kind="blob", method="GET") == 3


def test_bearer_token_flow(make_fake_registry: Make) -> None:
    fake = make_fake_registry(auth="bearer", token_ttl=120)
    img = fake.add_image("org/private", "1", [layer_bytes({"p": "1"})])
    manifest_url = f"{fake.url}/v2/org/private/manifests/1"

    r = fetch(manifest_url)
    assert r.status == 401
    ch = _challenge(r.header("WWW-Authenticate"))
    assert ch == {"realm": fake.token_url, "service": "fake-registry", "scope": "repository:org/private:pull"}

    tok = fetch(f"{ch['realm']}?service={ch['service']}&scope={ch['scope']}")
    doc = json.loads(tok.body)
    assert tok.status == 200 and doc["expires_in"] == 120 and doc["token"] == doc["access_token"]
    good = {"Authorization": f"Bearer {doc['token']}"}
    assert fetch(manifest_url, headers=good).header("Docker-Content-Digest") == img.digest
    assert fetch(fake.url + "/v2/", headers=good).status == 200

    assert fetch(manifest_url, headers={"Authorization": "Bearer forged"}).status == 401
    other = fake.issue_token(["repository:org/other:pull"])
    assert fetch(manifest_url, headers={"Authorization": f"Bearer {other}"}).status == 401
    push_only = fake.issue_token(["repository:org/private:push"])
    assert fetch(manifest_url, headers={"Authorization": f"Bearer {push_only}"}).status == 401
    expired = fake.issue_token(["repository:org/private:pull"], ttl=-1)
    assert fetch(manifest_url, headers={"Authorization": f"Bearer {expired}"}).status == 401
    fake.expire_tokens()
    assert fetch(manifest_url, headers=good).status == 401
    assert fake.count(kind="token") == 1 and fake.tokens_issued == 4


def test_token_endpoint_wants_credentials(make_fake_registry: Make) -> None:
    fake = make_fake_registry(auth="bearer", username="alice", password="s3cret")
    scope = "scope=repository:x:pull&service=fake-registry"
    assert fetch(f"{fake.token_url}?{scope}").status == 401
    assert fetch(f"{fake.token_url}?{scope}", headers=_basic("alice", "wrong")).status == 401
    ok = fetch(f"{fake.token_url}?{scope}", headers=_basic("alice", "s3cret"))
    assert ok.status == 200 and json.loads(ok.body)["token"]


def test_basic_auth(make_fake_registry: Make) -> None:
    fake = make_fake_registry(auth="basic", username="bob", password="pw")
    r = fetch(fake.url + "/v2/")
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Basic realm="fake-registry"'
    assert fetch(fake.url + "/v2/", headers=_basic("bob", "nope")).status == 401
    assert fetch(fake.url + "/v2/", headers=_basic("bob", "pw")).status == 200


def test_blob_redirect_to_cdn_and_auth_leak_detection(make_fake_registry: Make) -> None:
    fake = make_fake_registry(redirect_blobs=True)
    digest = fake.add_blob(b"cdn content" * 100)
    r = fetch(f"{fake.url}/v2/any/blobs/{digest}")
    location = r.header("Location")
    assert r.status == 307 and location is not None and location.startswith(fake.cdn_url)
    assert fetch(f"{fake.url}/v2/any/blobs/{digest}", "HEAD").status == 200  # HEAD: no redirect

    assert fetch(location).body == b"cdn content" * 100
    assert fake.cdn_auth_leaks == []
    fetch(location, headers={"Authorization": "Bearer leaked"})
    (leak,) = fake.cdn_auth_leaks
    assert leak.header("Authorization") == "Bearer leaked" and leak.kind == "cdn"


def test_rate_limit_headers(make_fake_registry: Make) -> None:
    fake = make_fake_registry(rate_limit=2)
    fake.add_image("library/r", "1", [layer_bytes({"r": "1"})])
    url = f"{fake.url}/v2/library/r/manifests/1"

    def remaining(method: str) -> tuple[int | None, str | None]:
        r = fetch(url, method)
        return r.status, r.header("ratelimit-remaining")

    assert fetch(url, "HEAD").header("ratelimit-limit") == "2;w=21600"
    assert remaining("HEAD") == (200, "2;w=21600")  # HEAD is free
    assert remaining("GET") == (200, "1;w=21600")
    assert remaining("GET") == (200, "0;w=21600")
    assert remaining("GET") == (429, "0;w=21600")
    assert remaining("HEAD") == (200, "0;w=21600")


def test_referrers(make_fake_registry: Make) -> None:
    plain = make_fake_registry()
    subject = plain.add_image("library/s", "1", [layer_bytes({"s": "1"})])
    assert fetch(f"{plain.url}/v2/library/s/referrers/{subject.digest}").status == 404

    fake = make_fake_registry(referrers=True)
    subject = fake.add_image("library/s", "1", [layer_bytes({"s": "1"})])
    sig = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                       "digest": fake.add_blob(b"{}")},
            "layers": [],
            "subject": {"mediaType": subject.media_type, "size": subject.size,
                        "digest": subject.digest},
        }
    ).encode()  # fmt: skip
    sig_digest = fake.add_manifest("library/s", None, sig, MT_OCI_MANIFEST)
    r = fetch(f"{fake.url}/v2/library/s/referrers/{subject.digest}")
    assert r.header("Content-Type") == MT_OCI_INDEX
    (desc,) = json.loads(r.body)["manifests"]
    assert desc["digest"] == sig_digest and desc["artifactType"] == "application/vnd.example.sig"
    assert fake.count(kind="referrers") == 1
