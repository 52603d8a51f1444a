"""A fault-injecting HTTP proxy between Berth and its object store: each request it forwards
may first wait (latency), be refused with a 503 `SlowDown` before it reaches the store (the
store never saw it), or reach the store and have its answer replaced by a 500 `InternalError`
(the store did the work, Berth is told it failed). The odds change while it runs, so a test
can have storms and calm. Bodies are small in these tests and are held whole."""
from __future__ import annotations

import http.client
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te",
              "trailer", "upgrade"}


def s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f'<Message>{message}</Message></Error>').encode()


class Faults:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.refuse = 0.0       # odds of a 503 before the store sees the request
        self.lose_answer = 0.0  # odds of a 500 after the store did it
        self.max_delay = 0.0    # seconds of latency, at most, before forwarding
        self.counts = {"forwarded": 0, "refused": 0, "answer_lost": 0}

    def set(self, refuse: float = 0.0, lose_answer: float = 0.0, max_delay: float = 0.0) -> None:
        with self.lock:
            self.refuse, self.lose_answer, self.max_delay = refuse, lose_answer, max_delay

    def draw(self) -> tuple[float, str]:
        """The delay and the fate of one request: forward, refuse, or lose its answer."""
        with self.lock:
            delay = self.rng.uniform(0, self.max_delay)
            x = self.rng.random()
            fate = "refused" if x < self.refuse else "answer_lost" if x < self.refuse + self.lose_answer else "forwarded"
            self.counts[fate] += 1
            return delay, fate


class FaultProxy:
    """Listens on 127.0.0.1 (an ephemeral port) and forwards to `upstream` (http://host:port)."""

    def __init__(self, upstream: str, seed: int):
        self.faults = Faults(seed)
        target = urlsplit(upstream)
        faults = self.faults

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: the counts tell what happened
                pass

            def body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                if self.command == "HEAD":
                    length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                    self.send_header("Content-Length", length)
                    self.end_headers()
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def forward(self):
                body = self.body()
                delay, fate = faults.draw()
                time.sleep(delay)  # injected latency, not synchronisation
                xml = [("Content-Type", "application/xml")]
                if fate == "refused":
                    return self.reply(503, xml, s3_error("SlowDown", "Please reduce your request rate."))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    answer = resp.read()
                finally:
                    conn.close()
                if fate == "answer_lost":
                    return self.reply(500, xml, s3_error("InternalError", "We encountered an internal error."))
                self.reply(resp.status, resp.getheaders(), answer)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
