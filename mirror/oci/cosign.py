"""Cosign signatures, verified offline with public keys: pure functions over bytes.

Two ways a signature is stored next to an image (specs/SIGNATURE_SPEC.md and BUNDLE_SPEC.md of
sigstore/cosign):

- `cosign sign --key`: the tag `sha256-<hex>.sig` in the image's repository holds an OCI
  manifest whose layers are simple-signing payloads; each layer's annotation
  `dev.cosignproject.cosign/signature` is a base64 signature over the payload bytes, and the
  payload's `critical.image.docker-manifest-digest` names the signed manifest.
- Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`), attached through the
  referrers API (or its `sha256-<hex>` tag fallback): a `messageSignature` over the same
  simple-signing payload's digest, or a DSSE envelope whose in-toto statement names the
  manifest digest as its subject.

No network, no transparency log, no certificates: a key-based rule trusts exactly the public
keys it names. This module imports nothing else of mirror (layer `oci` stays pure)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# `cryptography` is imported by the three functions that use keys, not here: the config
# imports this module, and loading the library costs every server process 9 MiB of RSS
# (its Rust extension), which only a signature policy with keys needs.

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
BUNDLE_TYPES = ("application/vnd.dev.sigstore.bundle.v0.3+json",
                "application/vnd.dev.sigstore.bundle+json;version=0.3")
IN_TOTO = "application/vnd.in-toto+json"
# The predicate `cosign sign --new-bundle-format` signs: a signature, not an attestation (SBOM,
# provenance), which says something else about the image than "the key holder vouches for it".
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
# Layer media types of artifacts that describe an image instead of being one: a manifest made
# only of these has nothing to run, so a signature policy does not ask it to be signed itself.
ARTIFACT_LAYER_TYPES = frozenset({
    SIMPLE_SIGNING, *BUNDLE_TYPES, "application/vnd.dsse.envelope.v1+json",
    "application/vnd.dev.cosign.attestation.v1+json", "application/vnd.oci.empty.v1+json",
})
MAX_SIGNATURE_DOCUMENT = 1024 * 1024  # a payload or bundle larger than this is not read


class KeyProblem(ValueError):
    """A public key file that cannot be used (not PEM, or an unsupported algorithm)."""


@dataclass(frozen=True)
class PublicKey:
    """One trusted key: `name` (its file) appears in messages, `fingerprint` in verdict keys."""

    name: str
    key: Any  # a cryptography public key object
    fingerprint: str  # sha256 of the DER SubjectPublicKeyInfo

    def verify(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

        k = self.key
        try:
            if isinstance(k, ec.EllipticCurvePublicKey):
                # cosign hashes with SHA-256 for P-256, SHA-384/512 for the larger curves.
                algo: hashes.HashAlgorithm = {256: hashes.SHA256(), 384: hashes.SHA384(),
                                              521: hashes.SHA512()}.get(k.curve.key_size,
                                                                        hashes.SHA256())
                k.verify(signature, message, ec.ECDSA(algo))
            elif isinstance(k, ed25519.Ed25519PublicKey):
                k.verify(signature, message)
            elif isinstance(k, rsa.RSAPublicKey):
                k.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:
                return False
        except (InvalidSignature, ValueError):
            return False
        return True

    def verify_prehashed_sha256(self, digest: bytes, signature: bytes) -> bool:
        """A bundle's messageSignature signs the artifact, given here by its SHA-256."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        k = self.key
        try:
            if isinstance(k, ec.EllipticCurvePublicKey):
                k.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
            elif isinstance(k, rsa.RSAPublicKey):
                k.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
            else:
                return False  # Ed25519 signs the message itself, never a prehash
        except (InvalidSignature, ValueError):
            return False
        return True


