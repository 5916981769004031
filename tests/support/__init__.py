"""Test infrastructure: a real upstream registry, deterministic images, a recording and
fault-injecting proxy, and a fake registry for auth/redirect/rate-limit behaviour.

Everything listens on 127.0.0.1 only, on ports the kernel picks.
"""

from ._loop import free_port
from .client import Reply, fetch
from .fake_upstream import FakeRegistry
from .images import (
    AMD64,
    ARM64,
    BlobRef,
    Catalog,
    ImagePusher,
    Layer,
    Platform,
    PushedImage,
    RegistryClient,
    big_layer,
    build_image,
    default_cache_dir,
    layer_bytes,
    push_standard_set,
)
from .recording import RecordedRequest, classify
from .registry import RegistryProcess
from .tap import Fault, RecordingProxy

__all__ = [
    "AMD64",
    "ARM64",
    "BlobRef",
    "Catalog",
    "FakeRegistry",
    "Fault",
    "ImagePusher",
    "Layer",
    "Platform",
    "PushedImage",
    "RecordedRequest",
    "RecordingProxy",
    "RegistryClient",
    "RegistryProcess",
    "Reply",
    "big_layer",
    "build_image",
    "classify",
    "default_cache_dir",
    "fetch",
    "free_port",
    "layer_bytes",
    "push_standard_set",
]
