"""Deterministic test images, and a client for the registry push API that uploads them.

Layers are real gzip'd tars with fixed mtimes/owners, configs carry correct rootfs.diff_ids,
and manifests are Docker v2 schema 2 / OCI (plus manifest lists / OCI indexes), so real
clients (docker, containerd, skopeo, podman) accept them. Same inputs -> same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import struct
import subprocess
import tarfile
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, cast

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TYPES = (MT_DOCKER_LIST, MT_OCI_INDEX)
# Every manifest type we push, for Accept headers.
ALL_MANIFEST_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)

EPOCH = 1704067200  # 2024-01-01T00:00:00Z: fixed mtime, so layer digests never change
CREATED = "2024-01-01T00:00:00Z"
CACHE_VERSION = "v1"  # bump when the layout of cached layers changes
MiB = 1 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class BlobRef:
    """A blob as listed in a manifest."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Layer:
    """A gzip'd tar layer, held in memory (`data`) or in a file (`path`, streamed on push)."""

    digest: str  # sha256 of the gzip blob (what registries store)
    diff_id: str  # sha256 of the uncompressed tar (what the config lists)
    size: int
    data: bytes | None = None
    path: Path | None = None

    def chunks(self, chunk_size: int = MiB) -> Iterator[bytes]:
        if self.data is not None:
            for off in range(0, len(self.data), chunk_size):
                yield self.data[off : off + chunk_size]
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            while buf := f.read(chunk_size):
                yield buf

    def read_bytes(self) -> bytes:
        """Whole blob in memory: fine for small layers, avoid for big ones."""
        return self.data if self.data is not None else b"".join(self.chunks())


class _Writable(Protocol):
    def write(self, b: bytes, /) -> int: ...


class _HashingWriter:
    """Write-through sink that sha256-hashes and counts what passes (gives digest and size)."""

    def __init__(self, sink: _Writable | None) -> None:
        self.sha = hashlib.sha256()
        self.n = 0
        self.sink = sink

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.n += len(b)
        if self.sink is not None:
            self.sink.write(b)
        return len(b)

    def flush(self) -> None:
        pass

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class ShakeReader:
    """Deterministic incompressible bytes: SHAKE-256 of "seed:counter", 1 MiB per block.

    A file-like `read()` so tarfile copies it in bounded pieces (memory stays constant).
    """

    def __init__(self, seed: str, size: int) -> None:
        self.seed, self.left, self.block, self.buf = seed, size, 0, b""

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = []
        while n > 0:
            if not self.buf:
                self.buf = hashlib.shake_256(f"{self.seed}:{self.block}".encode()).digest(MiB)
                self.block += 1
            take, self.buf = self.buf[:n], self.buf[n:]
            out.append(take)
            n -= len(take)
            self.left -= len(take)
        return b"".join(out)


