"""A small forward proxy on 127.0.0.1 for the tests, as squid or tinyproxy would be:
``CONNECT host:port`` tunnels (HTTPS) and absolute-URI requests (plain HTTP), each
recorded (method, target, whether an Authorization header went through it in clear).

Started on a free port, stopped (and its threads ended) by ``close()``.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import select
import socket
import threading
import urllib.parse
from typing import Iterator, List, Tuple

HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
       "trailers", "transfer-encoding", "upgrade"}


class ForwardProxy:
    def __init__(self) -> None:
        self.requests: List[Tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def targets(self, method: str) -> List[str]:
        with self.lock:
            return [t for m, t, _a in self.requests if m == method]

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _record(self, method: str) -> None:
                with proxy.lock:
                    proxy.requests.append((method, self.path, "Authorization" in self.headers))

            def do_CONNECT(self) -> None:
                self._record("CONNECT")
                host, _sep, port = self.path.rpartition(":")
                try:
                    upstream = socket.create_connection((host, int(port)), timeout=30)
                except OSError:
                    self.send_error(502)
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self._relay(self.connection, upstream)
                self.close_connection = True

            @staticmethod
            def _relay(a: socket.socket, b: socket.socket) -> None:
                try:
                    while True:
                        ready, _w, _x = select.select([a, b], [], [], 30)
                        if not ready:
                            return
                        for sock in ready:
                            data = sock.recv(65536)
                            if not data:
                                return
                            (b if sock is a else a).sendall(data)
                except OSError:
                    return
                finally:
                    b.close()

            def _forward(self) -> None:
                self._record(self.command)
                url = urllib.parse.urlsplit(self.path)
                if url.scheme != "http":
                    self.send_error(400, "absolute http:// URI expected")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
                try:
                    conn.request(self.command, url.path + ("?" + url.query if url.query else ""),
                                 body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read() if self.command != "HEAD" else b""
                    self.send_response(resp.status)
                    for key, value in resp.getheaders():
                        if key.lower() not in HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", resp.getheader("Content-Length")
                                     if self.command == "HEAD" and resp.getheader("Content-Length")
                                     else str(len(data)))
                    self.end_headers()
                    if data:
                        self.wfile.write(data)
                except OSError:
                    self.send_error(502)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def forward_proxy() -> Iterator[ForwardProxy]:
    proxy = ForwardProxy()
    try:
        yield proxy
    finally:
        proxy.close()
