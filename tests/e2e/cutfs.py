#!/usr/bin/env python3
"""cutfs: an in-memory FUSE filesystem that can lose power (LazyFS-like, for tests).

    python3 cutfs.py MOUNTPOINT --control SOCKET [--debug]

Runs in the foreground until MOUNTPOINT is unmounted (or SIGTERM/SIGINT). Binding: fusepy
(PyPI `fusepy`, high-level libfuse 2 API, needs Debian `libfuse2`).

Model (strict POSIX, what an application may rely on and nothing more):

- Every file inode has its current data and its *durable* data. fsync/fdatasync of the
  file (FUSE `fsync`) copies current -> durable. A new file's durable data is empty.
- Every directory has its current entries and its *durable* entries. fsync of the
  directory (FUSE `fsyncdir`) copies current -> durable. A new directory's durable
  entries are empty. So create, mkdir, rename, unlink and rmdir are volatile until the
  directory they changed is fsynced; fsync of a file does not make its name durable.
- A power cut reverts every directory reachable from the root (through durable entries)
  to its durable entries and every reachable file to its durable data; everything else
  is unreachable and vanishes. Attributes other than size (mode, times) are not modelled
  as volatile. Optionally (`cut PID KEEP SEED`, KEEP > 0) each changed file / directory
  independently keeps its volatile state with probability KEEP, as if the page cache had
  happened to write it back: still a state a POSIX filesystem may leave behind.

Not modelled: torn writes inside a file, hard links, symlinks, xattrs. POSIX locks
(`fcntl`) are left to the kernel (no `lock` op is registered, so FUSE keeps them local),
which is all SQLite needs on a single host. The SQLite `-shm` file is mmap'ed
MAP_SHARED, which FUSE supports because files are not opened with direct_io.

Kernel caches are kept from hiding a cut: attr/entry/negative timeouts are 0 (every
lookup and stat comes here), and files are opened without keep_cache, so the kernel drops
a file's page cache whenever it is opened again.

Control channel: a unix stream socket, one command per connection, answered with lines:

    ping              -> "pong"
    stats             -> "ok <json>"
    cut PID [KEEP SEED] -> "killed", then "ok <json>" once PID is gone (or "error ...")

The cut is race-free; its order is:

  1. Take the global lock. Every FUSE op runs under this lock, so no op is half-applied:
     each op that started before the cut is complete, and is kept or lost according to
     the model like any other.
  2. Revert to the durable state (above), forget every open file handle, and set the
     `cut` mark. From now on every op returns EIO without changing anything (release and
     releasedir still answer 0): the dying process must not be able to write, and it
     must get *an* answer, because
  3. PID is SIGKILLed (still under the lock). A process killed while one of its FUSE
     requests is already in userspace waits, unkillable, for that reply; its exit also
     sends FLUSH (and writes back dirty mmap'ed pages) for each open file. So:
  4. Release the lock, reply "killed", and keep answering ops (with EIO) while polling
     until /proc/PID is gone. The process is a child of the test, so the test must reap
     it (waitpid) after reading "killed"; waitpid on a thread-group leader returns only
     once every thread has exited and every file is closed.
  5. Take the lock again, clear the mark, reply "ok". A RELEASE of a dead handle may
     still arrive later; it is answered 0 and changes nothing. Nothing but the killed
     process may use the mount during a cut.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import random
import signal
import socket
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError  # fusepy


def _now() -> int:
    return time.time_ns()


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "atime", "mtime", "ctime", "nlink",
                 "data", "durable", "entries", "durable_entries")

    def __init__(self, ino: int, mode: int, uid: int = 0, gid: int = 0):
        t = _now()
        self.ino = ino
        self.mode = mode
        self.uid, self.gid = uid, gid
        self.atime = self.mtime = self.ctime = t
        self.nlink = 0
        if stat.S_ISDIR(mode):
            self.data = self.durable = None
            self.entries: dict | None = {}
            self.durable_entries: dict | None = {}
        else:
            self.data = bytearray()
            self.durable = b""
            self.entries = self.durable_entries = None

    @property
    def is_dir(self) -> bool:
        return self.entries is not None


class CutFS:
    """fusepy operations object. Only the methods defined here are registered with libfuse
    (fusepy skips missing ones), so there is deliberately no `lock`."""

    use_ns = True            # times as integer nanoseconds
    flag_nullpath_ok = 1     # fh-based ops on unlinked open files get path None

    def __init__(self):
        self._lock = threading.Lock()
        self._cut = False
        self.next_ino = 1
        self.root = self._new(stat.S_IFDIR | 0o755)
        self.root.nlink = 2
        self.handles: dict[int, Inode] = {}
        self.next_fh = 1     # never reused: a dead handle never names a new file
        self.stats = {"ops": 0, "fsync": 0, "fsyncdir": 0, "eio_during_cut": 0, "cuts": 0}

    def _new(self, mode: int) -> Inode:
        ino = Inode(self.next_ino, mode)
        self.next_ino += 1
        return ino

    # ---------------------------------------------------------------- dispatch

    def __call__(self, op, *args):
        if not hasattr(self, op) or op.startswith("_"):
            raise FuseOSError(errno.ENOSYS)
        with self._lock:
            self.stats["ops"] += 1
            if self._cut:
                self.stats["eio_during_cut"] += 1
                if op in ("release", "releasedir"):
                    return 0
                raise FuseOSError(errno.EIO)
            return getattr(self, op)(*args)

    # ---------------------------------------------------------------- helpers

    def _resolve(self, path: str) -> Inode:
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            node = node.entries.get(part)
            if node is None:
                raise FuseOSError(errno.ENOENT)
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        head, name = path.rstrip("/").rsplit("/", 1)
        parent = self._resolve(head or "/")
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path, fh) -> Inode:
        if isinstance(fh, int) and fh > 0:
            node = self.handles.get(fh)
            if node is None:
                raise FuseOSError(errno.EBADF)
            return node
        if path is None:
            raise FuseOSError(errno.EBADF)
        return self._resolve(path)

    def _handle(self, node: Inode) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        return fh

    def _link(self, parent: Inode, name: str, node: Inode):
        parent.entries[name] = node
        node.nlink += 2 if node.is_dir else 1
        if node.is_dir:
            parent.nlink += 1
        parent.mtime = parent.ctime = _now()

    def _unlink_entry(self, parent: Inode, name: str):
        node = parent.entries.pop(name)
        node.nlink -= 2 if node.is_dir else 1
        if node.is_dir:
            parent.nlink -= 1
        node.ctime = parent.mtime = parent.ctime = _now()
        return node

    # ---------------------------------------------------------------- attributes

    def getattr(self, path, fh=None):
        n = self._node(path, fh)
        size = 4096 if n.is_dir else len(n.data)
        return {"st_mode": n.mode, "st_ino": n.ino, "st_nlink": max(n.nlink, 0),
                "st_uid": n.uid, "st_gid": n.gid, "st_size": size,
                "st_blocks": (size + 511) // 512, "st_blksize": 4096,
                "st_atime": n.atime, "st_mtime": n.mtime, "st_ctime": n.ctime}

    def chmod(self, path, mode):
        n = self._resolve(path)
        n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
        n.ctime = _now()

    def chown(self, path, uid, gid):
        n = self._resolve(path)
        if uid != -1:
            n.uid = uid
        if gid != -1:
            n.gid = gid
        n.ctime = _now()

    def utimens(self, path, times=None):
        n = self._resolve(path)
        if times is None:
            t = _now()
            times = (t, t)
        n.atime, n.mtime = times
        n.ctime = _now()

    def access(self, path, amode):
        self._resolve(path)

    def statfs(self, path):
        blocks = 1 << 24  # 64 GiB of 4 KiB blocks: never the limit in a test
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks,
                "f_bavail": blocks, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}

    # ---------------------------------------------------------------- directories

    def mkdir(self, path, mode):
        parent, name = self._parent(path)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        self._link(parent, name, self._new(stat.S_IFDIR | (mode & 0o7777)))

    def rmdir(self, path):
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise FuseOSError(errno.ENOENT)
        if not node.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        if node.entries:
            raise FuseOSError(errno.ENOTEMPTY)
        self._unlink_entry(parent, name)

    def opendir(self, path):
        node = self._resolve(path)
        if not node.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return self._handle(node)

    def readdir(self, path, fh):
        node = self._node(path, fh)
        return [".", ".."] + list(node.entries)

    def releasedir(self, path, fh):
        self.handles.pop(fh, None)

    def fsyncdir(self, path, datasync, fh):
        node = self._node(path, fh)
        node.durable_entries = dict(node.entries)
        self.stats["fsyncdir"] += 1

    # ---------------------------------------------------------------- names

    def create(self, path, mode, fi=None):
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            node = self._new(stat.S_IFREG | (mode & 0o7777))
            self._link(parent, name, node)
        elif node.is_dir:
            raise FuseOSError(errno.EISDIR)
        return self._handle(node)

    def unlink(self, path):
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise FuseOSError(errno.ENOENT)
        if node.is_dir:
            raise FuseOSError(errno.EISDIR)
        self._unlink_entry(parent, name)

    def rename(self, old, new):
        sp, sname = self._parent(old)
        dp, dname = self._parent(new)
        node = sp.entries.get(sname)
        if node is None:
            raise FuseOSError(errno.ENOENT)
        if new.rstrip("/").startswith(old.rstrip("/") + "/"):
            raise FuseOSError(errno.EINVAL)
        target = dp.entries.get(dname)
        if target is node:
            return
        if target is not None:
            if target.is_dir and not node.is_dir:
                raise FuseOSError(errno.EISDIR)
            if node.is_dir and not target.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if target.is_dir and target.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            self._unlink_entry(dp, dname)
        self._unlink_entry(sp, sname)
        self._link(dp, dname, node)

    # ---------------------------------------------------------------- file data

    def open(self, path, flags):
        node = self._resolve(path)
        if node.is_dir:
            raise FuseOSError(errno.EISDIR)
        return self._handle(node)

    def read(self, path, size, offset, fh):
        node = self._node(path, fh)
        node.atime = _now()
        return bytes(node.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        node = self._node(path, fh)
        buf = node.data
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data
        node.mtime = node.ctime = _now()
        return len(data)

    def truncate(self, path, length, fh=None):
        node = self._node(path, fh)
        if node.is_dir:
            raise FuseOSError(errno.EISDIR)
        buf = node.data
        if length < len(buf):
            del buf[length:]
        else:
            buf.extend(bytes(length - len(buf)))
        node.mtime = node.ctime = _now()

    def flush(self, path, fh):
        self._node(path, fh)

    def release(self, path, fh):
        self.handles.pop(fh, None)

    def fsync(self, path, datasync, fh):
        node = self._node(path, fh)
        if node.is_dir:  # not sent by Linux (directories get fsyncdir), but harmless
            node.durable_entries = dict(node.entries)
        else:
            node.durable = bytes(node.data)
        self.stats["fsync"] += 1

    # ---------------------------------------------------------------- power cut

    def _power_cut(self, keep: float, rng: random.Random) -> dict:
        """Caller holds the lock. Reverts to the durable state (each changed inode keeps its
        volatile state with probability `keep`); what survives becomes the new durable
        state, as it is now on the "disk"."""
        reverted = {"dirs": 0, "files": 0, "kept": 0}
        seen: set[int] = set()
        stack = [self.root]
        files = []
        while stack:
            d = stack.pop()
            if d.ino in seen:
                continue
            seen.add(d.ino)
            if d.entries != d.durable_entries:
                if keep > 0 and rng.random() < keep:
                    reverted["kept"] += 1
                else:
                    d.entries = dict(d.durable_entries)
                    reverted["dirs"] += 1
            d.durable_entries = dict(d.entries)
            for child in d.entries.values():
                if child.is_dir:
                    stack.append(child)
                elif child.ino not in seen:
                    seen.add(child.ino)
                    files.append(child)
        for f in files:
            if f.data != f.durable:
                if keep > 0 and rng.random() < keep:
                    reverted["kept"] += 1
                    f.durable = bytes(f.data)
                else:
                    f.data = bytearray(f.durable)
                    reverted["files"] += 1
        # Link counts of what survived: a file's names, a directory's "." + ".." of subdirs
        # + its name in the parent.
        for node in self._reachable():
            if node.is_dir:
                node.nlink = 2 + sum(1 for c in node.entries.values() if c.is_dir)
            else:
                node.nlink = 0
        for node in self._reachable():
            if node.is_dir:
                for c in node.entries.values():
                    if not c.is_dir:
                        c.nlink += 1
        self.handles.clear()
        return reverted

    def _reachable(self):
        """Every inode reachable from the root, once."""
        seen: set[int] = set()
        stack = [self.root]
        while stack:
            n = stack.pop()
            if n.ino in seen:
                continue
            seen.add(n.ino)
            yield n
            if n.is_dir:
                stack.extend(n.entries.values())

    def _summary(self) -> dict:
        return dict(self.stats)


# -------------------------------------------------------------------- control channel

def _pid_gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def _serve_control(fs: CutFS, path: str):
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        with conn:
            try:
                _handle_control(fs, conn)
            except Exception as e:  # noqa: BLE001 - report to the client, keep serving
                logging.exception("control command failed")
                try:
                    conn.sendall(f"error {e!r}\n".encode())
                except OSError:
                    pass


def _handle_control(fs: CutFS, conn: socket.socket):
    f = conn.makefile("rb")
    words = f.readline().decode().split()
    if not words:
        return
    cmd = words[0]
    if cmd == "ping":
        conn.sendall(b"pong\n")
    elif cmd == "stats":
        with fs._lock:
            conn.sendall(f"ok {json.dumps(fs._summary())}\n".encode())
    elif cmd == "cut":
        pid = int(words[1])
        keep = float(words[2]) if len(words) > 2 else 0.0
        rng = random.Random(int(words[3]) if len(words) > 3 else 0)
        # Steps 1-3 (see the module docstring): under the lock, revert, mark, kill.
        with fs._lock:
            reverted = fs._power_cut(keep, rng)
            fs._cut = True
            fs.stats["cuts"] += 1
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Step 4: ops keep being answered (EIO) by the FUSE threads while we wait.
        conn.sendall(b"killed\n")
        deadline = time.monotonic() + 120
        while not _pid_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.005)  # poll interval
        gone = _pid_gone(pid)
        # Step 5.
        with fs._lock:
            fs._cut = False
            summary = dict(fs._summary(), reverted=reverted)
        if gone:
            conn.sendall(f"ok {json.dumps(summary)}\n".encode())
        else:
            conn.sendall(f"error pid {pid} still exists after 120s (not reaped?)\n".encode())
    else:
        conn.sendall(f"error unknown command {cmd!r}\n".encode())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mountpoint")
    ap.add_argument("--control", required=True, help="unix socket path for the control channel")
    ap.add_argument("--debug", action="store_true", help="libfuse debug output")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="cutfs %(asctime)s %(levelname)s %(message)s")
    fs = CutFS()
    threading.Thread(target=_serve_control, args=(fs, args.control), daemon=True).start()
    # libfuse installs its own SIGINT/SIGTERM/SIGHUP handlers: they end the loop and unmount.
    FUSE(fs, args.mountpoint, foreground=True, nothreads=False, debug=args.debug,
         fsname="cutfs", subtype="cutfs", use_ino=True,
         attr_timeout=0, entry_timeout=0, negative_timeout=0,
         hard_remove=True, big_writes=True, max_write=131072, max_read=131072)
    return 0


if __name__ == "__main__":
    sys.exit(main())