def _info(name: str, type_: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.size, t.mode, t.mtime = type_, size, mode, EPOCH
    t.uid = t.gid = 0
    t.uname = t.gname = "root"
    return t


def add_dir(tf: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    tf.addfile(_info(name, tarfile.DIRTYPE, mode=mode))


def add_file(tf: tarfile.TarFile, name: str, data: bytes | str, mode: int = 0o644) -> None:
    raw = data.encode() if isinstance(data, str) else data
    tf.addfile(_info(name, size=len(raw), mode=mode), io.BytesIO(raw))


def add_symlink(tf: tarfile.TarFile, name: str, target: str) -> None:
    t = _info(name, tarfile.SYMTYPE, mode=0o777)
    t.linkname = target
    tf.addfile(t)


def add_stream(tf: tarfile.TarFile, name: str, size: int, reader: IO[bytes] | ShakeReader) -> None:
    tf.addfile(_info(name, size=size), reader)


TarBuilder = Callable[[tarfile.TarFile], None]


def _write_layer(sink: IO[bytes] | None, build: TarBuilder, gzip_level: int) -> tuple[str, str, int]:
    """Stream tar -> gzip -> sink, hashing both sides. Returns (digest, diff_id, size)."""
    compressed = _HashingWriter(sink)
    # mtime=0 and no filename: the gzip header would otherwise embed the time and a name.
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=gzip_level, mtime=0)
    raw = _HashingWriter(gz)
    # "w|": a pure stream, tarfile never seeks, so the hashing sink sees every byte in order.
    with tarfile.open(fileobj=cast(IO[bytes], raw), mode="w|", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    gz.close()
    return compressed.digest(), raw.digest(), compressed.n


def layer_bytes(
    files: Mapping[str, bytes | str] | None = None,
    *,
    dirs: Sequence[str] = (),
    symlinks: Mapping[str, str] | None = None,
    build: TarBuilder | None = None,
    gzip_level: int = 6,
) -> Layer:
    """A small in-memory layer: `layer_bytes({"etc/hello": "hi\\n"})`.

    Entries are written dirs, files, symlinks (each sorted), then `build(tf)` if given.
    """

    def _build(tf: tarfile.TarFile) -> None:
        for d in sorted(dirs):
            add_dir(tf, d)
        for name, data in sorted((files or {}).items()):
            add_file(tf, name, data)
        for name, target in sorted((symlinks or {}).items()):
            add_symlink(tf, name, target)
        if build is not None:
            build(tf)

    buf = io.BytesIO()
    digest, diff_id, size = _write_layer(buf, _build, gzip_level)
    return Layer(digest, diff_id, size, data=buf.getvalue())


def layer_file(path: Path, build: TarBuilder, *, gzip_level: int = 6) -> Layer:
    """Build a layer straight into `path` (atomically), never holding it in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            digest, diff_id, size = _write_layer(f, build, gzip_level)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return Layer(digest, diff_id, size, path=path)


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "mirror-test-images"


def big_layer(mb: int, cache_dir: Path | None = None, seed: str = "big") -> Layer:
    """One incompressible layer holding `mb` MiB of SHAKE-256 data, cached on disk by size.

    gzip level 0 ("stored"): the data cannot shrink anyway, and it keeps building fast.
    """
    cache = Path(cache_dir or default_cache_dir())
    stem = f"{CACHE_VERSION}-{seed}-{mb}MiB"
    blob, meta = cache / f"{stem}.tar.gz", cache / f"{stem}.json"
    if blob.exists() and meta.exists():
        m = json.loads(meta.read_text())
        if blob.stat().st_size == m["size"]:
            return Layer(m["digest"], m["diff_id"], m["size"], path=blob)
    size = mb * MiB

    def build(tf: tarfile.TarFile) -> None:
        add_dir(tf, "data")
        add_stream(tf, f"data/random-{mb}MiB.bin", size, ShakeReader(f"{seed}-{mb}", size))

    layer = layer_file(blob, build, gzip_level=0)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump({"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size}, f)
    os.replace(tmp, meta)
    return layer


def synthetic_layer(name: str, kib: int = 64, text: str | None = None) -> Layer:
    """A small shell-less layer: a release file, `kib` KiB of random data and some text."""
    files: dict[str, bytes | str] = {
        f"etc/{name}-release": text or f"{name} (synthetic test layer)\n",
        f"usr/share/{name}/README": f"synthetic layer {name}\n" * 200,
    }
    if kib:
        files[f"usr/share/{name}/data.bin"] = ShakeReader(name, kib * 1024).read()
    return layer_bytes(files, dirs=("etc", "usr", "usr/share", f"usr/share/{name}"))


def alpine_ish_layer() -> Layer:
    """Synthetic ~1 MiB "distro" base layer shared by several standard images."""
    return layer_bytes(
        {
            "etc/os-release": 'NAME="Alpine-ish (synthetic)"\nID=alpine-ish\nVERSION_ID=3.19.0\n',
            "etc/alpine-release": "3.19.0\n",
            "usr/share/alpine-ish/base.bin": ShakeReader("alpine-ish", MiB).read(),
            "usr/share/alpine-ish/words": "".join(f"word{i}\n" for i in range(20000)),
        },
        dirs=("bin", "etc", "lib", "tmp", "usr", "usr/share", "usr/share/alpine-ish", "var"),
    )


def _static_x86_64_elf(path: Path) -> bool:
    """True for a statically linked x86-64 ELF (no PT_INTERP program header)."""
    try:
        with open(path, "rb") as f:
            hdr = f.read(64)
            # ELF magic, 64-bit, little-endian, e_machine 62 = x86-64.
            if hdr[:4] != b"\x7fELF" or hdr[4] != 2 or hdr[5] != 1:
                return False
            if struct.unpack_from("<H", hdr, 18)[0] != 62:
                return False
            phoff = struct.unpack_from("<Q", hdr, 32)[0]
            phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def busybox_layer(binary: Path = Path("/bin/busybox")) -> tuple[Layer, bool]:
    """(layer, runnable). Real static busybox + applet symlinks when available (so `sh`,
    `echo` ... run in a container on amd64), else a synthetic shell-less placeholder."""
    if not _static_x86_64_elf(binary):
        return synthetic_layer("busybox", 64, "placeholder: no static busybox on host\n"), False
    data = binary.read_bytes()
    try:
        listed = subprocess.run(
            [str(binary), "--list-full"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    applets = sorted({a for a in listed if a != "bin/busybox"} | {"bin/sh", "bin/echo", "bin/ls", "bin/cat"})
    dirs = {"bin", "etc", "root", "tmp", "usr", "var"}
    for a in applets:
        d = os.path.dirname(a)
        while d:
            dirs.add(d)
            d = os.path.dirname(d)

    def build(tf: tarfile.TarFile) -> None:
        for d in sorted(dirs):
            add_dir(tf, d, 0o1777 if d == "tmp" else 0o700 if d == "root" else 0o755)
        add_file(tf, "bin/busybox", data, mode=0o755)
        for a in applets:
            add_symlink(tf, a, "/bin/busybox")
        add_file(tf, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        add_file(tf, "etc/group", "root:x:0:\n")

    return layer_bytes(build=build), True


# ----------------------------------------------------------------------------- configs/manifests


@dataclass(frozen=True)
class Platform:
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d


AMD64 = Platform("amd64")
ARM64 = Platform("arm64", variant="v8")


def config_bytes(
    layers: Sequence[Layer],
    platform: Platform = AMD64,
    *,
    cmd: Sequence[str] = ("sh",),
    labels: Mapping[str, str] | None = None,
) -> bytes:
    cfg: dict[str, object] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": list(cmd),
            "Labels": dict(labels or {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": f"test layer {i}"} for i in range(len(layers))],
    }
    if platform.variant:
        cfg["variant"] = platform.variant
    return json.dumps(cfg, indent=2, sort_keys=True).encode()


def manifest_bytes(config: BlobRef, layers: Sequence[BlobRef], *, oci: bool) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
        "config": {"mediaType": config.media_type, "size": config.size, "digest": config.digest},
        "layers": [{"mediaType": b.media_type, "size": b.size, "digest": b.digest} for b in layers],
    }
    return json.dumps(doc, indent=3).encode()


def index_bytes(children: Sequence[tuple[BlobRef, Platform]], *, oci: bool) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX if oci else MT_DOCKER_LIST,
        "manifests": [
            {"mediaType": m.media_type, "size": m.size, "digest": m.digest, "platform": p.to_json()}
            for m, p in children
        ],
    }
    return json.dumps(doc, indent=3).encode()


@dataclass(frozen=True)
class BuiltImage:
    """An image assembled in memory, before (or without) pushing: see `build_image`."""

    config: bytes
    config_ref: BlobRef
    layers: tuple[Layer, ...]
    layer_refs: tuple[BlobRef, ...]
    manifest: bytes
    media_type: str
    platform: Platform

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def build_image(
    layers: Sequence[Layer],
    platform: Platform = AMD64,
    *,
    oci: bool = False,
    cmd: Sequence[str] = ("sh",),
    labels: Mapping[str, str] | None = None,
) -> BuiltImage:
    cfg = config_bytes(layers, platform, cmd=cmd, labels=labels)
    cfg_ref = BlobRef(sha256_digest(cfg), len(cfg), MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG)
    lmt = MT_OCI_LAYER if oci else MT_DOCKER_LAYER
    refs = tuple(BlobRef(layer.digest, layer.size, lmt) for layer in layers)
    return BuiltImage(
        cfg,
        cfg_ref,
        tuple(layers),
        refs,
        manifest_bytes(cfg_ref, refs, oci=oci),
        MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
        platform,
    )


# ----------------------------------------------------------------------------- push client


class PushError(RuntimeError):
    pass


class RegistryClient:
    """Minimal blocking client for the registry push API (stdlib http.client, plain HTTP).

    Blocking on purpose: session fixtures and sync tests can use it without an event loop.
    """

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: Sequence[int] = (200,),
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on a fresh connection. Iterator bodies are streamed (give Content-Length)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout, blocksize=MiB)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status not in ok:
            raise PushError(f"{method} {path} -> {resp.status}: {data[:300]!r}")
        return resp.status, resp.headers, data

    @staticmethod
    def _path_of(location: str) -> str:
        u = urllib.parse.urlsplit(location)
        return u.path + ("?" + u.query if u.query else "")

    def blob_exists(self, repo: str, digest: str) -> bool:
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404))
        return status == 200

    def push_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        chunks: Callable[[], Iterator[bytes]],
        *,
        mount_from: str | None = None,
        chunk_size: int = 16 * MiB,
    ) -> str:
        """Upload a blob unless present. Returns how: exists | mounted | monolithic | chunked.

        `chunks()` yields the content (e.g. `Layer.chunks`); blobs larger than `chunk_size`
        go up as PATCHes with Content-Range, so neither side holds them whole in memory.
        """
        if self.blob_exists(repo, digest):
            return "exists"
        start = f"/v2/{repo}/blobs/uploads/"
        if mount_from:
            q = urllib.parse.urlencode({"mount": digest, "from": mount_from})
            status, hdrs, _ = self.request("POST", f"{start}?{q}", b"", ok=(201, 202))
            if status == 201:
                return "mounted"
        else:
            status, hdrs, _ = self.request("POST", start, b"", ok=(202,))
        loc = self._path_of(hdrs["Location"])
        how = "monolithic"
        if size <= chunk_size:
            body: bytes | Iterator[bytes] = chunks()
            length = size
        else:
            how, offset = "chunked", 0
            for piece in _regroup(chunks(), chunk_size):
                _, hdrs, _ = self.request(
                    "PATCH",
                    loc,
                    piece,
                    {
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(len(piece)),
                        "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                    },
                    ok=(202,),
                )
                offset += len(piece)
                loc = self._path_of(hdrs["Location"])
            body, length = b"", 0
        sep = "&" if "?" in loc else "?"
        self.request(
            "PUT",
            f"{loc}{sep}digest={digest}",
            body,
            {"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            ok=(201,),
        )
        return how

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        _, hdrs, _ = self.request(
            "PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type}, ok=(201,)
        )
        want = sha256_digest(body)
        got = hdrs.get("Docker-Content-Digest")
        if got and got != want:
            raise PushError(f"registry says {got} for manifest {repo}:{ref}, expected {want}")
        return want

    def head_manifest(self, repo: str, ref: str) -> tuple[int, http.client.HTTPMessage]:
        status, hdrs, _ = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{ref}",
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
            ok=(200, 404),
        )
        return status, hdrs


def _regroup(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a byte stream into pieces of exactly `size` (the last may be shorter)."""
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


# ----------------------------------------------------------------------------- pushing images


@dataclass(frozen=True)
class PushedImage:
    """What is in the registry for one manifest (a child of an index has tag=None)."""

    repo: str
    tag: str | None
    digest: str  # manifest digest
    media_type: str
    size: int  # manifest size in bytes
    manifest: bytes
    config: BlobRef | None = None  # None for indexes
    layers: tuple[BlobRef, ...] = ()
    children: tuple[PushedImage, ...] = ()  # per-platform manifests of an index
    platform: Platform | None = None

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}" if self.tag else f"{self.repo}@{self.digest}"

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def blobs(self) -> tuple[BlobRef, ...]:
        """Config then layers of this manifest (empty for an index)."""
        return ((self.config,) if self.config else ()) + self.layers

    def all_blobs(self) -> tuple[BlobRef, ...]:
        """Blobs of this manifest and of all its children, each digest once."""
        seen: dict[str, BlobRef] = {}
        for b in self.blobs + tuple(b for c in self.children for b in c.all_blobs()):
            seen.setdefault(b.digest, b)
        return tuple(seen.values())

    def child(self, architecture: str) -> PushedImage:
        return next(c for c in self.children if c.platform and c.platform.architecture == architecture)


class ImagePusher:
    """Pushes images, mounting a blob from the repo it was first pushed to when it recurs.

    `salt` adds a config label org.example.salt=<salt>: same layers, different config and
    manifest digests (e.g. a second upstream that serves the same names with other content).
    """

    def __init__(self, registry_url: str, *, salt: str | None = None, chunk_size: int = 16 * MiB) -> None:
        self.client = RegistryClient(registry_url)
        self.salt = salt
        self.chunk_size = chunk_size
        self.home: dict[str, str] = {}  # blob digest -> repo it was first pushed to
        self.stats: Counter[str] = Counter()  # exists/mounted/monolithic/chunked counts

    def push_blob(self, repo: str, digest: str, size: int, chunks: Callable[[], Iterator[bytes]]) -> str:
        mount = self.home.get(digest)
        how = self.client.push_blob(
            repo,
            digest,
            size,
            chunks,
            mount_from=mount if mount != repo else None,
            chunk_size=self.chunk_size,
        )
        self.stats[how] += 1
        self.home.setdefault(digest, repo)
        return how

    def push_image(
        self,
        repo: str,
        tag: str | None,
        layers: Sequence[Layer],
        platform: Platform = AMD64,
        *,
        oci: bool = False,
        cmd: Sequence[str] = ("sh",),
        labels: Mapping[str, str] | None = None,
    ) -> PushedImage:
        """Push config, layers and a manifest. tag=None pushes by digest only (index children)."""
        all_labels = dict(labels or {})
        if self.salt:
            all_labels["org.example.salt"] = self.salt
        img = build_image(layers, platform, oci=oci, cmd=cmd, labels=all_labels)
        cfg = img.config
        self.push_blob(repo, img.config_ref.digest, img.config_ref.size, lambda: iter((cfg,)))
        for layer in layers:
            self.push_blob(repo, layer.digest, layer.size, layer.chunks)
        digest = self.client.put_manifest(repo, tag or img.digest, img.manifest, img.media_type)
        return PushedImage(
            repo,
            tag,
            digest,
            img.media_type,
            len(img.manifest),
            img.manifest,
            img.config_ref,
            img.layer_refs,
            (),
            platform,
        )

    def push_index(
        self, repo: str, tag: str, children: Sequence[PushedImage], *, oci: bool = False
    ) -> PushedImage:
        """Push a manifest list / OCI index over already pushed child manifests."""
        body = index_bytes(
            [(BlobRef(c.digest, c.size, c.media_type), c.platform or AMD64) for c in children],
            oci=oci,
        )
        mt = MT_OCI_INDEX if oci else MT_DOCKER_LIST
        digest = self.client.put_manifest(repo, tag, body, mt)
        return PushedImage(repo, tag, digest, mt, len(body), body, children=tuple(children))


@dataclass(frozen=True)
class Catalog:
    """The standard image set as pushed: `catalog["library/busybox:latest"].digest`."""

    registry_url: str
    images: Mapping[str, PushedImage]  # "repo:tag" -> image
    big_mb: int
    busybox_runnable: bool  # amd64 busybox images hold a real static /bin/busybox
    push_stats: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, ref: str) -> PushedImage:
        return self.images[ref]

    def __iter__(self) -> Iterator[PushedImage]:
        return iter(self.images.values())

    def repos(self) -> list[str]:
        return sorted({i.repo for i in self})

    def tags(self, repo: str) -> list[str]:
        return sorted(i.tag for i in self if i.repo == repo and i.tag)


