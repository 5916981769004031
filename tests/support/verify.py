"""Check what a real client wrote against what was pushed upstream."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .images import PushedImage


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def verify_dir_copy(out: Path, image: PushedImage) -> list[str]:
    """Verify a `skopeo copy [--all] ... dir:OUT` (manifests kept byte for byte).

    Returns the digests checked. Raises AssertionError on any mismatch."""
    checked: list[str] = []
    top = out / "manifest.json"
    assert sha256_file(top) == image.digest, f"{top} is not {image.digest}"
    checked.append(image.digest)
    images = image.children or (image,)
    for child in images:
        if image.children:
            inst = out / f"{child.digest.split(':', 1)[1]}.manifest.json"
            if not inst.exists():
                continue  # skopeo without --all copies only the host platform's instance
            assert sha256_file(inst) == child.digest
            checked.append(child.digest)
        else:
            inst = top
        doc = json.loads(inst.read_bytes())
        for blob in [doc["config"], *doc["layers"]]:
            path = out / blob["digest"].split(":", 1)[1]
            assert path.exists(), f"blob {blob['digest']} missing from {out}"
            assert sha256_file(path) == blob["digest"], f"blob {blob['digest']} corrupted"
            checked.append(blob["digest"])
    return checked
