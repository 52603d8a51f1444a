"""Model-based concurrency check of the whole registry HTTP API.

`run_model(base_url, seed, ops, clients)` starts `clients` threads, each with its own
`requests.Session` (its own connections), that do `ops` random operations each against
a few repositories and a small pool of tags, manifests and blobs (so that writes collide
often). Every request is recorded with its invocation and response time
(`time.monotonic()`); after the run an offline checker compares every read with a model of
the writes (linearizability per key), and raises AssertionError with the seed, a replay
command and a history excerpt of the offending key.

Keys and values
    ("tag", repo, tag)        -> manifest digest, or ABSENT
    ("manifest", repo, digest) -> PRESENT / ABSENT (referrers listings read this key too:
                                 a referrer is listed under its subject iff it is present)
    ("blob", repo, digest)    -> PRESENT (linked) / ABSENT
    ("repo", repo)            -> PRESENT once created (catalog); never deleted

The rule (per key, for a read that ran over [t0, t1])
    A write w is a candidate if it was invoked before t1 and is not *superseded*: no
    acknowledged write w2 on the key ran entirely between w's response and t0
    (w.resp < w2.inv and w2.resp < t0). The initial state (ABSENT) is a candidate unless an
    acknowledged write finished before t0. The read must return a candidate value.
    This is the usual register rule; unlike "the last write acknowledged before t0" it is
    also right when two completed writes overlapped each other (either may have won).

    Acknowledged = 2xx. A write answered with an expected 4xx (e.g. 400
    MANIFEST_BLOB_UNKNOWN, 404 on a delete) is *rejected*: it had no effect and is not a
    write. Any other answer (5xx, unexpected status, network error) is *unknown*: it is a
    candidate from its invocation on and forever, and never supersedes anything (it is
    also reported as an anomaly, so a run with such answers fails anyway). Only for
    Distribution (Features.for_server("distribution"), which rewrites link files in place)
    are unexpected 4xx/5xx tolerated and ABSENT allowed while another write on the key
    is in flight; Berth gets neither allowance.

    Derived effects: a manifest delete by digest D is, on every tag key T of the repo,
    the conditional write "if T = D then ABSENT". It is a candidate ABSENT on T (same
    rule) if some push of T -> D was invoked before the delete answered; and an
    acknowledged delete supersedes the value D of every push T -> D that answered before
    the delete was invoked.

    Catalog: ("repo", r) is PRESENT-candidate from the first operation on r that was
    invoked (any request can create it); ABSENT only until an acknowledged blob upload,
    mount or manifest push into r finished.

    Requests that are both read and write (DELETE answering 202 or 404, mount answering
    201, manifest PUT answering 400 MANIFEST_BLOB_UNKNOWN) are checked as reads of the
    state before their own effect.

Listings are checked name by name with the same rule: every tag of the pool whose position
a page covers (after `last`, up to the page's last name, or everything after `last` on the
final page) must be listed iff the model allows present, and must not be listed iff it
allows absent; pages must be sorted (byte order), without duplicates, at most n long, and
the Link must continue after the page's last name. Each page is its own read interval.
Bytes: every manifest body must hash to its Docker-Content-Digest, which must be a
manifest of the pool, with the right Content-Type; blob bodies must hash to their digest.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlparse

import requests

INF = math.inf
ABSENT = "ABSENT"
PRESENT = "PRESENT"
ANY_TAGGED = "LISTED"  # observation of a tag in a listing: it has some (any) digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST,
                             "application/vnd.docker.distribution.manifest.list.v2+json"])
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
SIG_TYPE = "application/vnd.berth.model.signature"
SBOM_TYPE = "application/vnd.berth.model.sbom"

REPOS = ["app", "lib/base", "x"]  # byte order and path order agree
TAGS = ["Z9", "_x", "a-b", "latest", "v1", "v1.0", "v2"]  # sorted in byte order
N_IMAGES = 8
N_LAYERS = 6
N_REFERRERS = 6

DEFAULT_SEED = 20240611
DEFAULT_OPS = 150
DEFAULT_CLIENTS = 8


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


@dataclass
class Features:
    """What the server under test implements (Distribution 2.8 lacks several)."""
    referrers: bool = True        # GET /v2/<name>/referrers/<digest>
    tag_delete: bool = True       # DELETE /v2/<name>/manifests/<tag>
    tag_pagination: bool = True   # tags/list?n=&last= with Link
    sorted_tags: bool = True      # tags/list in byte order
    # Tolerances for a server that is known not to be atomic (both False for Berth):
    torn_writes: bool = False     # a key may read as absent while another write on it runs
    tolerate_errors: bool = False  # an unexpected 4xx/5xx = outcome unknown, not a failure

    @staticmethod
    def for_server(kind: str) -> "Features":
        if kind == "distribution":
            # Distribution 2.8.2: no referrers API, DELETE by tag answers 400
            # DIGEST_INVALID, tags/list ignores n/last and is not sorted. Its filesystem
            # driver rewrites link files in place (truncate, then write), so re-pushing a
            # blob, manifest or tag makes it briefly unreadable to requests that overlap
            # the rewrite (404, 400 MANIFEST_BLOB_UNKNOWN, 400 DIGEST_INVALID on a DELETE,
            # 500), and concurrent deletes fail with 500 (rmdir: directory not empty).
            return Features(referrers=False, tag_delete=False, tag_pagination=False,
                            sorted_tags=False, torn_writes=True, tolerate_errors=True)
        return Features()


# ---------------------------------------------------------------------------- content pool

class Pool:
    """Deterministic (per seed) blobs, image manifests and referrers; names carry a run id
    so that a run never meets the state of an earlier one on a shared server."""

    def __init__(self, seed: int, run_id: str):
        rng = random.Random(f"{seed}/pool")
        self.label: dict[str, str] = {}
        self.blob: dict[str, bytes] = {}
        self.layers = []
        for i in range(N_LAYERS):
            data = f"berth model {run_id} layer {i}\n".encode() * rng.randint(3, 400)
            self.layers.append(self._blob(data, f"layer{i}"))
        self.configs = []
        for i in range(N_IMAGES):
            cfg = json.dumps({"architecture": "amd64", "os": "linux",
                              "config": {"Labels": {"berth.model": f"{run_id}-{i}"}},
                              "rootfs": {"type": "layers", "diff_ids": []}},
                             sort_keys=True).encode()
            self.configs.append(self._blob(cfg, f"cfg{i}"))
        self.empty = self._blob(EMPTY_BLOB, "empty")
        assert self.empty == EMPTY_DIGEST
        # Blobs that deletes, uploads and mounts pick from (the empty blob is only
        # uploaded, by referrer pushes).
        self.churn_blobs = self.layers + self.configs

        self.manifest: dict[str, tuple[bytes, str]] = {}  # digest -> (bytes, media type)
        self.refs_of: dict[str, list[str]] = {}           # manifest digest -> blob digests
        self.images = []
        for i in range(N_IMAGES):
            docker = i % 4 == 3
            lays = rng.sample(self.layers, rng.randint(1, 2))
            if docker:
                mt, cmt, lmt = DOCKER_MANIFEST, "application/vnd.docker.container.image.v1+json", \
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
            else:
                mt, cmt, lmt = OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", \
                    "application/vnd.oci.image.layer.v1.tar+gzip"
            m = {"schemaVersion": 2, "mediaType": mt,
                 "config": self._desc(cmt, self.configs[i]),
                 "layers": [self._desc(lmt, d) for d in lays]}
            if not docker:
                m["annotations"] = {"org.berth.model.image": f"{run_id}-{i}"}
            self.images.append(self._manifest(m, f"img{i}", [self.configs[i], *lays]))

        # Referrers: subjects img0..img2, two each of different artifact types.
        self.referrers = []
        self.referrer_info: dict[str, tuple[str, str]] = {}  # digest -> (subject, type)
        for k in range(N_REFERRERS):
            subject = self.images[k % 3]
            atype = SIG_TYPE if k % 2 == 0 else SBOM_TYPE
            m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": atype,
                 "config": self._desc(EMPTY_TYPE, self.empty),
                 "layers": [self._desc(EMPTY_TYPE, self.empty)],
                 "subject": self._desc(self.manifest[subject][1], subject),
                 "annotations": {"org.berth.model.referrer": f"{run_id}-{k}"}}
            d = self._manifest(m, f"ref{k}", [self.empty])
            self.referrers.append(d)
            self.referrer_info[d] = (subject, atype)

    def _blob(self, data: bytes, label: str) -> str:
        d = sha256(data)
        self.blob[d] = data
        self.label[d] = label
        return d

    def _desc(self, media_type: str, digest: str) -> dict:
        size = len(self.blob[digest]) if digest in self.blob else len(self.manifest[digest][0])
        return {"mediaType": media_type, "digest": digest, "size": size}

    def _manifest(self, m: dict, label: str, blobs: list[str]) -> str:
        body = json.dumps(m, separators=(",", ":")).encode()
        d = sha256(body)
        assert d not in self.manifest
        self.manifest[d] = (body, m["mediaType"])
        self.refs_of[d] = blobs
        self.label[d] = label
        return d

    def name(self, v) -> str:
        return self.label.get(v, v) if isinstance(v, str) else str(v)

    def labels(self, text: str) -> str:
        return re.sub(r"sha256:[0-9a-f]{64}", lambda mm: self.name(mm.group(0)), text)


# ---------------------------------------------------------------------------- history

@dataclass(eq=False)
class Op:
    id: int
    client: int
    label: str
    inv: float = 0.0
    resp: float = 0.0
    reqs: list = field(default_factory=list)  # "METHOD path -> status"


@dataclass(eq=False)
class Write:
    key: tuple
    value: str
    inv: float
    resp: float   # INF when the outcome is unknown
    op: Op
    note: str = ""


@dataclass(eq=False)
class CondDelete:
    """Manifest delete by digest: on every tag of repo, "if tag = digest then ABSENT"."""
    repo: str
    digest: str
    inv: float
    resp: float
    op: Op


@dataclass(eq=False)
class Obs:
    """A read: passes if for any alternative (key, expected) the model allows expected.
    `exclude`: the request's own effect (a DELETE is checked as a read of the state
    before it)."""
    kind: str
    alts: list
    inv: float
    resp: float
    op: Op
    what: str
    exclude: tuple = ()


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops: list[Op] = []
        self.writes: dict[tuple, list[Write]] = defaultdict(list)
        self.conds: dict[str, list[CondDelete]] = defaultdict(list)
        self.obs: list[Obs] = []
        self.failures: list[tuple] = []  # (op, message) found while running (not model)
        self.anomalies: list[tuple] = []  # (op, message): unexpected statuses, errors
        self.tolerated: list[tuple] = []  # with Features.tolerate_errors only

    def new_op(self, client: int, label: str) -> Op:
        with self.lock:
            op = Op(len(self.ops), client, label)
            self.ops.append(op)
        return op

    def write(self, key, value, inv, resp, op, note="") -> Write:
        w = Write(key, value, inv, resp, op, note)
        with self.lock:
            self.writes[key].append(w)
        return w

    def cond_delete(self, repo, digest, inv, resp, op) -> CondDelete:
        c = CondDelete(repo, digest, inv, resp, op)
        with self.lock:
            self.conds[repo].append(c)
        return c

    def observe(self, kind, alts, inv, resp, op, what, exclude=()):
        with self.lock:
            self.obs.append(Obs(kind, alts, inv, resp, op, what, tuple(exclude)))

    def fail(self, op, msg):
        with self.lock:
            self.failures.append((op, msg))

    def anomaly(self, op, msg):
        with self.lock:
            self.anomalies.append((op, msg))

    def tolerate(self, op, msg):
        with self.lock:
            self.tolerated.append((op, msg))


# ---------------------------------------------------------------------------- checker

class Checker:
    def __init__(self, hist: History, pool: Pool, t_start: float, torn_writes: bool = False):
        self.h = hist
        self.pool = pool
        self.t0 = t_start
        self.torn_writes = torn_writes

    def candidates(self, key, t0, t1, exclude=()) -> set:
        ws = [w for w in self.h.writes.get(key, ()) if w not in exclude]
        # Latest invocation among acknowledged writes that finished before t0: anything
        # that answered before it was invoked is superseded.
        fence = max((w.inv for w in ws if w.resp < t0), default=-INF)
        out = set()
        if fence == -INF:
            out.add(ABSENT)  # initial state
        conds = []
        if key[0] == "tag":
            conds = [c for c in self.h.conds.get(key[1], ()) if c not in exclude]
        cond_fence: dict[str, float] = {}
        for c in conds:
            if c.resp < t0:
                cond_fence[c.digest] = max(cond_fence.get(c.digest, -INF), c.inv)
        for w in ws:
            if w.inv >= t1 or fence > w.resp:
                continue
            if w.value != ABSENT and cond_fence.get(w.value, -INF) > w.resp:
                continue  # the tag pointed at a manifest deleted since
            out.add(w.value)
        first_put = {}
        for w in ws:
            if w.value != ABSENT:
                first_put[w.value] = min(first_put.get(w.value, INF), w.inv)
        for c in conds:
            if c.inv >= t1 or fence > c.resp:
                continue
            if first_put.get(c.digest, INF) < c.resp:
                out.add(ABSENT)
        if self.torn_writes and any(w.inv < t1 and w.resp > t0 for w in ws):
            out.add(ABSENT)  # only with Features.torn_writes (not for Berth)
        return out

    @staticmethod
    def allows(expect, cands) -> bool:
        if expect == ANY_TAGGED:
            return any(v != ABSENT for v in cands)
        return expect in cands

    def check(self) -> tuple[list[str], Counter]:
        problems, kinds = [], Counter()
        for o in sorted(self.h.obs, key=lambda o: o.inv):
            if any(self.allows(e, self.candidates(k, o.inv, o.resp, o.exclude)) for k, e in o.alts):
                continue
            problems.append(self.explain(o))
            kinds[o.kind] += 1
        return problems, kinds

    # -- reporting

    def t(self, x: float) -> str:
        return "     inf" if x == INF else f"{x - self.t0:8.4f}"

    def fmt_key(self, key) -> str:
        kind, repo, *rest = key
        return f"{kind} {repo}" + (f" {self.pool.name(rest[0])}" if rest else "")

    def fmt_vals(self, vals) -> str:
        return "{" + ", ".join(sorted(self.pool.name(v) for v in vals)) + "}"

    def explain(self, o: Obs) -> str:
        lines = [f"[{self.t(o.inv)} ..{self.t(o.resp)}] c{o.op.client} op#{o.op.id} "
                 f"{o.op.label}: {o.what}"]
        for key, expect in o.alts:
            cands = self.candidates(key, o.inv, o.resp, o.exclude)
            lines.append(f"  key ({self.fmt_key(key)}): observed {self.pool.name(expect)}, "
                         f"model allows {self.fmt_vals(cands)}")
            lines.extend(self.excerpt(key, o))
        return "\n".join(lines)

    def excerpt(self, key, o: Obs, keep_before: int = 10) -> list[str]:
        events = []
        ws = self.h.writes.get(key, [])
        for w in ws:
            kind = "ack " if w.resp != INF else "??? "
            events.append((w.inv, w.resp, w.op, f"{kind}{self.pool.name(w.value)}"
                           + (f" ({w.note})" if w.note else "")))
        if key[0] == "tag":
            put_digests = {w.value for w in ws}
            for c in self.h.conds.get(key[1], []):
                if c.digest in put_digests:
                    kind = "ack " if c.resp != INF else "??? "
                    events.append((c.inv, c.resp, c.op, f"{kind}ABSENT if it is "
                                   f"{self.pool.name(c.digest)} (manifest delete)"))
        events.sort(key=lambda e: e[0])
        before = [e for e in events if e[1] < o.inv]
        during = [e for e in events if e[1] >= o.inv and e[0] < o.resp]
        out = []
        if len(before) > keep_before:
            out.append(f"    ... {len(before) - keep_before} earlier writes")
        for inv, resp, op, text in before[-keep_before:] + during:
            out.append(f"    [{self.t(inv)} ..{self.t(resp)}] c{op.client} op#{op.id} "
                       f"{op.label}: {text}  <{'; '.join(op.reqs)}>")
        out.append(f"    [{self.t(o.inv)} ..{self.t(o.resp)}] c{o.op.client} op#{o.op.id} "
                   f"<- this read  <{'; '.join(o.op.reqs)}>")
        if not events:
            out.append("    (no writes on this key: initial state ABSENT)")
        return out


# ---------------------------------------------------------------------------- clients

def abs_url(base: str, location: str) -> str:
    """`location` on the instance at `base`: an absolute URL keeps only its path, so the
    next request of a session may go to another instance."""
    if location.startswith(("http://", "https://")):
        parts = location.split("/", 3)
        location = "/" + (parts[3] if len(parts) > 3 else "")
    return base + location


def error_codes(r) -> list[str]:
    try:
        return [e.get("code") for e in r.json().get("errors", [])]
    except Exception:  # noqa: BLE001
        return []


class Client:
    def __init__(self, model: "Model", idx: int):
        self.m = model
        self.h = model.hist
        self.pool = model.pool
        self.idx = idx
        self.s = requests.Session()
        self.rng = random.Random(f"{model.seed}/client/{idx}")
        # Which instance each request goes to, when there are several: drawn from a
        # generator of its own so the operations stay those of the seed.
        self.route = random.Random(f"{model.seed}/route/{idx}")
        self.touched: set[str] = set()

    @property
    def base(self) -> str:
        """The base URL of the next request: any of the instances, so a write acknowledged
        by one is read back through another, and upload sessions move between them."""
        return self.m.bases[0] if len(self.m.bases) == 1 else self.route.choice(self.m.bases)

    # -- plumbing

    def repo(self, r: str) -> str:
        return self.m.prefix + r

    def http(self, op: Op, method: str, url: str, expect=(), **kw):
        """One request; returns (response or None, t_inv, t_resp). A status outside
        `expect` (or no answer) is recorded as an anomaly."""
        if not url.startswith("http"):
            url = self.base + url
        kw.setdefault("timeout", 60)
        kw.setdefault("allow_redirects", method in ("GET", "HEAD") and "/blobs/sha256:" in url)
        t0 = time.monotonic()
        try:
            r = self.s.request(method, url, **kw)
            r.content  # noqa: B018 - read the whole body before taking the response time
        except requests.RequestException as e:
            t1 = time.monotonic()
            op.reqs.append(f"{method} {self.short(url)} {type(e).__name__}")
            self.h.anomaly(op, f"{method} {self.short(url)}: {e!r}")
            return None, t0, t1
        t1 = time.monotonic()
        op.reqs.append(f"{method} {self.short(url)} {r.status_code}")
        if r.status_code not in expect:
            if r.status_code >= 400 and self.m.features.tolerate_errors:
                self.h.tolerate(op, f"{method} {self.short(url)} -> {r.status_code}: {r.text[:300]}")
            else:
                self.h.anomaly(op, f"{method} {self.short(url)} -> {r.status_code} (expected "
                                   f"{sorted(expect)}): {r.text[:300]}")
        return r, t0, t1

    def short(self, url: str) -> str:
        """A request for history excerpts: no host or prefix, digests as pool labels."""
        u = urlparse(url)
        text = u.path.replace("/v2/" + self.m.prefix, "").replace(self.m.prefix, "")
        if u.query:
            q = "&".join(x for x in u.query.split("&") if not x.startswith("_state="))
            text += ("?" + q) if q else ""
        text = re.sub(r"uploads/([0-9a-zA-Z-]{8})[0-9a-zA-Z-]+", r"uploads/\1..", text)
        return self.pool.labels(text)

    def touch(self, op: Op, repo: str, t: float):
        """Any request may create the repository (as far as the catalog shows)."""
        if repo not in self.touched:
            self.touched.add(repo)
            self.h.write(("repo", repo), PRESENT, t, INF, op, "first request on the repository")

    def created(self, op: Op, repo: str, inv: float, resp: float, ok: bool):
        self.h.write(("repo", repo), PRESENT, inv, resp if ok else INF, op)

    # -- writes

    def upload_blob(self, op: Op, repo: str, digest: str, chunked: bool, inv=None, loc=None):
        """Monolithic (POST + PUT with body) or chunked (POST + PATCH... + PUT) upload."""
        data = self.pool.blob[digest]
        if inv is None:
            inv = time.monotonic()
            self.touch(op, repo, inv)
        if loc is None:
            r, _, _ = self.http(op, "POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
            if r is None or r.status_code != 202:
                return False  # no session, nothing committed
            loc = abs_url(self.base, r.headers["Location"])
        body = data
        if chunked:
            cuts = sorted({0, len(data), *self.rng_upload.sample(range(1, len(data)), 2)})
            for a, b in zip(cuts, cuts[1:]):
                r, _, _ = self.http(op, "PATCH", loc, expect=(202,), data=data[a:b], headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{a}-{b - 1}", "Content-Length": str(b - a)})
                if r is None or r.status_code != 202:
                    return False  # the session was not committed: no effect
                if r.headers.get("Range") != f"0-{b - 1}":
                    self.h.fail(op, f"PATCH answered Range {r.headers.get('Range')!r}, "
                                    f"expected 0-{b - 1}")
                loc = abs_url(self.base, r.headers["Location"])
            body = None
        url = loc + ("&" if "?" in loc else "?") + "digest=" + digest
        r, _, t1 = self.http(op, "PUT", url, expect=(201,), data=body,
                             headers={"Content-Type": "application/octet-stream"})
        ok = r is not None and r.status_code == 201
        if ok and r.headers.get("Docker-Content-Digest", digest) != digest:
            self.h.fail(op, f"blob PUT answered Docker-Content-Digest "
                            f"{r.headers.get('Docker-Content-Digest')}, expected {digest}")
        self.h.write(("blob", repo, digest), PRESENT, inv, t1 if ok else INF, op,
                     "chunked upload" if chunked else "upload")
        self.created(op, repo, inv, t1, ok)
        return ok

    def ensure_blob(self, op: Op, repo: str, digest: str, mode: str):
        """Get a blob linked before a manifest push: upload it (monolithic or chunked),
        mount it from another repository, or HEAD it and upload only if missing."""
        if mode == "mono":
            self.upload_blob(op, repo, digest, chunked=False)
        elif mode == "chunked":
            self.upload_blob(op, repo, digest, chunked=True)
        elif mode == "head":
            if self.read_blob(op, repo, digest, "HEAD") != PRESENT:
                self.upload_blob(op, repo, digest, chunked=False)
        else:  # mount from another repository
            self.mount(op, repo, mode, digest)

    def mount(self, op: Op, repo: str, source: str, digest: str):
        inv = time.monotonic()
        self.touch(op, repo, inv)
        r, _, t1 = self.http(op, "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}",
                             expect=(201, 202))
        if r is not None and r.status_code == 201:
            self.h.observe("mount 201", [(("blob", source, digest), PRESENT)], inv, t1, op,
                           f"mount from {source} answered 201 (source linked)")
            self.h.write(("blob", repo, digest), PRESENT, inv, t1, op, f"mount from {source}")
            self.created(op, repo, inv, t1, True)
        elif r is not None and r.status_code == 202:
            # Fell back to an upload session: finish it as a monolithic upload.
            self.upload_blob(op, repo, digest, chunked=False, inv=inv,
                             loc=abs_url(self.base, r.headers["Location"]))
        else:
            self.h.write(("blob", repo, digest), PRESENT, inv, INF, op, f"mount from {source}")

    def put_manifest(self, op: Op, repo: str, digest: str, tag: str | None, body=None):
        body_, media_type = self.pool.manifest[digest]
        body = body if body is not None else body_
        ref = tag or digest
        inv = time.monotonic()
        self.touch(op, repo, inv)
        r, _, t1 = self.http(op, "PUT", f"/v2/{repo}/manifests/{ref}", expect=(201, 400),
                             data=body, headers={"Content-Type": media_type})
        if r is not None and r.status_code == 400 and "MANIFEST_BLOB_UNKNOWN" in error_codes(r):
            # Rejected: legitimate only if some referenced blob may be unlinked.
            self.h.observe("manifest PUT 400", [(("blob", repo, b), ABSENT) for b in self.pool.refs_of[digest]],
                           inv, t1, op, f"manifest PUT answered 400 MANIFEST_BLOB_UNKNOWN "
                           f"{self.pool.labels(r.text[:400])}")
            return False
        ok = r is not None and r.status_code == 201
        if r is not None and r.status_code == 400:
            (self.h.tolerate if self.m.features.tolerate_errors else self.h.anomaly)(
                op, f"manifest PUT 400 {self.pool.labels(r.text[:300])}")
        subject = self.pool.referrer_info.get(digest, (None,))[0]
        if ok and subject and self.m.features.referrers and r.headers.get("OCI-Subject") != subject:
            self.h.fail(op, f"referrer PUT answered OCI-Subject {r.headers.get('OCI-Subject')!r}, "
                            f"expected {subject}")
        if ok and r.headers.get("Docker-Content-Digest") != digest:
            self.h.fail(op, f"manifest PUT answered Docker-Content-Digest "
                            f"{r.headers.get('Docker-Content-Digest')}, expected {digest}")
        resp = t1 if ok else INF
        self.h.write(("manifest", repo, digest), PRESENT, inv, resp, op,
                     f"push as {tag}" if tag else "push by digest")
        if tag:
            self.h.write(("tag", repo, tag), digest, inv, resp, op, "push")
        self.created(op, repo, inv, t1, ok)
        return ok

    def delete(self, op: Op, key: tuple, path: str, what: str):
        """DELETE of a tag, manifest or blob: 202 = it was there and is gone, 404 = it
        was not there (a read with no effect)."""
        inv = time.monotonic()
        self.touch(op, key[1], inv)
        r, _, t1 = self.http(op, "DELETE", path, expect=(202, 404))
        status = r.status_code if r is not None else None
        if status == 404:
            self.h.observe(what, [(key, ABSENT)], inv, t1, op, f"{what} answered 404 (it did not exist)")
            return
        resp = t1 if status == 202 else INF
        own = [self.h.write(key, ABSENT, inv, resp, op, what)]
        if key[0] == "manifest":
            own.append(self.h.cond_delete(key[1], key[2], inv, resp, op))
        if status == 202:
            self.h.observe(what, [(key, ANY_TAGGED if key[0] == "tag" else PRESENT)], inv, t1, op,
                           f"{what} answered 202 (it existed)", exclude=own)

    # -- reads

    def read_manifest(self, op: Op, repo: str, ref: str, method: str):
        r, t0, t1 = self.http(op, method, f"/v2/{repo}/manifests/{ref}", expect=(200, 404),
                              headers={"Accept": MANIFEST_ACCEPT})
        is_tag = not ref.startswith("sha256:")
        key = ("tag", repo, ref) if is_tag else ("manifest", repo, ref)
        if r is None or r.status_code not in (200, 404):
            return None
        if r.status_code == 404:
            self.h.observe(f"{method} manifest", [(key, ABSENT)], t0, t1, op, f"{method} manifest answered 404")
            return None
        d = r.headers.get("Docker-Content-Digest")
        if d not in self.pool.manifest:
            self.h.fail(op, f"{method} manifest {ref}: Docker-Content-Digest {d!r} is no "
                            f"manifest this run pushed")
            return None
        body, media_type = self.pool.manifest[d]
        if method == "GET" and sha256(r.content) != d:
            self.h.fail(op, f"GET manifest {ref}: body hashes to {sha256(r.content)}, "
                            f"Docker-Content-Digest says {d}")
        if method == "HEAD" and r.headers.get("Content-Length") not in (None, str(len(body))):
            self.h.fail(op, f"HEAD manifest {ref}: Content-Length {r.headers.get('Content-Length')}, "
                            f"expected {len(body)} ({self.pool.name(d)})")
        if r.headers.get("Content-Type", "").split(";")[0].strip() != media_type:
            self.h.fail(op, f"{method} manifest {ref}: Content-Type "
                            f"{r.headers.get('Content-Type')!r}, expected {media_type}")
        if not is_tag and d != ref:
            self.h.fail(op, f"{method} manifest by digest {ref} answered digest {d}")
        self.h.observe(f"{method} manifest", [(key, d if is_tag else PRESENT)], t0, t1, op,
                       f"{method} manifest answered 200 {self.pool.name(d)}")
        return d

    def read_blob(self, op: Op, repo: str, digest: str, method: str):
        r, t0, t1 = self.http(op, method, f"/v2/{repo}/blobs/{digest}", expect=(200, 404))
        if r is None or r.status_code not in (200, 404):
            return None
        key = ("blob", repo, digest)
        if r.status_code == 404:
            self.h.observe(f"{method} blob", [(key, ABSENT)], t0, t1, op, f"{method} blob answered 404")
            return ABSENT
        if method == "GET" and r.content != self.pool.blob[digest]:
            self.h.fail(op, f"GET blob {digest}: body hashes to {sha256(r.content)}")
        if method == "HEAD" and r.headers.get("Content-Length") != str(len(self.pool.blob[digest])):
            self.h.fail(op, f"HEAD blob {digest}: Content-Length {r.headers.get('Content-Length')}")
        self.h.observe(f"{method} blob", [(key, PRESENT)], t0, t1, op, f"{method} blob answered 200")
        return PRESENT

    def check_names(self, op: Op, names, last: str | None, n: int | None, sort: bool, what: str):
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            self.h.fail(op, f"{what}: not a list of names: {names!r}")
            return False
        if len(set(names)) != len(names):
            self.h.fail(op, f"{what}: duplicate names {names}")
        if sort and names != sorted(names):
            self.h.fail(op, f"{what}: not in byte order: {names}")
        if n is not None and len(names) > n:
            self.h.fail(op, f"{what}: {len(names)} names on a page of n={n}: {names}")
        if last is not None and any(x <= last for x in names):
            self.h.fail(op, f"{what}: names not after last={last!r}: {names}")
        return True

    def tags_list(self, op: Op, repo: str, n: int | None):
        """Whole list (n None) or paginated, following Link."""
        url, last = f"/v2/{repo}/tags/list" + (f"?n={n}" if n else ""), None
        for _ in range(len(TAGS) + 3):
            r, t0, t1 = self.http(op, "GET", url, expect=(200, 404))
            if r is None or r.status_code not in (200, 404):
                return
            if r.status_code == 404:  # repository not known yet: no tags
                names, link = [], None
            else:
                doc = r.json()
                names = doc.get("tags") or []
                link = r.links.get("next", {}).get("url")
                if doc.get("name") != repo:
                    self.h.fail(op, f"tags/list name {doc.get('name')!r}, expected {repo!r}")
                if not self.check_names(op, names, last, n, self.m.features.sorted_tags, "tags/list"):
                    return
                unknown = [x for x in names if x not in TAGS]
                if unknown:
                    self.h.fail(op, f"tags/list lists tags never pushed: {unknown}")
            if link and not names:
                self.h.fail(op, f"tags/list: Link {link!r} on an empty page")
                return
            end = names[-1] if link else None
            for tag in TAGS:
                if (last is None or tag > last) and (end is None or tag <= end):
                    listed = tag in names
                    self.h.observe("tags/list", [(("tag", repo, tag), ANY_TAGGED if listed else ABSENT)],
                                   t0, t1, op, f"tags/list page (after {last!r}, n={n}) "
                                   f"{'lists' if listed else 'does not list'} {tag}: {names}")
            if not link:
                return
            q = parse_qs(urlparse(link).query)
            if q.get("last") != [end]:
                self.h.fail(op, f"tags/list Link {link!r} does not continue after {end!r}")
                return
            last, url = end, abs_url(self.base, link)
        self.h.fail(op, "tags/list: too many pages")

    def catalog(self, op: Op, n: int):
        ours = [self.repo(r) for r in REPOS]
        # Start just before our prefix, so a shared registry's other repositories do
        # not make this long; stop once past it.
        last = self.m.prefix.rstrip("/")
        url = f"/v2/_catalog?n={n}&last={quote(last, safe='')}"
        for _ in range(200):
            r, t0, t1 = self.http(op, "GET", url, expect=(200,))
            if r is None or r.status_code != 200:
                return
            names = r.json().get("repositories") or []
            link = r.links.get("next", {}).get("url")
            if not self.check_names(op, names, last, n, True, "_catalog"):
                return
            strangers = [x for x in names if x.startswith(self.m.prefix) and x not in ours]
            if strangers:
                self.h.fail(op, f"_catalog lists repositories never used: {strangers}")
            end = names[-1] if link else None
            if link and not names:
                self.h.fail(op, f"_catalog: Link {link!r} on an empty page")
                return
            for repo in ours:
                if repo > last and (end is None or repo <= end):
                    listed = repo in names
                    self.h.observe("_catalog", [(("repo", repo), PRESENT if listed else ABSENT)], t0, t1, op,
                                   f"_catalog page (after {last!r}, n={n}) "
                                   f"{'lists' if listed else 'does not list'} {repo}: {names}")
            if not link or end > ours[-1]:
                return
            q = parse_qs(urlparse(link).query)
            if q.get("last") != [end]:
                self.h.fail(op, f"_catalog Link {link!r} does not continue after {end!r}")
                return
            last, url = end, abs_url(self.base, link)
        self.h.fail(op, "_catalog: too many pages")

    def referrers(self, op: Op, repo: str, subject: str, atype: str | None):
        url = f"/v2/{repo}/referrers/{subject}" + (f"?artifactType={quote(atype)}" if atype else "")
        r, t0, t1 = self.http(op, "GET", url, expect=(200, 404))
        if r is None or r.status_code not in (200, 404):
            return
        if r.status_code == 404:
            if "NAME_UNKNOWN" not in error_codes(r):
                self.h.anomaly(op, f"referrers 404 without NAME_UNKNOWN: {r.text[:200]}")
                return
            listed = {}
        else:
            doc = r.json()
            if r.headers.get("Content-Type", "").split(";")[0] != OCI_INDEX or \
                    doc.get("mediaType") != OCI_INDEX or doc.get("schemaVersion") != 2:
                self.h.fail(op, f"referrers: not an OCI index ({r.headers.get('Content-Type')}): "
                                f"{r.text[:300]}")
            listed = {}
            for desc in doc.get("manifests") or []:
                d = desc.get("digest")
                if d in listed:
                    self.h.fail(op, f"referrers lists {d} twice")
                listed[d] = desc
            filtered = "artifactType" in r.headers.get("OCI-Filters-Applied", "")
            if atype and filtered:
                wrong = [d for d, x in listed.items() if x.get("artifactType") != atype]
                if wrong:
                    self.h.fail(op, f"referrers filtered by {atype} lists other types: {wrong}")
            if atype and not filtered:  # spec: the client filters then
                listed = {d: x for d, x in listed.items() if x.get("artifactType") == atype}
            for d, desc in listed.items():
                info = self.pool.referrer_info.get(d)
                if info is None or info[0] != subject:
                    self.h.fail(op, f"referrers of {self.pool.name(subject)} lists "
                                    f"{self.pool.name(d)}, which has another or no subject")
                    continue
                body, mt = self.pool.manifest[d]
                want = {"mediaType": mt, "digest": d, "size": len(body), "artifactType": info[1]}
                got = {k: desc.get(k) for k in want}
                if got != want:
                    self.h.fail(op, f"referrers descriptor {got}, expected {want}")
        for d in self.pool.referrers:
            s, t = self.pool.referrer_info[d]
            if s != subject or (atype and t != atype):
                continue
            there = d in listed
            self.h.observe("referrers", [(("manifest", repo, d), PRESENT if there else ABSENT)], t0, t1, op,
                           f"referrers of {self.pool.name(subject)}"
                           + (f" (artifactType={atype})" if atype else "")
                           + f" {'lists' if there else 'does not list'} {self.pool.name(d)}")

    def look(self, op: Op, repo: str, tag: str, how: str, n: int | None):
        if how == "list":
            self.tags_list(op, repo, n)
        else:
            self.read_manifest(op, repo, tag, how)

    # -- the random operations

    OPS = [  # (name, weight)
        ("push_tag", 14), ("push_digest", 4), ("retag", 8), ("delete_tag", 5),
        ("delete_manifest", 4), ("delete_blob", 5), ("upload_blob", 4), ("mount", 4),
        ("push_referrer", 5), ("delete_referrer", 3),
        ("get_tag", 12), ("head_tag", 4), ("get_digest", 5), ("head_digest", 3),
        ("read_blob", 6), ("tags_list", 6), ("tags_page", 4), ("catalog", 2), ("referrers", 5),
    ]

    def one(self):
        """One random operation. Every random draw is made up front, independent of the
        answers, so a seed always produces the same sequence of operations per client."""
        rng = self.rng
        names = [n for n, _ in self.OPS]
        kind = rng.choices(names, weights=[w for _, w in self.OPS])[0]
        repo_i = rng.randrange(len(REPOS))
        repo = self.repo(REPOS[repo_i])
        other = self.repo(REPOS[(repo_i + 1 + rng.randrange(len(REPOS) - 1)) % len(REPOS)])
        tag, tag2 = rng.choice(TAGS), rng.choice(TAGS)
        img = rng.choice(self.pool.images)
        ref = rng.choice(self.pool.referrers)
        blob = rng.choice(self.pool.churn_blobs)
        modes = [rng.choice(["mono", "chunked", "head", "head", "mount"]) for _ in range(3)]
        chunked = rng.random() < 0.5
        n = rng.randint(1, 3)
        method = rng.choice(["GET", "HEAD"])
        # Like a CI job: look at the tag (or the tag list) before pushing, read it back after.
        before = rng.choice([None, "GET", "list"])
        after = rng.choice([None, "GET", "HEAD", "list"])
        list_n = rng.choice([None, n])
        atype = rng.choice([None, SIG_TYPE, SBOM_TYPE])
        subject = rng.choice(self.pool.images[:4])
        target = rng.choice(self.pool.images + self.pool.referrers)
        self.rng_upload = random.Random(rng.random())

        f = self.m.features
        if kind == "delete_tag" and not f.tag_delete:
            kind = "get_tag"
        if kind == "tags_page" and not f.tag_pagination:
            kind = "tags_list"
        if not f.tag_pagination:
            list_n = None
        if kind == "referrers" and not f.referrers:
            kind = "get_digest"

        P = self.pool.name
        short = repo[len(self.m.prefix):]
        label = {
            "push_tag": f"push {P(img)} as {short}:{tag}" + (f" ({before} before)" if before else "")
                        + (f" ({after} after)" if after else ""),
            "push_digest": f"push {P(img)} to {short} by digest",
            "retag": f"retag {short}:{tag} as {tag2}",
            "delete_tag": f"delete tag {short}:{tag}",
            "delete_manifest": f"delete manifest {short}@{P(img)}",
            "delete_blob": f"delete blob {short}@{P(blob)}",
            "upload_blob": f"upload {P(blob)} to {short} ({'chunked' if chunked else 'mono'})",
            "mount": f"mount {P(blob)} into {short} from {other[len(self.m.prefix):]}",
            "push_referrer": f"push referrer {P(ref)} to {short}",
            "delete_referrer": f"delete referrer {short}@{P(ref)}",
            "get_tag": f"{method} {short}:{tag}",
            "head_tag": f"HEAD {short}:{tag}",
            "get_digest": f"GET {short}@{P(target)}",
            "head_digest": f"HEAD {short}@{P(target)}",
            "read_blob": f"{method} blob {short}@{P(blob)}",
            "tags_list": f"tags/list {short}",
            "tags_page": f"tags/list {short} n={n}",
            "catalog": f"_catalog n={n}",
            "referrers": f"referrers {short}@{P(subject)}" + (f" artifactType={atype}" if atype else ""),
        }[kind]
        op = self.h.new_op(self.idx, label)
        op.inv = time.monotonic()

        if kind in ("push_tag", "push_digest"):
            tagged = kind == "push_tag"
            if tagged and before:
                self.look(op, repo, tag, before, list_n)
            for b, mode in zip(self.pool.refs_of[img], modes):
                self.ensure_blob(op, repo, b, other if mode == "mount" else mode)
            if self.put_manifest(op, repo, img, tag if tagged else None) and tagged and after:
                self.look(op, repo, tag, after, list_n)
        elif kind == "retag":
            d = self.read_manifest(op, repo, tag, "GET")
            if d is not None:
                self.put_manifest(op, repo, d, tag2)
        elif kind == "delete_tag":
            self.delete(op, ("tag", repo, tag), f"/v2/{repo}/manifests/{tag}", "tag delete")
        elif kind in ("delete_manifest", "delete_referrer"):
            d = img if kind == "delete_manifest" else ref
            self.delete(op, ("manifest", repo, d), f"/v2/{repo}/manifests/{d}", "manifest delete")
        elif kind == "delete_blob":
            self.delete(op, ("blob", repo, blob), f"/v2/{repo}/blobs/{blob}", "blob delete")
        elif kind == "upload_blob":
            self.upload_blob(op, repo, blob, chunked)
        elif kind == "mount":
            self.mount(op, repo, other, blob)
        elif kind == "push_referrer":
            self.ensure_blob(op, repo, self.pool.empty, "head")
            self.put_manifest(op, repo, ref, None)
        elif kind == "get_tag":
            self.read_manifest(op, repo, tag, method)
        elif kind == "head_tag":
            self.read_manifest(op, repo, tag, "HEAD")
        elif kind == "get_digest":
            self.read_manifest(op, repo, target, "GET")
        elif kind == "head_digest":
            self.read_manifest(op, repo, target, "HEAD")
        elif kind == "read_blob":
            self.read_blob(op, repo, blob, method)
        elif kind == "tags_list":
            self.tags_list(op, repo, None)
        elif kind == "tags_page":
            self.tags_list(op, repo, n)
        elif kind == "catalog":
            self.catalog(op, n)
        elif kind == "referrers":
            self.referrers(op, repo, subject, atype)
        op.resp = time.monotonic()

    def run(self, n_ops: int, start: threading.Barrier):
        start.wait()
        try:
            for _ in range(n_ops):
                self.one()
        finally:
            self.s.close()


# ---------------------------------------------------------------------------- driver

class Model:
    def __init__(self, base_url: str, seed: int, features: Features, run_id: str):
        self.bases = [u.rstrip("/") for u in base_url.split(",")]
        self.seed = seed
        self.features = features
        self.run_id = run_id
        self.prefix = f"model-{seed}-{run_id}/"
        self.pool = Pool(seed, run_id)
        self.hist = History()


def replay_hint(seed: int, ops: int, clients: int) -> str:
    return (f"MODEL_SEED={seed} MODEL_OPS={ops} MODEL_CLIENTS={clients} "
            f"python3 -m pytest -q tests/e2e/test_model.py")


def run_model(base_url: str, seed: int = DEFAULT_SEED, ops: int = DEFAULT_OPS,
              clients: int = DEFAULT_CLIENTS, features: Features | None = None,
              run_id: str | None = None, max_report: int = 5, log=print,
              replay: str | None = None) -> dict:
    """Run the model check against the registry at base_url; raise AssertionError on any
    violation. `ops` is per client. Returns statistics."""
    features = features or Features()
    replay = replay or replay_hint(seed, ops, clients)
    run_id = run_id or uuid.uuid4().hex[:8]
    m = Model(base_url, seed, features, run_id)
    log(f"model check: seed={seed} ops={ops} clients={clients} url={base_url} "
        f"prefix={m.prefix} features={features}\n  replay: {replay}")
    start = threading.Barrier(clients + 1)
    errors = []
    cls = [Client(m, i) for i in range(clients)]

    def body(c):
        try:
            c.run(ops, start)
        except Exception:  # noqa: BLE001 - a bug in the test or an unparseable answer
            errors.append(f"client {c.idx} crashed:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=body, args=(c,), daemon=True) for c in cls]
    for t in threads:
        t.start()
    start.wait()
    t_start = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t_start

    h = m.hist
    checker = Checker(h, m.pool, t_start, features.torn_writes)
    t_check = time.monotonic()
    problems, kinds = checker.check()
    stats = {
        "seed": seed, "elapsed_s": round(elapsed, 2), "check_s": round(time.monotonic() - t_check, 2),
        "ops": len(h.ops), "requests": sum(len(o.reqs) for o in h.ops),
        "reads_checked": len(h.obs),
        "writes_acked": sum(1 for ws in h.writes.values() for w in ws if w.resp != INF),
        "violations": len(problems), "violations_by_read": dict(kinds), "failures": len(h.failures), "anomalies": len(h.anomalies),
        "tolerated_errors": len(h.tolerated),
        "statuses": dict(Counter(r.rsplit(" ", 1)[-1] for o in h.ops for r in o.reqs)),
    }
    log(f"model check: {stats}")
    for op, msg in h.tolerated[:max_report]:
        log(f"  tolerated (Features.tolerate_errors): c{op.client} op#{op.id} {op.label}: {msg}")
    bad = []
    if errors:
        bad.append("client errors:\n" + "\n".join(errors[:3]))
    if problems:
        bad.append(f"{len(problems)} reads the model does not allow (first {min(len(problems), max_report)}):\n"
                   + "\n\n".join(problems[:max_report]))
    for title, items in (("wrong answers", h.failures), ("unexpected statuses / errors", h.anomalies)):
        if items:
            bad.append(f"{len(items)} {title} (first {min(len(items), max_report)}):\n" + "\n".join(
                f"  c{op.client} op#{op.id} {op.label}: {msg}  <{'; '.join(op.reqs)}>"
                for op, msg in items[:max_report]))
    if bad:
        raise AssertionError(
            f"model check FAILED (seed={seed}, ops={ops}, clients={clients}, url={base_url}, "
            f"prefix={m.prefix})\n  replay: {replay}\n"
            f"  times are seconds since the start; 'ack' = acknowledged write, '???' = unknown "
            f"outcome\n\n" + "\n\n".join(bad) + f"\n\nstats: {stats}")
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description="Model-based concurrency check of a registry "
                                            "(e.g. a load balancer in front of several Berths).")
    p.add_argument("url", help="base URL, e.g. http://127.0.0.1:5000, or several separated by "
                               "commas (instances sharing storage; each request picks one)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("MODEL_SEED", DEFAULT_SEED)))
    p.add_argument("--ops", type=int, default=int(os.environ.get("MODEL_OPS", DEFAULT_OPS)),
                   help="operations per client")
    p.add_argument("--clients", type=int,
                   default=int(os.environ.get("MODEL_CLIENTS", DEFAULT_CLIENTS)))
    p.add_argument("--server", choices=["berth", "distribution"], default="berth",
                   help="feature set of the server (distribution: no referrers API, no tag "
                        "delete, no tag pagination)")
    a = p.parse_args(argv)
    try:
        run_model(a.url, a.seed, a.ops, a.clients, Features.for_server(a.server),
                  replay=f"python3 tests/e2e/modelcheck.py {a.url} --seed {a.seed} --ops {a.ops} "
                         f"--clients {a.clients} --server {a.server}")
    except AssertionError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