STANDARD_REFS = (
    "library/busybox:latest",
    "library/busybox:1.36",
    "library/alpine-ish:3.19",
    "library/alpine-ish:3.19-oci",
    "library/multiarch:latest",
    "org/team/app:1.0",
    "library/big:latest",
)


def push_standard_set(
    registry_url: str,
    *,
    big_mb: int = 64,
    cache_dir: Path | None = None,
    salt: str | None = None,
) -> Catalog:
    """Push the standard images (see STANDARD_REFS) and describe them.

    library/busybox:1.36 is the same manifest as the amd64 entry of :latest (as on Docker Hub).
    org/team/app:1.0 gets the alpine-ish base layer by cross-repo mount.
    library/big:latest has a single incompressible layer of `big_mb` MiB, cached in `cache_dir`.
    """
    p = ImagePusher(registry_url, salt=salt)
    out: dict[str, PushedImage] = {}

    def keep(img: PushedImage) -> None:
        out[img.ref] = img

    bb, runnable = busybox_layer()
    bb_arm = synthetic_layer("busybox-arm64", 64, "placeholder: synthetic linux/arm64 busybox\n")
    amd = p.push_image("library/busybox", "1.36", [bb])
    arm = p.push_image("library/busybox", None, [bb_arm], ARM64)
    keep(amd)
    keep(p.push_index("library/busybox", "latest", [amd, arm]))

    base = alpine_ish_layer()
    keep(p.push_image("library/alpine-ish", "3.19", [base], cmd=["/bin/sh"]))
    keep(p.push_image("library/alpine-ish", "3.19-oci", [base], oci=True, cmd=["/bin/sh"]))

    m_amd = p.push_image("library/multiarch", None, [bb], oci=True)
    m_arm_layer = synthetic_layer("multiarch-arm64", 64, "placeholder: synthetic linux/arm64 image\n")
    m_arm = p.push_image("library/multiarch", None, [m_arm_layer], ARM64, oci=True)
    keep(p.push_index("library/multiarch", "latest", [m_amd, m_arm], oci=True))

    app = layer_bytes({"app/hello.sh": "#!/bin/sh\necho hello from org/team/app\n"}, dirs=("app",))
    keep(p.push_image("org/team/app", "1.0", [base, app], oci=True, cmd=["/app/hello.sh"]))

    keep(p.push_image("library/big", "latest", [big_layer(big_mb, cache_dir)]))
    return Catalog(registry_url, out, big_mb, runnable, dict(p.stats))
