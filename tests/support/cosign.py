"""A cosign signer for tests, written only from cosign's published formats (sigstore/cosign
specs/SIGNATURE_SPEC.md and specs/BUNDLE_SPEC.md), independent of mirror/oci/cosign.py:

- `push_signature`: what `cosign sign --key cosign.key IMAGE@DIGEST` pushes: the payload blob
  (simple signing), a config blob, and an OCI manifest under the tag `sha256-<hex>.sig` whose
  layer carries the base64 ECDSA-P256/SHA-256 signature in `dev.cosignproject.cosign/signature`;
- `push_bundle`: a sigstore bundle v0.3 with a DSSE-wrapped in-toto statement whose subject is
  the image, attached as a referrer (a manifest with `subject` and `artifactType`) and listed
  in the referrers tag schema index `sha256-<hex>` (distribution 2.8 has no referrers API).

Keys are made with `cryptography`, and the public key file is PEM SubjectPublicKeyInfo, as
`cosign generate-key-pair` writes cosign.pub."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .images import RegistryClient

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compact(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class CosignKey:
    private: ec.EllipticCurvePrivateKey
    pub_path: Path

    @classmethod
    def generate(cls, directory: Path, name: str = "cosign") -> CosignKey:
        directory.mkdir(parents=True, exist_ok=True)
        private = ec.generate_private_key(ec.SECP256R1())
        pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        path = directory / f"{name}.pub"
        path.write_bytes(pub)
        return cls(private, path)

    def sign(self, message: bytes) -> str:
        """ECDSA P-256 over SHA-256 of the message, ASN.1 DER, base64: cosign's default."""
        return base64.b64encode(self.private.sign(message, ec.ECDSA(hashes.SHA256()))).decode()


def simple_signing_payload(digest: str, reference: str) -> bytes:
    """The payload `cosign sign` signs (its field order; `optional` null without -a)."""
    return compact({"critical": {"identity": {"docker-reference": reference},
                                 "image": {"docker-manifest-digest": digest},
                                 "type": "cosign container image signature"},
                    "optional": None})


def _push_bytes(client: RegistryClient, repo: str, data: bytes) -> str:
    digest = sha256(data)
    client.push_blob(repo, digest, len(data), lambda: iter((data,)))
    return digest


def signature_config(payload_digest: str, created: str = "0001-01-01T00:00:00Z") -> bytes:
    """The image config cosign writes for a `.sig` manifest (its payload is the one layer)."""
    return compact({"architecture": "", "created": created,
                    "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
                    "rootfs": {"type": "layers", "diff_ids": [payload_digest]}, "config": {}})


def signature_manifest(payload: bytes, signature: str, config: bytes) -> bytes:
    """The `.sig` OCI manifest: one simple-signing layer carrying the signature annotation."""
    return compact({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256(config)},
        "layers": [{"mediaType": SIMPLE_SIGNING, "size": len(payload), "digest": sha256(payload),
                    "annotations": {"dev.cosignproject.cosign/signature": signature}}],
    })


def push_signature(registry_url: str, repo: str, digest: str, key: CosignKey,
                   payload: bytes | None = None, signature: str | None = None) -> str:
    """Sign `repo@digest` the way `cosign sign --key` stores it; returns the .sig manifest's
    digest. `payload`/`signature` override what is pushed (tampering tests)."""
    client = RegistryClient(registry_url)
    payload = payload if payload is not None else simple_signing_payload(digest, repo)
    sig = signature if signature is not None else key.sign(payload)
    config = signature_config(_push_bytes(client, repo, payload))
    _push_bytes(client, repo, config)
    tag = digest.replace(":", "-") + ".sig"
    return client.put_manifest(repo, tag, signature_manifest(payload, sig, config), OCI_MANIFEST)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(payload)).encode() + \
        b" " + payload


def dsse_bundle(digest: str, name: str, key: CosignKey) -> bytes:
    """A sigstore bundle v0.3: an in-toto statement about `digest` in a DSSE envelope signed by
    `key`, with the public key given as a hint (no certificate, no transparency log entry)."""
    statement = compact({"_type": "https://in-toto.io/Statement/v1",
                         "subject": [{"name": name, "digest": {"sha256": digest.split(":", 1)[1]}}],
                         "predicateType": "https://sigstore.dev/cosign/sign/v1",
                         "predicate": {}})
    ptype = "application/vnd.in-toto+json"
    return compact({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "test-key"}, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(statement).decode(), "payloadType": ptype,
                         "signatures": [{"sig": key.sign(pae(ptype, statement))}]},
    })


def push_bundle(registry_url: str, repo: str, digest: str, media_type: str, size: int,
                key: CosignKey) -> str:
    """Attach a DSSE bundle to `repo@digest` as a referrer and list it in the referrers tag
    schema index; returns the referrer manifest's digest."""
    client = RegistryClient(registry_url)
    bundle = dsse_bundle(digest, repo, key)
    bundle_digest = _push_bytes(client, repo, bundle)
    empty_digest = _push_bytes(client, repo, b"{}")
    manifest = compact({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE,
        "config": {"mediaType": EMPTY, "digest": empty_digest, "size": 2},
        "layers": [{"mediaType": BUNDLE, "digest": bundle_digest, "size": len(bundle)}],
        "subject": {"mediaType": media_type, "digest": digest, "size": size},
    })
    ref = client.put_manifest(repo, sha256(manifest), manifest, OCI_MANIFEST)
    index = compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": ref, "size": len(manifest),
         "artifactType": BUNDLE}]})
    client.put_manifest(repo, digest.replace(":", "-"), index, OCI_INDEX)
    return ref
