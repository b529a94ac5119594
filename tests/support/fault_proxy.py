"""A fault-injecting HTTP proxy in front of a real server (the MLflow tracking server in the ledger tests).

Every request is forwarded unchanged, except the `nth` (default: first) one matching an armed `Fault` (method,
path fragment and a fragment of the query or body), which fails the way the fault says:

- `500`: answered 500 without forwarding (the server never saw it);
- `401` / `403`: answered so without forwarding (credentials refused);
- `timeout`: held unanswered for `hang` seconds (longer than the client's timeout), never forwarded;
- `drop`: FORWARDED, then the connection closed without an answer — the server did the write, the client saw an
  error (the nasty case).

A fault fires once; `fired` lists what fired. PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from support.servers import LOOPBACK

KINDS = ("500", "401", "403", "timeout", "drop")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate", "host", "content-length"}


@dataclass(frozen=True)
class Fault:
    """Fail the `nth` request with `method` whose path contains `path` and whose query or body contains `needle`."""

    method: str
    path: str
    needle: str
    kind: str
    hang: float = 6.0
    nth: int = 1

    def matches(self, method: str, target: str, body: bytes) -> bool:
        return (method == self.method and self.path in urlsplit(target).path
                and (self.needle in target or self.needle.encode() in body))


class FaultProxy:
    """`with FaultProxy(upstream) as proxy:` … `proxy.url`; `proxy.arm(fault)`; `proxy.fired`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.faults: list[Fault] = []
        self.fired: list[Fault] = []
        self._seen: dict[int, int] = {}  # matches so far, per armed fault (by id)
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def disarm(self) -> None:
        with self._lock:
            self.faults.clear()
            self._seen.clear()

    def _take(self, method: str, target: str, body: bytes) -> Fault | None:
        with self._lock:
            self.requests.append((method, target))
            for fault in self.faults:
                if fault.matches(method, target, body):
                    self._seen[id(fault)] = self._seen.get(id(fault), 0) + 1
                    if self._seen[id(fault)] < fault.nth:
                        continue
                    self.faults.remove(fault)
                    self.fired.append(fault)
                    return fault
        return None

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, target, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.command, self.path, body)
                kind = fault.kind if fault else None
                if kind in ("500", "401", "403"):
                    return self._answer(int(kind), [], f"injected {kind}".encode())
                if kind == "timeout":
                    time.sleep(fault.hang)  # type: ignore[union-attr]
                    self.close_connection = True
                    return None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                status, resp_headers, data = proxy._forward(self.command, self.path, headers, body)
                if kind == "drop":  # the upstream did it; the client never hears
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)
                    return None
                return self._answer(status, resp_headers, data)

            def _answer(self, status: int, headers: list, data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        return Handler


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as proxy:
        yield proxy
