#!/usr/bin/env python3
"""Abusive clients for bench.py's "many slow transfers" step (stdlib only, asyncio, 127.0.0.1).

Run by bench.py as a child process, so that its event loop does not share a GIL with the
well-behaved client whose latency is measured:

    python3 bench/abuse.py '{"port": ..., "repo": ..., "digest": ..., "size": ..., "blob": PATH, ...}'

- `downloads` sockets send `GET /v2/REPO/blobs/DIGEST`, read the response head and the first
  body bytes (one recv), check them against the blob, then stop reading and keep the socket open.
- `uploads` connections POST an upload, then send `patches` PATCHes with `Transfer-Encoding:
  chunked` (as docker streams layers), each body in `pieces` pieces of `piece` bytes with `pause` s
  between pieces, read each 202 (Range must cover everything sent), then finish with
  `PUT ?digest=` (201 and the right Docker-Content-Digest).

Protocol on stdout: one `READY {...}` line once every download request is sent and every upload
has started (or `first_s` has passed), then one `RESULT {...}` line at the end. The stalled
sockets are released when stdin is closed (the driver is done measuring) and the uploads are
done, or at `hold_s` at the latest; everything is bounded in time and closed before exit.
"""
import asyncio
import hashlib
import json
import os
import resource
import socket
import statistics
import sys
import threading
import time

TCP_STATES = {1: "ESTABLISHED", 7: "CLOSE", 8: "CLOSE_WAIT", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 9: "LAST_ACK", 11: "CLOSING"}


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < need:
            raise SystemExit(f"abuse.py: RLIMIT_NOFILE hard limit {hard} < {need} needed")


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        if k:
            hdrs[k.strip().lower()] = v.strip()
    return status, hdrs


