"""Build valid OCI image layouts in pure Python (no network, no image tools).

Every layer is a real gzip'd tar; the config's rootfs.diff_ids are the sha256 of the
uncompressed tars, so skopeo, podman and docker all accept the result.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

FIXED_MTIME = 1_700_000_000


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def make_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """Return (uncompressed tar, gzip'd tar) for the given {path: content} files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p in files if os.path.dirname(p)})
        seen = set()
        for d in dirs:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub in seen:
                    continue
                seen.add(sub)
                ti = tarfile.TarInfo(sub)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                ti.mtime = FIXED_MTIME
                tar.addfile(ti)
        for path in sorted(files):
            data = files[path]
            ti = tarfile.TarInfo(path)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = FIXED_MTIME
            tar.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=1) as g:
        g.write(raw)
    return raw, gz.getvalue()


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self, **extra) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        d.update(extra)
        return d


@dataclass
class Image:
    """One single-platform image: config, layers, manifest (all as bytes)."""
    config: Blob
    layers: list[Blob]
    manifest: Blob
    diff_ids: list[str]
    architecture: str
    os: str
    variant: str | None = None

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]


@dataclass
class Layout:
    path: str
    tag: str
    top: Blob  # what index.json points at (manifest or image index)
    images: list[Image] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.top.digest

    @property
    def ref(self) -> str:
        return f"oci:{self.path}:{self.tag}"

    def all_blob_digests(self) -> set[str]:
        out = set()
        for im in self.images:
            out.add(im.manifest.digest)
            out.update(b.digest for b in im.blobs())
        out.add(self.top.digest)
        return out


def build_image(salt: str = "", architecture: str = "amd64", os_: str = "linux",
                variant: str | None = None, n_layers: int = 2,
                random_layer_bytes: int = 0) -> Image:
    """Build an image with n_layers small layers (plus optionally one layer holding
    random_layer_bytes of incompressible data, to make uploads take a while)."""
    rng = random.Random(f"{salt}/{architecture}/{variant}")
    layers, diff_ids = [], []
    for i in range(n_layers):
        files = {
            f"etc/berth-e2e/layer{i}.txt": f"layer {i} of {salt} {architecture}\n".encode(),
            f"usr/share/berth-e2e/{i}/data.bin": rng.randbytes(2048 + 512 * i),
        }
        raw, gz = make_layer(files)
        diff_ids.append(sha256_digest(raw))
        layers.append(Blob(OCI_LAYER_GZIP, gz))
    if random_layer_bytes:
        raw, gz = make_layer({"opt/big.bin": rng.randbytes(random_layer_bytes)})
        diff_ids.append(sha256_digest(raw))
        layers.append(Blob(OCI_LAYER_GZIP, gz))
    config = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": architecture,
        "os": os_,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/true"],
            "Labels": {"berth.e2e.salt": salt},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"berth-e2e layer {i}"}
                    for i in range(len(layers))],
    }
    if variant:
        config["variant"] = variant
    config_blob = Blob(OCI_CONFIG, canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [l.descriptor() for l in layers],
    }
    return Image(config_blob, layers, Blob(OCI_MANIFEST, canonical_json(manifest)),
                 diff_ids, architecture, os_, variant)


def _write_blob(root: str, blob: Blob) -> None:
    algo, hexd = blob.digest.split(":")
    d = os.path.join(root, "blobs", algo)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hexd), "wb") as f:
        f.write(blob.data)


def _write_layout(path: str, tag: str, top: Blob, images: list[Image]) -> Layout:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    for im in images:
        for b in (*im.blobs(), im.manifest):
            _write_blob(path, b)
    _write_blob(path, top)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [top.descriptor(annotations={"org.opencontainers.image.ref.name": tag})],
    }
    with open(os.path.join(path, "index.json"), "wb") as f:
        f.write(canonical_json(index))
    return Layout(path, tag, top, images)


def write_image_layout(path: str, tag: str = "v1", salt: str = "", **kw) -> Layout:
    """A single-platform OCI image layout at `path`, tagged `tag`."""
    im = build_image(salt=salt, **kw)
    return _write_layout(path, tag, im.manifest, [im])


def write_index_layout(path: str, tag: str = "v1", salt: str = "",
                       platforms=(("amd64", None), ("arm64", "v8"))) -> Layout:
    """A multi-platform OCI image index layout at `path`, tagged `tag`."""
    images = [build_image(salt=salt, architecture=a, variant=v) for a, v in platforms]
    manifests = []
    for im in images:
        plat = {"architecture": im.architecture, "os": im.os}
        if im.variant:
            plat["variant"] = im.variant
        manifests.append(im.manifest.descriptor(platform=plat))
    index = Blob(OCI_INDEX, canonical_json(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
    return _write_layout(path, tag, index, images)


def read_layout(path: str) -> tuple[str, dict[str, bytes]]:
    """Return (digest index.json points at, {digest: blob bytes}) for an OCI layout on disk,
    checking every blob's content matches its file name."""
    with open(os.path.join(path, "index.json"), "rb") as f:
        index = json.load(f)
    assert len(index["manifests"]) == 1, index
    top = index["manifests"][0]["digest"]
    blobs = {}
    bdir = os.path.join(path, "blobs", "sha256")
    for name in os.listdir(bdir):
        with open(os.path.join(bdir, name), "rb") as f:
            data = f.read()
        assert sha256_digest(data) == "sha256:" + name, f"corrupt blob {name} in {path}"
        blobs["sha256:" + name] = data
    return top, blobs


def referenced_digests(blobs: dict[str, bytes], top: str) -> set[str]:
    """All digests reachable from `top` (manifest or index) inside `blobs`."""
    out = {top}
    doc = json.loads(blobs[top])
    if "manifests" in doc:
        for m in doc["manifests"]:
            out |= referenced_digests(blobs, m["digest"])
    else:
        out.add(doc["config"]["digest"])
        out.update(l["digest"] for l in doc["layers"])
    return out
