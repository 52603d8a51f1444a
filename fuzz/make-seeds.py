#!/usr/bin/env python3
"""Writes the hand-made seeds (corpus/<target>/seed-*) of the fuzz targets.

Run from anywhere: python3 fuzz/make-seeds.py. Inputs that fuzzing found and were kept
(files named by their SHA-1) are left alone. The input layout of each target is described
in its source under fuzz_targets/.
"""
import hashlib
import json
import os
import struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
def put(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    open(os.path.join(d, name), "wb").write(data)

D1 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
D2 = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
D512 = "sha512:" + hashlib.sha512(b"abc").hexdigest()

# names: repository names, tags, references
for i, s in enumerate(["library/ubuntu", "a", "a-b/c.d/e_f", "a__b", "a---b/0", "x/y/z/w",
        "a/../b", "a//b", "A", "a___b", "a.-b", "a/.hidden", "ä", "a" * 255, "a" * 256,
        "v1.0.0-rc_1", "_x", "latest", "T" * 128, "t" * 129, ".x", "-x", "a:b",
        D1, D512, "sha256:zz", "md5:d41d8cd98f00b204e9800998ecf8427e", "ghcr.io/org/app", "a/b/" + "c" * 240]):
    put("names", f"seed-{i:02}", s)

# digests
for i, s in enumerate([D1, D2, D512, "sha256:", "sha256", "sha256:abc", D1.upper(), "SHA256:" + D1[7:],
        "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", ":", "sha512:" + "0" * 64, D1 + "\n"]):
    put("digest", f"seed-{i:02}", s)

# manifests: first byte = content-type selector (see CONTENT_TYPES in manifest.rs)
NONE, OCI_M, OCI_I, DOCKER_M, DOCKER_L, V1S, V1, EMPTY, OCI_M_PARAM, OCI_I_PARAM = range(10)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
def desc(mt, d, size, **kw):
    x = {"mediaType": mt, "digest": d, "size": size}; x.update(kw); return x
image = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
         "config": desc("application/vnd.oci.image.config.v1+json", D1, 0),
         "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", D2, 2)],
         "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}}
artifact = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
            "config": desc("application/vnd.oci.empty.v1+json", "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", 2, data="e30="),
            "layers": [desc("application/vnd.example.sig.v1", D1, 0)],
            "subject": desc(OCI_MANIFEST, D2, 1234)}
index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            desc(OCI_MANIFEST, D1, 5, platform={"os": "linux", "architecture": "amd64"}),
            desc(OCI_MANIFEST, D512, 7, platform={"os": "linux", "architecture": "arm64", "variant": "v8"})]}
docker = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
          "config": desc("application/vnd.docker.container.image.v1+json", D1, 1469),
          "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", D2, 977),
                     desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", D1, 5000,
                          urls=["https://mcr.microsoft.com/v2/windows/blobs/" + D1])]}
docker_list = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
            desc(DOCKER_MANIFEST, D1, 528, platform={"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"})]}
no_mt_index = {"schemaVersion": 2, "manifests": []}
v1 = {"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": [{"blobSum": D1}]}
seeds = [(OCI_M, image), (NONE, image), (DOCKER_M, image), (OCI_M_PARAM, image), (NONE, artifact),
         (OCI_I, index), (OCI_I_PARAM, index), (NONE, no_mt_index), (DOCKER_M, docker), (DOCKER_L, docker_list),
         (V1S, v1), (NONE, {**image, "manifests": []}), (NONE, {**index, "layers": []}),
         (NONE, {**image, "config": desc("x", "sha256:nothex", 0)}),
         (NONE, {**image, "layers": [desc("x", D1, -2)]})]
for i, (sel, doc) in enumerate(seeds):
    put("manifest", f"seed-{i:02}", bytes([sel]) + json.dumps(doc, separators=(",", ":")).encode())
put("manifest", "seed-pretty", bytes([OCI_M]) + json.dumps(image, indent=3).encode())
put("manifest", "seed-deep", bytes([NONE]) + b'{"schemaVersion":2,"annotations":{"a":' + b"[" * 100 + b"]" * 100 + b"}}")

# ranges: 8 bytes little-endian size, then the header
for i, (size, h) in enumerate([(100, "bytes=0-9"), (100, "bytes=90-"), (100, "bytes=-10"), (100, "bytes=-1000"),
        (100, "bytes=0-18446744073709551615"), (100, "bytes=0-1,5-6"), (100, "items=0-1"), (0, "bytes=0-"),
        (100, "bytes=5-2"), (100, "bytes=-0"), (2**64 - 1, "bytes=18446744073709551614-"),
        (100, "bytes 100-199/*"), (100, "bytes=5-5"), (100, " bytes=1 - 2 "), (100, "0-18446744073709551615/*")]):
    put("range", f"seed-{i:02}", struct.pack("<Q", size) + h.encode())

# listing queries
for i, s in enumerate(["n=10&last=a%2Fb", "", "n=-1", "n=99999999999", "n=0", "last=library%2Fubuntu&n=100",
        "n=1&n=2", "n=%31%30", "n=+5", "last=%FF%FE", "foo=bar&&=&n", "n=4294967295", "n=4294967296", "last=a+b"]):
    put("query", f"seed-{i:02}", s)

# config: YAML, then NUL and KEY=VALUE lines (each becomes REGISTRY_KEY)
registry2 = """version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: registry
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: true
      age: 168h
      interval: 24h
      dryrun: false
    readonly:
      enabled: false
http:
  addr: :5000
  relativeurls: true
  secret: asecretforlocaldevelopment
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
berth:
  database:
    url: sqlite:///var/lib/berth/metadata.db
  manifests:
    maxsize: 4194304
  allowunauthenticated: false
  http:
    bodytimeout: 1m30s
"""
configs = [
    registry2,
    registry2 + "\0HTTP_ADDR=127.0.0.1:5999\nSTORAGE_DELETE_ENABLED=true\nLOG_LEVEL=debug\nSTORAGE_MAINTENANCE_UPLOADPURGING_AGE=2h",
    "\0STORAGE_FILESYSTEM_ROOTDIRECTORY=/x\nLOG_FORMATTER=json\nHTTP_ADDR=localhost:5000",
    "\0STORAGE_FILESYSTEM_ROOTDIR=/x",
    "\0STORAGE_DELETE_ENABLED=maybe",
    "\0LOG_LEVEL=warning\nBERTH_DATABASE_URL=postgres://u@h/db\nBERTH_MANIFESTS_MAXSIZE=1024",
    "http:\n  addr: '[::1]:5000'\nlog:\n  level: panic\n  formatter: logstash\n",
    "http: 5\0HTTP_ADDR=:1",
    "\0_=x\nHTTP__ADDR=1\nHTTP_=2",
    "",
    "~",
    "- a\n- b\n",
    "a: &a [1, 2]\nb: *a\n",
    "log: {level: [nested, {x: y}]}\n",
    "storage:\n  maintenance:\n    uploadpurging:\n      age: 99999999999999999999h\n",
    "berth:\n  http:\n    bodytimeout: 1y2mon3w4d5h6m7s8ms9us10ns\n",
    "{? [a]: b}\n",
    "version: !!binary aGVsbG8=\n",
    "--- \n...\n---\nb: 1\n",
]
for i, c in enumerate(configs):
    put("config", f"seed-{i:02}", c)