def load_public_key(pem: bytes, name: str) -> PublicKey:
    """A PEM public key as `cosign generate-key-pair` writes it (cosign.pub)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm, TypeError) as e:
        raise KeyProblem(f"not a PEM public key ({str(e).splitlines()[0] if str(e) else e})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise KeyProblem(f"unsupported key type {type(key).__name__} (ECDSA, Ed25519 or RSA)")
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return PublicKey(name, key, hashlib.sha256(der).hexdigest())


def signature_tag(digest: str) -> str:
    """`sha256:abc...` -> `sha256-abc....sig`, where `cosign sign` pushes the signature."""
    return digest.replace(":", "-", 1) + ".sig"


def referrers_tag(digest: str) -> str:
    """The OCI referrers tag schema: the fallback index of registries without the API."""
    return digest.replace(":", "-", 1)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _get_ci(doc: Any, key: str) -> Any:
    """cosign decodes payloads with Go's encoding/json, which matches keys case-insensitively
    (its own spec shows `Docker-manifest-digest`): so do we."""
    if not isinstance(doc, dict):
        return None
    if key in doc:
        return doc[key]
    for k, v in doc.items():
        if isinstance(k, str) and k.lower() == key.lower():
            return v
    return None


def payload_problem(payload: bytes, digest: str) -> str | None:
    """Why a simple-signing payload does not vouch for `digest`, or None when it does."""
    doc = _json(payload)
    critical = _get_ci(doc, "critical")
    if not isinstance(critical, dict):
        return "the payload is not a simple-signing document"
    kind = _get_ci(critical, "type")
    if kind != COSIGN_TYPE:
        return f"the payload's critical.type is {kind!r}, not {COSIGN_TYPE!r}"
    claimed = _get_ci(_get_ci(critical, "image"), "docker-manifest-digest")
    if claimed != digest:
        return f"the payload signs {claimed}, not {digest}"
    return None


@dataclass(frozen=True)
class SignedLayer:
    """One layer of a `.sig` manifest: the payload blob to read and the signature over it."""

    digest: str
    size: int
    signature: bytes | None  # None: the annotation is missing or not base64


def signature_layers(manifest: bytes) -> list[SignedLayer]:
    """The simple-signing layers of a cosign signature manifest."""
    doc = _json(manifest)
    layers = doc.get("layers") if isinstance(doc, dict) else None
    out: list[SignedLayer] = []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(digest, str) or not isinstance(size, int):
            continue
        annotations = layer.get("annotations")
        raw = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        out.append(SignedLayer(digest, size, _b64(raw)))
    return out


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_simple_signing(payload: bytes, signature: bytes | None, digest: str,
                          keys: Sequence[PublicKey]) -> tuple[PublicKey | None, str]:
    """(the key that verified, "") or (None, why not)."""
    if signature is None:
        return None, "a signature layer has no valid base64 signature annotation"
    signer = next((k for k in keys if k.verify(payload, signature)), None)
    if signer is None:
        return None, "no valid signature for the configured keys"
    problem = payload_problem(payload, digest)
    if problem is not None:
        return None, problem
    return signer, ""


def bundle_layers(manifest: bytes) -> list[SignedLayer]:
    """The bundle layer(s) of a referrer manifest whose artifactType is a sigstore bundle."""
    doc = _json(manifest)
    if not isinstance(doc, dict):
        return []
    out: list[SignedLayer] = []
    layers = doc.get("layers")
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("mediaType") in BUNDLE_TYPES:
            digest, size = layer.get("digest"), layer.get("size")
            if isinstance(digest, str) and isinstance(size, int):
                out.append(SignedLayer(digest, size, None))
    return out


def bundle_referrers(index: bytes) -> list[str]:
    """Digests of the sigstore-bundle manifests listed in a referrers index."""
    doc = _json(index)
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    out: list[str] = []
    for m in manifests if isinstance(manifests, list) else []:
        if isinstance(m, dict) and m.get("artifactType") in BUNDLE_TYPES and isinstance(
                m.get("digest"), str):
            out.append(m["digest"])
    return out


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a DSSE signature signs."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def verify_bundle(bundle: bytes, digest: str,
                  keys: Sequence[PublicKey]) -> tuple[PublicKey | None, str]:
    """A key-based sigstore bundle (v0.3) for the manifest `digest`: (key, "") or (None, why).

    Certificates (keyless) are not trusted here: a bundle whose verification material is a
    certificate is refused with that reason."""
    doc = _json(bundle)
    if not isinstance(doc, dict) or doc.get("mediaType") not in BUNDLE_TYPES:
        return None, "the bundle is not a sigstore bundle v0.3"
    material = doc.get("verificationMaterial")
    if isinstance(material, dict) and ("certificate" in material
                                       or "x509CertificateChain" in material):
        return None, "the bundle is certificate-based (keyless), not signed by a key"
    message = doc.get("messageSignature")
    if isinstance(message, dict):
        return _verify_message_signature(message, digest, keys)
    envelope = doc.get("dsseEnvelope")
    if isinstance(envelope, dict):
        return _verify_dsse(envelope, digest, keys)
    return None, "the bundle holds neither a messageSignature nor a dsseEnvelope"


def _verify_message_signature(message: dict[str, Any], digest: str,
                              keys: Sequence[PublicKey]) -> tuple[PublicKey | None, str]:
    md = message.get("messageDigest")
    signature = _b64(message.get("signature"))
    signed = _b64(md.get("digest")) if isinstance(md, dict) else None
    if signature is None or signed is None or not isinstance(md, dict) or md.get(
            "algorithm") != "SHA2_256":
        return None, "the bundle's messageSignature is incomplete or not SHA2_256"
    # The message is the artifact: its digest must be the manifest's digest.
    if "sha256:" + signed.hex() != digest:
        return None, f"the bundle signs sha256:{signed.hex()}, not {digest}"
    signer = next((k for k in keys if k.verify_prehashed_sha256(signed, signature)), None)
    if signer is None:
        return None, "no valid signature for the configured keys"
    return signer, ""


def _verify_dsse(envelope: dict[str, Any], digest: str,
                 keys: Sequence[PublicKey]) -> tuple[PublicKey | None, str]:
    payload = _b64(envelope.get("payload"))
    payload_type = envelope.get("payloadType")
    if payload is None or not isinstance(payload_type, str):
        return None, "the bundle's DSSE envelope is incomplete"
    message = pae(payload_type, payload)
    signer: PublicKey | None = None
    signatures = envelope.get("signatures")
    for sig in signatures if isinstance(signatures, list) else []:
        raw = _b64(sig.get("sig")) if isinstance(sig, dict) else None
        if raw is not None:
            signer = next((k for k in keys if k.verify(message, raw)), None)
            if signer is not None:
                break
    if signer is None:
        return None, "no valid signature for the configured keys"
    if payload_type != IN_TOTO:
        return None, f"the DSSE payload is {payload_type}, not an in-toto statement"
    statement = _json(payload)
    predicate = statement.get("predicateType") if isinstance(statement, dict) else None
    if predicate != SIGN_PREDICATE:
        return None, f"the in-toto statement is a {predicate} attestation, not a cosign signature"
    subjects = statement.get("subject")
    hexes = [s["digest"].get("sha256") for s in subjects if isinstance(s, dict)
             and isinstance(s.get("digest"), dict)] if isinstance(subjects, list) else []
    if not digest.startswith("sha256:") or digest[len("sha256:"):] not in hexes:
        return None, f"the in-toto statement does not name {digest} as its subject"
    return signer, ""


def is_signature_artifact(manifest: bytes) -> bool:
    """A manifest whose every layer is a signature, bundle or attestation (or empty): it
    describes another image and has nothing to run."""
    doc = _json(manifest)
    if not isinstance(doc, dict):
        return False
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        return False
    return all(isinstance(layer, dict) and layer.get("mediaType") in ARTIFACT_LAYER_TYPES
               for layer in layers)
