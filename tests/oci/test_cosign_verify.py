"""mirror/oci/cosign.py on documents made by tests/support/cosign.py (cosign's published format,
not the mirror's code): the pure checks the signature policy relies on (issue #20)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from mirror.oci import cosign
from tests.support.cosign import (
    CosignKey,
    compact,
    dsse_bundle,
    pae,
    sha256,
    signature_config,
    signature_manifest,
    simple_signing_payload,
)

DIGEST = "sha256:" + hashlib.sha256(b"the image manifest").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"another image").hexdigest()


def public(key: CosignKey) -> cosign.PublicKey:
    return cosign.load_public_key(key.pub_path.read_bytes(), key.pub_path.name)


@pytest.fixture
def key(tmp_path: Path) -> CosignKey:
    return CosignKey.generate(tmp_path, "k")


def test_simple_signing(key: CosignKey, tmp_path: Path) -> None:
    payload = simple_signing_payload(DIGEST, "myorg/app")
    sig = base64.b64decode(key.sign(payload))
    signer, why = cosign.verify_simple_signing(payload, sig, DIGEST, [public(key)])
    assert signer is not None and why == ""
    stranger = public(CosignKey.generate(tmp_path, "stranger"))
    assert cosign.verify_simple_signing(payload, sig, DIGEST, [stranger]) == (
        None, "no valid signature for the configured keys")
    assert cosign.verify_simple_signing(payload, sig, OTHER, [public(key)])[1] == (
        f"the payload signs {DIGEST}, not {OTHER}")
    assert cosign.verify_simple_signing(payload + b" ", sig, DIGEST, [public(key)])[0] is None


def test_payload_keys_match_case_insensitively_like_go() -> None:
    """cosign's own spec writes `Docker-manifest-digest`; Go's JSON decoder accepts it."""
    payload = compact({"critical": {"identity": {"docker-reference": "x"},
                                    "image": {"Docker-manifest-digest": DIGEST},
                                    "type": "cosign container image signature"}})
    assert cosign.payload_problem(payload, DIGEST) is None
    wrong_type = payload.replace(b"cosign container image signature", b"atomic container")
    assert "critical.type" in (cosign.payload_problem(wrong_type, DIGEST) or "")


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "p384"])
def test_other_key_types(kind: str) -> None:
    message = simple_signing_payload(DIGEST, "r")
    pub: ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if kind == "ed25519":
        e = ed25519.Ed25519PrivateKey.generate()
        sig, pub = e.sign(message), e.public_key()
    elif kind == "rsa":
        r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sig, pub = r.sign(message, padding.PKCS1v15(), hashes.SHA256()), r.public_key()
    else:
        c = ec.generate_private_key(ec.SECP384R1())
        sig, pub = c.sign(message, ec.ECDSA(hashes.SHA384())), c.public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    k = cosign.load_public_key(pem, kind)
    assert cosign.verify_simple_signing(message, sig, DIGEST, [k])[0] is k


def test_dsse_bundle(key: CosignKey, tmp_path: Path) -> None:
    bundle = dsse_bundle(DIGEST, "myorg/app", key)
    assert cosign.verify_bundle(bundle, DIGEST, [public(key)])[0] is not None
    assert "does not name" in cosign.verify_bundle(bundle, OTHER, [public(key)])[1]
    stranger = public(CosignKey.generate(tmp_path, "stranger"))
    assert cosign.verify_bundle(bundle, DIGEST, [stranger])[1] == (
        "no valid signature for the configured keys")


def test_dsse_attestation_is_not_a_signature(key: CosignKey) -> None:
    statement = compact({"_type": "https://in-toto.io/Statement/v1",
                         "subject": [{"digest": {"sha256": DIGEST[7:]}}],
                         "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}})
    ptype = "application/vnd.in-toto+json"
    bundle = compact({"mediaType": cosign.BUNDLE_TYPES[0], "verificationMaterial": {},
                      "dsseEnvelope": {"payload": base64.b64encode(statement).decode(),
                                       "payloadType": ptype,
                                       "signatures": [{"sig": key.sign(pae(ptype, statement))}]}})
    assert "not a cosign signature" in cosign.verify_bundle(bundle, DIGEST, [public(key)])[1]


def test_message_signature_bundle(key: CosignKey) -> None:
    raw = bytes.fromhex(DIGEST[7:])
    sig = key.private.sign(raw, ec.ECDSA(Prehashed(hashes.SHA256())))
    bundle = compact({"mediaType": cosign.BUNDLE_TYPES[0], "verificationMaterial": {},
                      "messageSignature": {
                          "messageDigest": {"algorithm": "SHA2_256",
                                            "digest": base64.b64encode(raw).decode()},
                          "signature": base64.b64encode(sig).decode()}})
    assert cosign.verify_bundle(bundle, DIGEST, [public(key)])[0] is not None
    assert "signs " + DIGEST in cosign.verify_bundle(bundle, OTHER, [public(key)])[1]


def test_keyless_bundle_is_refused(key: CosignKey) -> None:
    doc = json.loads(dsse_bundle(DIGEST, "x", key))
    doc["verificationMaterial"] = {"certificate": {"rawBytes": "MIIB"}}
    assert "keyless" in cosign.verify_bundle(compact(doc), DIGEST, [public(key)])[1]


def test_signature_artifacts() -> None:
    sig = compact({"layers": [{"mediaType": cosign.SIMPLE_SIGNING}]})
    image = compact({"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"},
                                {"mediaType": cosign.SIMPLE_SIGNING}]})
    assert cosign.is_signature_artifact(sig)
    assert not cosign.is_signature_artifact(image)
    assert not cosign.is_signature_artifact(compact({"manifests": []}))


def test_helper_matches_what_cosign_itself_pushed() -> None:
    """The test signer against a signature cosign v1.13.1 pushed to Docker Hub, as its debug
    trace shows it (public notes: github.com/jeffhuang4704/just-notes, cosign/cosign-traffic.md):
    the payload, config and `.sig` manifest built by tests/support/cosign.py from the same
    inputs hash to the digests cosign produced, byte for byte. Its public key is not
    published, so the ECDSA signature itself is only checked for form (DER r, s) and read by
    the mirror's parser."""
    image = "sha256:4c1c50d0ffc614f90b93b07d778028dc765548e823f676fb027f61d281ac380d"
    signature = ("MEYCIQCPH7NJAIfrB6BZN91dV0o7l/i11muXrvrAh100jDMMhAIhAPsLH0oXb2OPITXRpWBMUd3vH"
                 "tz5Ks5pql2Hr6t/IJXw")
    payload = simple_signing_payload(image, "index.docker.io/chihjenhuang/cosign1")
    assert sha256(payload) == "sha256:b671489ededd1a180bd87235bba00fd83354f9c7d13b71d9f8b66a8e52965ebc"
    config = signature_config(sha256(payload), "2023-02-17T09:25:33.91047962-08:00")
    assert sha256(config) == "sha256:85ad8e17d3d7c00664855c638832bd99f32d42542c2d587851410a45a7f60b95"
    manifest = signature_manifest(payload, signature, config)
    assert sha256(manifest) == "sha256:7ebe8964225fa4619b53aa35416ef0246c037e36ddf81776b21b15e1dda2262b"
    (layer,) = cosign.signature_layers(manifest)
    assert layer.signature is not None and layer.digest == sha256(payload)
    r, s = decode_dss_signature(layer.signature)
    assert r > 0 and s > 0
    assert cosign.payload_problem(payload, image) is None


def test_the_server_loads_cryptography_only_for_a_policy_with_keys(tmp_path: Path) -> None:
    """Each server process would carry its Rust extension (9 MiB of RSS) for nothing."""
    probe = (
        "import sys\n"
        "import mirror.cli.main, mirror.http.app, mirror.pull.stack  # all a server loads\n"
        "from mirror.config.loader import load_config\n"
        "load_config(sys.argv[1])\n"
        "print('cryptography' in sys.modules)\n"
    )
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(f"cache:\n  dir: {tmp_path / 'cache'}\n"
                   "upstreams:\n  docker.io:\n    url: http://127.0.0.1:9\n")
    out = subprocess.run([sys.executable, "-c", probe, str(cfg)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"