class Abuse:
    def __init__(self, cfg):
        self.c = cfg
        self.addr = ("127.0.0.1", cfg["port"])
        with open(cfg["blob"], "rb") as f:
            self.prefix = f.read(1 << 20)
        self.t0 = time.monotonic()
        self.first_deadline = self.t0 + cfg["first_s"]
        self.hold_deadline = self.t0 + cfg["hold_s"]
        self.wrong = []          # wrong responses (a failure of the step)
        self.conn_errors = {}    # kind -> count (refused, reset, EOF, timeout)
        self.held = []           # stalled download sockets
        self.ttfb = []           # per download that got its first bytes: s from request sent
        self.sent = 0            # download requests sent
        self.up_started = 0
        self.up_results = []     # per upload: dict
        self.stop = None

    def err(self, kind):
        self.conn_errors[kind] = self.conn_errors.get(kind, 0) + 1

    def note_wrong(self, what):
        if len(self.wrong) < 20:
            self.wrong.append(what)
        else:
            self.wrong.append("...")
            del self.wrong[20:-1]

    def check_ready(self):
        if self.sent >= self.c["downloads"] and self.up_started >= self.c["uploads"] and not self.ready.is_set():
            self.ready.set()

    # ------------------------------------------------------------ slow downloads
    async def slow_download(self, i, sem):
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        keep = False
        counted = False
        try:
            async with sem:
                await loop.sock_connect(s, self.addr)
            path = f"/v2/{self.c['repo']}/blobs/{self.c['digest']}"
            await loop.sock_sendall(s, (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.addr[1]}\r\n"
                                        "User-Agent: berth-bench-slow-reader\r\nAccept: */*\r\n\r\n").encode())
            t_sent = time.monotonic()
            self.sent += 1
            counted = True
            self.check_ready()
            buf = b""
            while True:
                d = await loop.sock_recv(s, 16384)
                if not d:
                    self.err("closed before first bytes")
                    return
                buf += d
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        self.note_wrong(f"download {i}: response head over 64 KiB")
                        return
                    continue
                body = buf[end + 4:]
                if not body:
                    continue
                status, hdrs = parse_head(buf[:end])
                if status != 200 or hdrs.get("content-length") != str(self.c["size"]):
                    shown = body[:200] if status != 200 else b"..."
                    self.note_wrong(f"GET {path} -> {status} {json.dumps(hdrs)} {shown!r}"
                                    f" (expected 200, Content-Length {self.c['size']})")
                    return
                if body != self.prefix[:len(body)]:
                    self.note_wrong(f"GET {path}: first {len(body)} body bytes differ from the blob")
                    return
                self.ttfb.append(time.monotonic() - t_sent)
                keep = True
                self.held.append(s)   # stop reading; the server's response is now stalled
                return
        except asyncio.CancelledError:
            self.err("no first bytes before the window closed")
            raise
        except OSError as e:
            self.err(type(e).__name__)
        finally:
            if not counted:
                self.sent += 1    # count it as settled so READY is not held up by a failed connect
                self.check_ready()
            if not keep:
                s.close()

    # ------------------------------------------------------------ slow uploads
    @staticmethod
    async def read_response(reader):
        head = await reader.readuntil(b"\r\n\r\n")
        status, hdrs = parse_head(head[:-4])
        body = b""
        if "content-length" in hdrs:
            body = await reader.readexactly(int(hdrs["content-length"]))
        elif "chunked" in hdrs.get("transfer-encoding", "").lower():
            while True:
                n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += await reader.readexactly(n + 2)
                if n == 0:
                    break
        return status, hdrs, body

    async def slow_upload(self, i, sem):
        c = self.c
        r = {"acked": 0, "completed": False, "ack_lat": []}
        self.up_results.append(r)
        total = c["patches"] * c["pieces"] * c["piece"]
        data = os.urandom(total)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        writer = None
        started = False
        rto = c["response_s"]
        try:
            async with sem:
                reader, writer = await asyncio.open_connection(*self.addr)
            host = f"127.0.0.1:{self.addr[1]}"
            path = f"/v2/{c['repo']}/blobs/uploads/"
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
            st, h, b = await asyncio.wait_for(self.read_response(reader), rto)
            if st != 202 or "location" not in h:
                self.note_wrong(f"POST {path} -> {st} {json.dumps(h)} {b[:200]!r}")
                return
            loc = h["location"]
            self.up_started += 1
            started = True
            self.check_ready()
            off = 0
            for _ in range(c["patches"]):
                loc = loc.split("://", 1)[1].split("/", 1)[1] if "://" in loc else loc.lstrip("/")
                writer.write(f"PATCH /{loc} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n".encode())
                for k in range(c["pieces"]):
                    piece = data[off:off + c["piece"]]
                    off += len(piece)
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                    if k + 1 < c["pieces"]:
                        await asyncio.sleep(c["pause"])
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                t_last = time.monotonic()
                st, h, b = await asyncio.wait_for(self.read_response(reader), rto)
                if st != 202 or h.get("range") != f"0-{off - 1}" or "location" not in h:
                    self.note_wrong(f"PATCH /{loc} -> {st} {json.dumps(h)} {b[:200]!r} (expected 202, Range 0-{off - 1})")
                    return
                r["acked"] += 1
                r["ack_lat"].append(time.monotonic() - t_last)
                loc = h["location"]
                await asyncio.sleep(c["pause"])
            loc = loc.split("://", 1)[1].split("/", 1)[1] if "://" in loc else loc.lstrip("/")
            put = f"/{loc}{'&' if '?' in loc else '?'}digest={digest}"
            writer.write(f"PUT {put} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
            st, h, b = await asyncio.wait_for(self.read_response(reader), rto)
            if st != 201 or h.get("docker-content-digest", digest) != digest:
                self.note_wrong(f"PUT {put} -> {st} {json.dumps(h)} {b[:200]!r}")
                return
            r["completed"] = True
        except asyncio.CancelledError:
            self.err("upload still running at hold_s")
            raise
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            self.err("upload " + type(e).__name__)
        finally:
            if not started:
                self.up_started += 1
                self.check_ready()
            if writer is not None:
                writer.close()

    # ------------------------------------------------------------ main
    async def run(self):
        loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()

        def stdin_watch():
            try:
                sys.stdin.buffer.read()
            finally:
                loop.call_soon_threadsafe(self.stop.set)
        threading.Thread(target=stdin_watch, daemon=True).start()

        sem = asyncio.Semaphore(self.c["connect_par"])
        downs = [asyncio.create_task(self.slow_download(i, sem)) for i in range(self.c["downloads"])]
        ups = [asyncio.create_task(self.slow_upload(i, sem)) for i in range(self.c["uploads"])]
        try:
            await asyncio.wait_for(self.ready.wait(), max(0.0, self.first_deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        print("READY " + json.dumps({"t": round(time.monotonic() - self.t0, 3), "sent": self.sent,
                                     "uploads_started": self.up_started}), flush=True)
        # First bytes: each download gets until first_s after the start.
        pending = ()
        if downs:
            _, pending = await asyncio.wait(downs, timeout=max(0.0, self.first_deadline - time.monotonic()))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Hold until the driver is done and the uploads have finished, hold_s at most.
        try:
            await asyncio.wait_for(self.stop.wait(), max(0.0, self.hold_deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        pending = ()
        if ups:
            _, pending = await asyncio.wait(ups, timeout=max(0.0, self.hold_deadline - time.monotonic()))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        released = time.monotonic() - self.t0
        states = {}
        for s in self.held:
            try:
                st = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            except OSError:
                st = -1
            name = TCP_STATES.get(st, str(st))
            states[name] = states.get(name, 0) + 1
            s.close()
        acked = [r for r in self.up_results if r["acked"] == self.c["patches"]]
        lat = [x for r in self.up_results for x in r["ack_lat"]]
        return {
            "downloads": self.c["downloads"], "first_bytes": len(self.ttfb),
            "ttfb_p50": statistics.median(self.ttfb) if self.ttfb else None,
            "ttfb_max": max(self.ttfb) if self.ttfb else None,
            "held_states_at_release": states, "released_at": round(released, 3),
            "uploads": self.c["uploads"], "uploads_acked": len(acked),
            "uploads_some_progress": sum(1 for r in self.up_results if r["acked"] > 0),
            "uploads_completed": sum(1 for r in self.up_results if r["completed"]),
            "patch_ack_p50": statistics.median(lat) if lat else None,
            "patch_ack_max": max(lat) if lat else None,
            "conn_errors": self.conn_errors, "wrong": self.wrong,
        }


def main():
    cfg = json.loads(sys.argv[1])
    raise_nofile(cfg["downloads"] + cfg["uploads"] + 256)
    res = asyncio.run(Abuse(cfg).run())
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
