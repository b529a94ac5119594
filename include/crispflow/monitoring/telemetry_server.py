"""The telemetry server: Airflow's OTLP metrics in, a Prometheus scrape out, and Alertmanager's alert inbox.

    CRISPFLOW_TELEMETRY_TOKEN=<token> python -m crispflow.monitoring.telemetry_server \\
        --host 127.0.0.1 --port 9464 --inbox /path/alerts.jsonl

Endpoints (all but /health need `Authorization: Bearer <token>`, else 401 with `WWW-Authenticate: Bearer`):

- `POST /v1/metrics`: OTLP/HTTP protobuf (`application/x-protobuf`; gzip or deflate `Content-Encoding` accepted),
  at most 8 MiB on the wire and after decompression (413); 200 with an `ExportMetricsServiceResponse` (its
  `partial_success` counts the rejected points), 400 when the body does not decode, 415 for other content types;
- `GET /metrics`: the Prometheus text of the bridge (otlp_bridge.py) and of the server's own counters;
- `POST /v1/alerts`: an Alertmanager webhook payload (JSON, version "4"), recorded in the inbox (alert_inbox.py);
  400 naming the field when its shape is wrong;
- `GET /v1/alerts[?limit=N]`: the recorded notifications, oldest first, as a JSON list;
- `GET /health`: 200 `ok`, no token.

The token is never logged; the process runs with umask 077; it binds only to `--host`.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import signal
import socket
import sys
import zlib
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crispflow.errors import CrispflowError

TOKEN_ENV = "CRISPFLOW_TELEMETRY_TOKEN"
MAX_OTLP_BYTES = 8 * 1024 * 1024
MAX_ALERT_BYTES = 1024 * 1024
PROTOBUF = "application/x-protobuf"

log = logging.getLogger("crispflow.telemetry")


class TelemetryConfigError(CrispflowError):
    """The telemetry server cannot start as configured (e.g. no token)."""


class _Refused(Exception):
    """A request body the server will not read: answered `code` and the connection closed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class TelemetryState:
    """What the request handlers share: the token, the bridge, the inbox and the metrics registry."""

    def __init__(self, token: str, inbox_path: str | os.PathLike[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter

        from crispflow.monitoring.alert_inbox import AlertInbox
        from crispflow.monitoring.otlp_bridge import MetricsBridge

        if not token:
            raise TelemetryConfigError(f"{TOKEN_ENV} is empty: the telemetry server requires a bearer token")
        self._token = token.encode()
        self.bridge = MetricsBridge()
        self.inbox = AlertInbox(inbox_path)
        self.registry = CollectorRegistry()
        self.registry.register(self.bridge)
        self.requests = Counter("crispflow_telemetry_requests", "HTTP requests received, by endpoint and status",
                                ["endpoint", "code"], registry=self.registry)
        self.decode_errors = Counter("crispflow_telemetry_otlp_decode_errors",
                                     "OTLP request bodies that did not decode", registry=self.registry)
        self.rejected_points = Counter("crispflow_telemetry_otlp_rejected_points",
                                       "OTLP data points not taken, by reason", ["reason"], registry=self.registry)
        self.alerts = Counter("crispflow_telemetry_alerts_received",
                              "Alertmanager notifications recorded, by status", ["status"], registry=self.registry)

    def authorized(self, header: str | None) -> bool:
        """True if `header` is `Bearer <the token>` (constant-time comparison)."""
        scheme, _, credentials = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token)


_ROUTES = {
    ("POST", "/v1/metrics"): "otlp",
    ("GET", "/metrics"): "scrape",
    ("POST", "/v1/alerts"): "alerts_post",
    ("GET", "/v1/alerts"): "alerts_get",
    ("GET", "/health"): "health",
}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "crispflow-telemetry"
    sys_version = ""
    timeout = 60

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _route(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        endpoint = _ROUTES.get((method, url.path))
        label = endpoint or "other"
        if endpoint != "health" and not state.authorized(self.headers.get("Authorization")):
            self._discard_body()
            code = self._send(401, b"a valid bearer token is required\n", headers={"WWW-Authenticate": "Bearer"})
        elif endpoint is None:
            self._discard_body()
            known = any(path == url.path for _, path in _ROUTES)
            code = self._send(405 if known else 404, b"method not allowed\n" if known else b"not found\n")
        else:
            try:
                code = getattr(self, f"_{endpoint}")(state, url.query)
            except _Refused as exc:
                self.close_connection = True
                code = self._send(exc.code, f"{exc}\n".encode(), headers={"Connection": "close"})
            except Exception:  # an inbox that cannot be written or read, a bug: answer, log, keep serving
                log.exception("%s %s failed", method, url.path)
                self.close_connection = True
                code = self._send(500, b"internal error (see the telemetry server's log)\n",
                                  headers={"Connection": "close"})
        state.requests.labels(label, str(code)).inc()

    # --- endpoints -----------------------------------------------------------------------------------------------

    def _health(self, state: TelemetryState, query: str) -> int:
        return self._send(200, b"ok\n")

    def _scrape(self, state: TelemetryState, query: str) -> int:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return self._send(200, generate_latest(state.registry), CONTENT_TYPE_LATEST)

    def _otlp(self, state: TelemetryState, query: str) -> int:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

        from crispflow.monitoring.otlp_bridge import OtlpDecodeError

        body = self._body(MAX_OTLP_BYTES)
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != PROTOBUF:
            return self._send(415, f"only {PROTOBUF} is accepted (OTLP/HTTP protobuf)\n".encode())
        try:
            body = self._decompress(body, self.headers.get("Content-Encoding", "identity").strip().lower())
            result = state.bridge.ingest_bytes(body)
        except OtlpDecodeError:
            state.decode_errors.inc()
            return self._send(400, b"the body is not an OTLP ExportMetricsServiceRequest\n")
        response = ExportMetricsServiceResponse()
        if result.rejected_total:
            for reason, count in result.rejected.items():
                state.rejected_points.labels(reason).inc(count)
            response.partial_success.rejected_data_points = result.rejected_total
            response.partial_success.error_message = "rejected: " + ", ".join(
                f"{reason}={count}" for reason, count in sorted(result.rejected.items()))
        return self._send(200, response.SerializeToString(), PROTOBUF)

    def _alerts_post(self, state: TelemetryState, query: str) -> int:
        from crispflow.monitoring.alert_inbox import AlertPayloadError, parse_webhook

        body = self._body(MAX_ALERT_BYTES)
        try:
            entry = state.inbox.record(parse_webhook(body))
        except AlertPayloadError as exc:
            return self._send(400, f"{exc}\n".encode())
        state.alerts.labels(entry["payload"]["status"]).inc()
        return self._json(200, {"recorded": True, "received_at": entry["received_at"]})

    def _alerts_get(self, state: TelemetryState, query: str) -> int:
        values = parse_qs(query).get("limit")
        limit = None
        if values:
            if not values[-1].isdigit():
                return self._send(400, b"limit must be a non-negative integer\n")
            limit = int(values[-1])
        return self._json(200, state.inbox.read(limit))

    # --- plumbing ------------------------------------------------------------------------------------------------

    def _body(self, cap: int) -> bytes:
        if self.headers.get("Transfer-Encoding") or not self.headers.get("Content-Length", "").strip().isdigit():
            raise _Refused(411, "a Content-Length is required")
        length = int(self.headers["Content-Length"])
        if length > cap:
            raise _Refused(413, f"the request body exceeds {cap} bytes")
        return self.rfile.read(length)

    def _discard_body(self) -> None:
        length_header = self.headers.get("Content-Length", "0").strip()
        length = int(length_header) if length_header.isdigit() else -1
        if 0 <= length <= MAX_ALERT_BYTES:
            self.rfile.read(length)
        elif length != 0:
            self.close_connection = True

    @staticmethod
    def _decompress(body: bytes, encoding: str) -> bytes:
        from crispflow.monitoring.otlp_bridge import OtlpDecodeError

        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise OtlpDecodeError(f"unsupported Content-Encoding {encoding!r}")
        inflater = zlib.decompressobj(wbits=47)  # 32 + 15: a gzip or zlib header, detected
        try:
            data = inflater.decompress(body, MAX_OTLP_BYTES + 1)
        except zlib.error:
            raise OtlpDecodeError(f"the body is not valid {encoding} data") from None
        if len(data) > MAX_OTLP_BYTES or inflater.unconsumed_tail:
            raise _Refused(413, f"the decompressed body exceeds {MAX_OTLP_BYTES} bytes")
        if not inflater.eof:
            raise OtlpDecodeError(f"the {encoding} body is truncated")
        return data

    def _json(self, code: int, value: Any) -> int:
        return self._send(code, json.dumps(value).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> int:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        return code


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: TelemetryState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        super().__init__(address, _Handler)


def make_server(host: str, port: int, *, token: str, inbox: str | os.PathLike[str]) -> ThreadingHTTPServer:
    """A bound (not yet serving) telemetry server; `TelemetryConfigError` when `token` is empty."""
    return _Server((host, port), TelemetryState(token, inbox))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crispflow.monitoring.telemetry_server",
        description=f"OTLP metrics → Prometheus text, and Alertmanager's webhook inbox. The bearer token is read "
                    f"from ${TOKEN_ENV}.")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="the TCP port (0: any free port)")
    parser.add_argument("--inbox", type=Path, required=True, help="the JSONL file of received alert notifications")
    return parser


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; 2 when the configuration is refused."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.umask(0o077)
    try:
        server = make_server(args.host, args.port, token=os.environ.get(TOKEN_ENV, "").strip(), inbox=args.inbox)
    except TelemetryConfigError as exc:
        print(f"crispflow telemetry: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"crispflow telemetry: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    signal.signal(signal.SIGTERM, _stop)
    log.info("telemetry server listening on http://%s:%s (OTLP /v1/metrics, scrape /metrics, alerts /v1/alerts, "
             "inbox %s)", f"[{host}]" if ":" in str(host) else host, port, args.inbox)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        log.info("telemetry server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
