"""Power cuts: berth's root directory lives on cutfs (cutfs.py), an in-memory FUSE filesystem
that drops every write and directory change that was not fsynced when the power is cut.
Parallel monolithic and chunked blob pushes and manifest PUTs run until a seeded random
moment; the power is cut (berth SIGKILLed, un-synced state reverted, race-free), berth is
restarted on what survived, and then:

- every push that got its 201 pulls back bit-identical (blobs, manifests, tags);
- nothing half-written is visible: whatever GET serves has exactly the pushed bytes, and
  every listed tag resolves to a manifest;
- the database opens (berth starts, GET /v2/ is 200);
- an interrupted upload session either resumes (204, Range at a chunk boundary that was
  acknowledged, or of the one chunk in flight; PATCH the rest, PUT -> 201) or is unknown
  (404 BLOB_UPLOAD_UNKNOWN).

POWERCUT_SEED replays a run (timing still varies: the seed fixes sizes, the operation mix
and when the cut comes, not where the threads are at that moment; failures name what was
in flight). POWERCUT_CYCLES (default 12) sets the number of push-and-cut cycles (about one
in five also cuts the restart), POWERCUT_KEEP (default 0) lets each changed file/directory
keep its un-synced state with that probability. Details: tests/e2e/README.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import imagetools as it
from e2eutil import (SERVER_KIND, RegistryServer, abs_location, berth_only, get_blob,
                     get_manifest, path_of, run, stop_process, wait_for, with_digest)

CUTFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cutfs.py")
CYCLES = int(os.environ.get("POWERCUT_CYCLES", "12"))
KEEP = float(os.environ.get("POWERCUT_KEEP", "0"))
PUSHERS = int(os.environ.get("POWERCUT_PUSHERS", "4"))
REPOS = ("pc/alpha", "pc/beta", "pc/gamma")
OCTET = {"Content-Type": "application/octet-stream"}
KiB, MiB = 1024, 1024 * 1024

needs_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
    reason="needs root and /dev/fuse to mount the cutfs FUSE filesystem")


def _seed() -> int:
    s = os.environ.get("POWERCUT_SEED")
    return int(s) if s else random.SystemRandom().randrange(1 << 32)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _http() -> requests.Session:
    """A session that retries idempotent requests (GET, HEAD, PUT) on a dropped keep-alive
    connection (berth closes a connection after answering an error early); POST and PATCH
    are never retried."""
    s = requests.Session()
    retry = Retry(total=2, connect=2, read=0, redirect=0, status=0, other=0, backoff_factor=0)
    s.mount("http://", HTTPAdapter(max_retries=retry))
    return s


def _snip(r: requests.Response, n: int = 200) -> str:
    # Not r.text: messages are built eagerly, and charset detection on a binary body is slow.
    return r.content[:n].decode(errors="replace")


# ---------------------------------------------------------------- cutfs process control

class CutFS:
    def __init__(self, workdir: str):
        self.mnt = os.path.join(workdir, "mnt")
        self.ctl = os.path.join(workdir, "cutfs.sock")
        self.log_path = os.path.join(workdir, "cutfs.log")
        os.makedirs(self.mnt)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, CUTFS, self.mnt, "--control", self.ctl],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"cutfs exited with {self.proc.returncode}:\n{self.log_text()}")
            return self.mounted() and self._request("ping") == ["pong"]
        try:
            wait_for(up, 30, "cutfs to mount and answer on its control socket")
        except AssertionError as e:
            self.close()
            raise AssertionError(f"{e}\n{self.log_text()}") from None

    def mounted(self) -> bool:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == self.mnt and " fuse.cutfs " in line for line in f)

    def _request(self, line: str, on_first=None) -> list[str]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(180)
            s.connect(self.ctl)
            s.sendall(line.encode() + b"\n")
            f = s.makefile("r")
            first = f.readline().strip()
            if on_first is not None:
                on_first(first)
            return [first] + [ln.strip() for ln in f]

    def cut(self, proc: subprocess.Popen, keep: float = 0.0, seed: int = 0) -> dict:
        """Power cut: revert un-synced state and SIGKILL proc (race-free, in cutfs); reap
        proc here, since cutfs waits until its /proc entry is gone."""
        def reap(first):
            assert first == "killed", f"cutfs answered {first!r} to cut"
            proc.wait(timeout=120)
        lines = self._request(f"cut {proc.pid} {keep} {seed}", on_first=reap)
        assert len(lines) == 2 and lines[1].startswith("ok "), f"cutfs cut failed: {lines}"
        return json.loads(lines[1][3:])

    def fsync_dir(self, path: str):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-20000:].decode(errors="replace")
        except OSError:
            return "<no log>"

    def close(self):
        if self.mounted():
            if run(["umount", self.mnt], check=False, timeout=60).returncode != 0:
                run(["umount", "-l", self.mnt], check=False, timeout=60)
        try:
            self.proc.wait(timeout=10)  # libfuse's loop ends when the mount goes away
        except subprocess.TimeoutExpired:
            stop_process(self.proc)


@pytest.fixture
def cutfs(request, workdir):
    from conftest import _attach_log  # the per-test log attachment of conftest.py
    fs = CutFS(workdir)
    _attach_log(request.node, "cutfs", fs.log_text)
    yield fs
    fs.close()


# ---------------------------------------------------------------- the filesystem itself

@needs_fuse
def test_cutfs_keeps_only_what_was_synced(cutfs, workdir):
    """The model the power-cut test relies on, including SQLite in WAL mode on the mount."""
    m = cutfs.mnt
    os.mkdir(f"{m}/d")
    os.mkdir(f"{m}/db")  # apart: SQLite fsyncs the directory of its WAL
    cutfs.fsync_dir(m)
    with open(f"{m}/d/synced", "wb", buffering=0) as f:
        f.write(b"a" * 5000)
        os.fsync(f.fileno())
        f.write(b"b" * 100)  # after the fsync: lost
    with open(f"{m}/d/named-only", "wb") as f:
        f.write(b"c" * 10)  # never synced: the name survives (dir fsync below), not the data
    cutfs.fsync_dir(f"{m}/d")
    with open(f"{m}/d/unnamed", "wb", buffering=0) as f:
        f.write(b"d" * 10)
        os.fsync(f.fileno())  # data durable, name never: gone
    os.rename(f"{m}/d/named-only", f"{m}/d/renamed")  # directory not synced: reverted
    os.mkdir(f"{m}/vol")  # parent not synced: gone

    db = f"{m}/db/meta.db"
    script = ("import sqlite3,sys,time\n"
              f"c=sqlite3.connect({db!r}, isolation_level=None)\n"
              "assert c.execute('pragma journal_mode=wal').fetchone()[0]=='wal'\n"
              "c.execute('pragma synchronous=full'); c.execute('create table t(x)')\n"
              "for i in range(50): c.execute('insert into t values (?)',(i,))\n"
              "c.execute('pragma synchronous=off')\n"
              "c.execute('begin'); c.execute('insert into t values (-1)')\n"
              "print('ready',flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        summary = cutfs.cut(child)
    finally:
        stop_process(child)
    assert summary["cuts"] == 1 and summary["reverted"]["dirs"] >= 2, summary

    assert sorted(os.listdir(m)) == ["d", "db"]
    names = set(os.listdir(f"{m}/d"))
    assert {"synced", "named-only"} <= names and not {"unnamed", "renamed"} & names, names
    assert open(f"{m}/d/synced", "rb").read() == b"a" * 5000
    assert open(f"{m}/d/named-only", "rb").read() == b""
    c = sqlite3.connect(db)
    assert c.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert c.execute("select count(*), min(x) from t").fetchone() == (50, 0)
    c.close()


# ---------------------------------------------------------------- what the clients saw

class Session:
    """A chunked upload the client started: what it sent and what was acknowledged."""

    def __init__(self, repo: str, path: str, data: bytes, ends: list[int], put_body: bool):
        self.repo, self.path, self.data = repo, path, data
        self.ends = ends            # chunk ends; the last is len(data)
        self.put_body = put_body    # the last chunk goes with the PUT
        self.acked = 0              # last offset a 202 confirmed (0 once POST answered)
        self.inflight = 0           # end of the request in flight, if any
        self.done = False
        self.broken = False


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.blobs: dict[tuple[str, str], bytes] = {}       # acknowledged (201)
        self.tried_blobs: dict[tuple[str, str], bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}   # acknowledged (201)
        self.tried_manifests: dict[tuple[str, str], bytes] = {}
        self.tags: dict[tuple[str, str], str] = {}          # acknowledged
        self.tried_tags: dict[tuple[str, str], str] = {}
        self.fresh: set[tuple] = set()                      # (kind, repo, name) tried this cycle
        self.sessions: list[Session] = []                   # interrupted this cycle
        self.errors: list[str] = []                         # wrong answers before the cut
        self.inflight: dict[int, str] = {}                  # pusher -> what it is doing
        self.counts = {"blobs": 0, "chunked": 0, "manifests": 0}

    def acked_blobs_in(self, repo: str) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(d, b) for (r, d), b in self.blobs.items() if r == repo]


class Pusher(threading.Thread):
    def __init__(self, idx: int, base: str, ledger: Ledger, rng: random.Random,
                 stop: threading.Event, cut_started: threading.Event, tag_prefix: str):
        super().__init__(name=f"pusher-{idx}", daemon=True)
        self.idx, self.base, self.ledger, self.rng = idx, base, ledger, rng
        self.stop, self.cut_started, self.tag_prefix = stop, cut_started, tag_prefix
        self.http = _http()
        self.n = 0

    def doing(self, what: str):
        with self.ledger.lock:
            self.ledger.inflight[self.idx] = what

    def unexpected(self, what: str, r: requests.Response):
        if not self.cut_started.is_set():  # after the cut, failures are the point
            with self.ledger.lock:
                self.ledger.errors.append(f"{what}: {r.status_code} {_snip(r, 300)}")
        raise _Stop()

    def run(self):
        try:
            while not self.stop.is_set():
                self.n += 1
                op = self.rng.choices(("mono", "chunked", "manifest"), (4, 3, 3))[0]
                repo = self.rng.choice(REPOS)
                if op == "manifest" and len(self.ledger.acked_blobs_in(repo)) < 2:
                    op = "mono"
                getattr(self, op)(repo)
            self.doing("idle (stopped)")
        except requests.RequestException as e:
            if not self.cut_started.is_set():
                with self.ledger.lock:
                    self.ledger.errors.append(f"{self.ledger.inflight.get(self.idx)}: {e!r}")
        except _Stop:
            pass
        finally:
            self.http.close()

    def blob_size(self) -> int:
        r = self.rng.random()
        if r < 0.4:
            return self.rng.randint(1, 2 * KiB)
        if r < 0.85:
            return self.rng.randint(2 * KiB, 256 * KiB)
        return self.rng.randint(256 * KiB, 3 * MiB // 2)

    def mono(self, repo: str, data: bytes | None = None) -> str:
        if data is None and self.rng.random() < 0.1:
            # Bytes another push already sent (maybe still in flight) to another
            # repository: exercises publishing onto an existing blob file.
            with self.ledger.lock:
                others = [(r, d) for (r, d) in self.ledger.tried_blobs if r != repo]
                if others:
                    data = self.ledger.tried_blobs[self.rng.choice(others)]
        data = data if data is not None else self.rng.randbytes(self.blob_size())
        digest = _sha(data)
        with self.ledger.lock:
            self.ledger.tried_blobs[(repo, digest)] = data
            self.ledger.fresh.add(("blob", repo, digest))
        self.doing(f"monolithic POST {repo} {digest[:19]} ({len(data)} B)")
        r = self.http.post(f"{self.base}/v2/{repo}/blobs/uploads/?digest={digest}", data=data,
                           headers=OCTET, timeout=60)
        if r.status_code != 201 or r.headers.get("Docker-Content-Digest") != digest:
            self.unexpected(f"monolithic push of {digest} to {repo}", r)
        with self.ledger.lock:
            self.ledger.blobs[(repo, digest)] = data
            self.ledger.counts["blobs"] += 1
        return digest

    def chunked(self, repo: str):
        size = self.rng.randint(64 * KiB, 2 * MiB)
        data = self.rng.randbytes(size)
        digest = _sha(data)
        n = self.rng.randint(2, 5)
        # Chunk ends >= 2 apart: `Range: 0-0` then always means offset 0.
        ends = sorted(self.rng.sample(range(2, size - 1), n - 1)) + [size]
        ends = [e for i, e in enumerate(ends) if i == 0 or e - ends[i - 1] >= 2]
        with self.ledger.lock:
            self.ledger.tried_blobs[(repo, digest)] = data
            self.ledger.fresh.add(("blob", repo, digest))
        self.doing(f"chunked POST {repo}")
        r = self.http.post(f"{self.base}/v2/{repo}/blobs/uploads/", timeout=60)
        if r.status_code != 202:
            self.unexpected(f"POST upload to {repo}", r)
        loc = abs_location(self.base, r.headers["Location"])
        s = Session(repo, path_of(loc), data, ends, put_body=self.rng.random() < 0.3)
        with self.ledger.lock:
            self.ledger.sessions.append(s)
        start = 0
        for i, end in enumerate(ends):
            last = i == len(ends) - 1
            s.inflight = end
            if last and s.put_body:
                self.doing(f"chunked PUT+body {repo} {s.path} {start}-{end - 1} of {size} -> {digest[:19]}")
                r = self.http.put(with_digest(loc, digest), data=data[start:end], headers=OCTET,
                                  timeout=60)
                break
            self.doing(f"chunked PATCH {repo} {s.path} {start}-{end - 1} of {size}")
            r = self.http.patch(loc, data=data[start:end], timeout=60, headers={
                **OCTET, "Content-Range": f"{start}-{end - 1}"})
            if r.status_code != 202 or r.headers.get("Range") != f"0-{end - 1}":
                self.unexpected(f"PATCH {start}-{end - 1} of {s.path}", r)
            s.acked = end
            loc = abs_location(self.base, r.headers["Location"])
            start = end
        else:
            self.doing(f"chunked PUT {repo} {s.path} ({size} B) -> {digest[:19]}")
            r = self.http.put(with_digest(loc, digest), timeout=60)
        if r.status_code != 201 or r.headers.get("Docker-Content-Digest") != digest:
            self.unexpected(f"PUT {s.path} -> {digest}", r)
        with self.ledger.lock:
            s.done = True
            s.acked = size
            self.ledger.blobs[(repo, digest)] = data
            self.ledger.counts["chunked"] += 1

    def manifest(self, repo: str):
        cfg = it.canonical_json({"architecture": "amd64", "os": "linux", "created": self.n,
                                 "pusher": f"{self.tag_prefix}-{self.idx}",
                                 "rootfs": {"type": "layers", "diff_ids": []}})
        cfg_digest = self.mono(repo, cfg)
        pool = [b for b in self.ledger.acked_blobs_in(repo) if b[0] != cfg_digest]
        layers = self.rng.sample(pool, min(len(pool), self.rng.randint(1, 3)))
        body = it.canonical_json({
            "schemaVersion": 2, "mediaType": it.OCI_MANIFEST,
            "config": {"mediaType": it.OCI_CONFIG, "digest": cfg_digest, "size": len(cfg)},
            "layers": [{"mediaType": "application/octet-stream", "digest": d, "size": len(b)}
                       for d, b in layers]})
        digest = _sha(body)
        tag = f"{self.tag_prefix}-{self.idx}-{self.n}" if self.rng.random() < 0.8 else None
        with self.ledger.lock:
            self.ledger.tried_manifests[(repo, digest)] = body
            self.ledger.fresh.add(("manifest", repo, digest))
            if tag:
                self.ledger.tried_tags[(repo, tag)] = digest
                self.ledger.fresh.add(("tag", repo, tag))
        self.doing(f"manifest PUT {repo}:{tag or digest[:19]} ({len(body)} B)")
        r = self.http.put(f"{self.base}/v2/{repo}/manifests/{tag or digest}", data=body,
                          headers={"Content-Type": it.OCI_MANIFEST}, timeout=60)
        if r.status_code != 201 or r.headers.get("Docker-Content-Digest") != digest:
            self.unexpected(f"manifest PUT {repo}:{tag or digest}", r)
        with self.ledger.lock:
            self.ledger.manifests[(repo, digest)] = body
            if tag:
                self.ledger.tags[(repo, tag)] = digest
            self.ledger.counts["manifests"] += 1


class _Stop(Exception):
    pass


# ---------------------------------------------------------------- checks after a restart

class _Broken:
    """Stands for an answer that broke off: e.g. berth announced the size it recorded and
    then found fewer bytes in the file."""

    def __init__(self, e: Exception):
        self.status_code = f"broken answer ({type(e).__name__}: {e})"
        self.content = b""
        self.headers: dict = {}


class Checker:
    """Checks what a restarted berth serves against the ledger. What was pushed in this
    cycle is checked in full, older items by a seeded sample (`old`, with HEAD for old
    blobs) and everything, every byte, with old=1.0 and full=True. A violation is recorded
    with the cycle it was found in and the run goes on, so one run reports everything it
    finds; a lost item leaves the ledger so that later cycles do not report it again."""

    def __init__(self, base: str, ledger: Ledger, cycle: str, violations: list,
                 rng: random.Random, old: float, full: bool = False, root: str = ""):
        self.base, self.ledger, self.cycle, self.violations = base, ledger, cycle, violations
        self.root = root
        self.rng, self.old, self.full = rng, old, full
        self.http = _http()
        self.notes: list[str] = []

    def ok(self, cond, msg) -> bool:
        if not cond:
            self.violations.append((self.cycle, msg))
        return bool(cond)

    def picked(self, kind: str, repo: str, name: str) -> bool:
        return (kind, repo, name) in self.ledger.fresh or self.rng.random() < self.old

    @staticmethod
    def call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except requests.RequestException as e:
            return _Broken(e)

    def blobs(self):
        led = self.ledger
        for key, data in list(led.blobs.items()):
            repo, digest = key
            fresh = ("blob", repo, digest) in led.fresh
            if not (fresh or self.rng.random() < self.old):
                continue
            if fresh or self.full:
                r = self.call(get_blob, self.base, repo, digest)
                good = (self.ok(r.status_code == 200,
                                f"acknowledged blob {repo}@{digest} ({len(data)} B) lost: GET -> "
                                f"{r.status_code} {_snip(r, 200)}")
                        and self.ok(r.content == data,
                                    f"acknowledged blob {repo}@{digest} served with wrong bytes "
                                    f"({len(r.content)} B, {_sha(r.content)}; want {len(data)} B)"))
            else:
                r = self.call(self.http.head, f"{self.base}/v2/{repo}/blobs/{digest}", timeout=30)
                good = self.ok(r.status_code == 200 and r.headers.get("Content-Length") == str(len(data)),
                               f"acknowledged blob {repo}@{digest} ({len(data)} B) lost: HEAD -> "
                               f"{r.status_code} Content-Length {r.headers.get('Content-Length')}")
            if not good:
                del led.blobs[key]
        for key, data in list(led.tried_blobs.items()):
            repo, digest = key
            if key in led.blobs or ("blob", repo, digest) not in led.fresh and not self.full:
                continue
            r = self.call(get_blob, self.base, repo, digest)
            if (self.ok(r.status_code in (200, 404),
                        f"unacknowledged blob {repo}@{digest}: GET -> {r.status_code} {_snip(r, 200)}")
                    and r.status_code == 200):
                self.ok(r.content == data,
                        f"half-written blob visible: {repo}@{digest} served {len(r.content)} B "
                        f"({_sha(r.content)}), pushed {len(data)} B")

    def manifests(self):
        led = self.ledger
        for key, body in list(led.tried_manifests.items()):
            repo, digest = key
            if self.picked("manifest", repo, digest):
                self._check_manifest(led.manifests, key, f"manifest {repo}@{digest}", body, digest)
        for key, digest in list(led.tried_tags.items()):
            repo, tag = key
            if self.picked("tag", repo, tag):
                body = led.tried_manifests[(repo, digest)]
                self._check_manifest(led.tags, key, f"tag {repo}:{tag}", body, digest)
        for repo in REPOS:
            listed = self.tag_list(repo)
            want = {t for (r, t) in led.tags if r == repo}
            self.ok(want <= listed, f"acknowledged tags missing from {repo}/tags/list: "
                                    f"{sorted(want - listed)[:10]}")
            pushed = {t for (r, t) in led.tried_tags if r == repo}
            self.ok(listed <= pushed, f"{repo}/tags/list has tags never pushed: "
                                      f"{sorted(listed - pushed)[:10]}")
            for tag in listed:
                if not self.picked("tag", repo, tag):
                    continue
                r = self.call(get_manifest, self.base, repo, tag)
                self.ok(r.status_code == 200,
                        f"listed tag {repo}:{tag} points at a missing manifest: GET -> "
                        f"{r.status_code} {_snip(r, 200)}")

    def _check_manifest(self, acked_map, key, what, body, digest):
        """An acknowledged manifest (or tag) must read back as pushed; an unacknowledged
        one is either absent or complete, never wrong bytes."""
        repo, ref = key
        r = self.call(get_manifest, self.base, repo, ref)
        if key in acked_map and not self.ok(r.status_code == 200,
                                            f"acknowledged {what} lost: GET -> "
                                            f"{r.status_code} {_snip(r, 200)}"):
            del acked_map[key]
        elif self.ok(r.status_code in (200, 404),
                     f"{what}: GET -> {r.status_code} {_snip(r, 200)}") and r.status_code == 200:
            self.ok(r.content == body and r.headers.get("Docker-Content-Digest") == digest,
                    f"{what} served with wrong bytes: {r.content[:200]!r}")
    def tag_list(self, repo: str) -> set[str]:
        tags: set[str] = set()
        url = f"{self.base}/v2/{repo}/tags/list"
        while url:
            r = self.call(self.http.get, url, timeout=30)
            if r.status_code == 404 and not tags:
                return tags  # repository not known (yet)
            if not self.ok(r.status_code == 200, f"GET {url} -> {r.status_code} {_snip(r, 200)}"):
                return tags
            tags |= set(r.json().get("tags") or [])
            m = re.search(r"<([^>]+)>", r.headers.get("Link", ""))
            url = abs_location(self.base, m.group(1)) if m else None
        return tags

    def sessions(self) -> dict:
        """Every interrupted session resumes or is unknown; resumed ones are finished."""
        led = self.ledger
        out = {"resumed": 0, "unknown": 0, "ahead": 0, "broken": 0}
        for s in led.sessions:
            if s.done:
                continue
            try:
                resumed = self.session(s, out)
            except requests.RequestException as e:
                self.ok(False, f"interrupted session {s.path}: request failed: {e!r}")
                s.broken, resumed = True, False
            if resumed:
                out["resumed"] += 1
            elif s.broken:
                out["broken"] += 1
        led.sessions = []
        return out

    def session(self, s: Session, out: dict) -> bool:
        led = self.ledger
        url = self.base + s.path
        spool = os.path.join(self.root, "berth", "uploads", s.path.rstrip("/").rsplit("/", 1)[1])
        on_disk = (f"spool file {os.path.getsize(spool)} B" if os.path.exists(spool)
                   else "no spool file on disk")
        hexd = hashlib.sha256(s.data).hexdigest()
        blob_file = os.path.join(self.root, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
        if os.path.exists(blob_file):  # published (renamed) before the cut
            on_disk += f", blob file {os.path.getsize(blob_file)} B"
        what = (f"interrupted session {s.path} ({s.repo}, {len(s.data)} B, chunk ends {s.ends}, "
                f"acknowledged {s.acked}, in flight to {s.inflight}; after the restart: {on_disk})")

        def ok(cond, msg):
            s.broken = not cond
            return self.ok(cond, f"{what}: {msg}")
        http = _http()  # its own connections: an error answer may close one
        r = http.get(url, timeout=30)
        if r.status_code == 404:
            codes = [e.get("code") for e in r.json().get("errors", [])]
            out["unknown"] += 1
            return ok(codes == ["BLOB_UPLOAD_UNKNOWN"], f"404 with {codes}") and False
        if not ok(r.status_code == 204, f"GET -> {r.status_code} {_snip(r, 200)}"):
            return False
        rng_hdr = r.headers.get("Range", "")
        if not ok(re.fullmatch(r"0-\d+", rng_hdr), f"GET -> Range {rng_hdr!r}"):
            return False
        end = int(rng_hdr[2:])
        offset = 0 if end == 0 else end + 1
        if not (ok(offset == 0 or offset in s.ends, f"resumes at {offset}: not a chunk boundary")
                and ok(offset <= s.inflight, f"resumes at {offset}: past everything sent")):
            return False
        if offset > s.acked:
            out["ahead"] += 1  # the chunk in flight was stored; its 202 was lost
            self.notes.append(f"{s.path}: the chunk in flight (to {offset}) was stored")
        loc = abs_location(self.base, r.headers.get("Location", s.path))
        if offset < len(s.data):
            r = http.patch(loc, data=s.data[offset:], timeout=60, headers={
                **OCTET, "Content-Range": f"{offset}-{len(s.data) - 1}"})
            if not ok(r.status_code == 202 and r.headers.get("Range") == f"0-{len(s.data) - 1}",
                      f"GET said resumable at {offset} (204, Range {rng_hdr}), but PATCH of the "
                      f"rest -> {r.status_code} Range {r.headers.get('Range')} {_snip(r, 300)}"):
                return False
            loc = abs_location(self.base, r.headers["Location"])
        digest = _sha(s.data)
        r = http.put(with_digest(loc, digest), timeout=60)
        if not ok(r.status_code == 201 and r.headers.get("Docker-Content-Digest") == digest,
                  f"resumed at {offset}, final PUT -> {r.status_code} {_snip(r, 300)}"):
            return False
        rb = get_blob(self.base, s.repo, digest)
        if not ok(rb.status_code == 200 and rb.content == s.data,
                  f"resumed blob reads back {rb.status_code}, {len(rb.content)} B"):
            return False
        with led.lock:
            s.done = True
            led.blobs[(s.repo, digest)] = s.data
        return True


# ---------------------------------------------------------------- the test

@needs_fuse
@berth_only
def test_power_cut_during_parallel_pushes(cutfs, workdir, request, capsys):
    seed = _seed()
    with capsys.disabled():
        print(f"\n[powercut] POWERCUT_SEED={seed} POWERCUT_CYCLES={CYCLES} "
              f"POWERCUT_KEEP={KEEP} pushers={PUSHERS}", flush=True)
    from conftest import _attach_log
    root = os.path.join(cutfs.mnt, "root")
    os.mkdir(root)
    cutfs.fsync_dir(cutfs.mnt)  # the "disk" was prepared (and synced) before berth ran
    srv = RegistryServer(SERVER_KIND, workdir, root=root)
    _attach_log(request.node, "berth (on cutfs)", srv.log_text)
    ledger = Ledger()
    state = {"cycle": 0, "delay": 0.0, "inflight": {}, "cut": None, "startup": None}

    def header() -> str:
        inflight = "; ".join(f"#{k}: {v}" for k, v in sorted(state["inflight"].items()))
        startup = (f"; then cut again {state['startup']:.3f}s into the restart"
                   if state["startup"] is not None else "")
        return (f"[POWERCUT_SEED={seed} cycle {state['cycle']}/{CYCLES}: cut "
                f"{state['delay']:.3f}s after the pushes started; in flight at the cut: "
                f"{inflight or '-'}; cutfs reverted: {state['cut']}{startup}]")

    def ctx(msg: str) -> str:
        return f"{header()} {msg}"

    t_start = time.monotonic()
    report: list[str] = []
    notes: list[str] = []
    violations: list[tuple[str, str]] = []  # (cycle header, what)
    cycles_run = cuts = 0
    startup_cuts: list[str] = []
    chk = None
    try:
        srv.start()
        for cycle in range(1, CYCLES + 1):
            crng = random.Random(f"{seed}-cut-{cycle}")
            delay = crng.uniform(0.0, 0.2) if crng.random() < 0.15 else crng.uniform(0.3, 2.5)
            startup = crng.uniform(0.0, 0.12) if crng.random() < 0.2 else None
            state.update(cycle=cycle, delay=delay, inflight={}, cut=None, startup=startup)
            stop, cut_started = threading.Event(), threading.Event()
            ledger.inflight = {}
            pushers = [Pusher(i, srv.url, ledger, random.Random(f"{seed}-{cycle}-{i}"), stop,
                              cut_started, f"c{cycle}") for i in range(PUSHERS)]
            for p in pushers:
                p.start()
            time.sleep(delay)  # the seeded moment of the cut
            t0 = time.monotonic()
            cut_started.set()
            with ledger.lock:
                state["inflight"] = dict(ledger.inflight)
            state["cut"] = cutfs.cut(srv.proc, KEEP, crng.randrange(1 << 32))["reverted"]
            cuts += 1
            stop.set()
            for p in pushers:
                p.join(timeout=120)
                assert not p.is_alive(), ctx(f"{p.name} still running after the cut")
            assert not ledger.errors, ctx(f"wrong answers before the cut: {ledger.errors}")

            if startup is not None:
                # Cut again while berth starts (opening/recovering the database, start-up
                # work): whatever it was doing must leave a state the next start accepts.
                old = srv.proc
                _assert_port_free(srv, ctx)
                starter = threading.Thread(target=_start_quietly, args=(srv,), daemon=True)
                starter.start()
                wait_for(lambda: srv.proc is not old or not starter.is_alive(), 30,
                         "the restarted berth process")
                time.sleep(startup)
                ready = not starter.is_alive()
                if srv.proc is not old:
                    cutfs.cut(srv.proc, KEEP, crng.randrange(1 << 32))
                    cuts += 1
                    startup_cuts.append("after ready" if ready else "while starting")
                starter.join(timeout=120)
            _assert_port_free(srv, ctx)
            try:
                srv.start()
            except AssertionError as e:
                raise AssertionError(ctx(f"berth does not start after the power cut: {e}")) from None
            t2 = time.monotonic()
            chk = Checker(srv.url, ledger, header(), violations, crng, old=0.25, root=root)
            chk.blobs()
            chk.manifests()
            sess = chk.sessions()
            t3 = time.monotonic()
            notes += chk.notes
            cycles_run = cycle
            ledger.fresh.clear()
            report.append(f"cycle {cycle}: cut at {delay:.2f}s"
                          f"{f' and {startup:.2f}s into the restart' if startup is not None else ''}"
                          f", cutfs reverted {state['cut']}, sessions {sess}, acknowledged so far "
                          f"{dict(ledger.counts)}; seconds: cut+restart {t2 - t0:.2f} "
                          f"checks {t3 - t2:.2f}")
            if len(violations) > 40:
                break  # enough to diagnose; the rest would repeat it

        # A clean restart on what is left, then everything once more, every byte.
        state.update(delay=0.0, inflight={}, cut="none: final clean restart", startup=None)
        srv.stop()
        srv.start()
        chk = Checker(srv.url, ledger, header(), violations, random.Random(0), old=1.0,
                      full=True, root=root)
        chk.blobs()
        chk.manifests()
        # Still writable.
        p = Pusher(99, srv.url, ledger, random.Random(f"{seed}-final"), threading.Event(),
                   threading.Event(), "final")
        try:
            p.mono(REPOS[0])
            p.manifest(REPOS[0])
        except _Stop:
            pass  # recorded in ledger.errors
        for e in ledger.errors:
            violations.append((header(), f"push after the last restart failed: {e}"))
    finally:
        srv.stop()
        with capsys.disabled():
            print(f"[powercut] POWERCUT_SEED={seed}: {cycles_run} cycles, {cuts} power cuts "
                  f"({len(startup_cuts)} in a restart, {startup_cuts.count('while starting')} "
                  f"before berth answered) in "
                  f"{time.monotonic() - t_start:.1f}s; acknowledged {len(ledger.blobs)} blobs, "
                  f"{len(ledger.manifests)} manifests, {len(ledger.tags)} tags; "
                  f"{len(violations)} violations", flush=True)
            if os.environ.get("POWERCUT_VERBOSE"):
                print("\n".join(report + notes), flush=True)
    if violations:
        text, last = [], None
        for cyc, what in violations:
            if cyc != last:
                text.append(cyc)
                last = cyc
            text.append(f"  - {what}")
        raise AssertionError(f"POWERCUT_SEED={seed}: {len(violations)} violations (rerun with "
                             f"POWERCUT_SEED={seed}):\n" + "\n".join(text) +
                             "\n--- cycles:\n" + "\n".join(report))


def _assert_port_free(srv: RegistryServer, ctx):
    """No berth may survive a cut: a second one would find the database in use, and the
    test would talk to the survivor."""
    try:
        socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
    except OSError:
        return
    raise AssertionError(ctx(f"something still listens on {srv.host} after the power cut"))


def _start_quietly(srv: RegistryServer):
    try:
        srv.start()
    except AssertionError:
        pass  # cut while starting: the caller starts it again
