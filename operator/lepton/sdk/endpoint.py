"""One small HTTP endpoint for a workload's /metrics and /progress: the trainer, the data preparation
and user code (lepton.sdk) all serve through it.

Each route is a callable returning (body, content type), called per request on the endpoint's
thread. Guarded paths (default: /progress) answer 401 unless the request carries the job's progress
token (`lepton.sdk.tokens`), when one is set; /metrics stays open: Prometheus cannot hold a per-job
token, and the job's NetworkPolicy already admits only the operator's and Prometheus's namespaces.
Any other path is 404. No access log; the server runs on a daemon thread until `close()`.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable, Collection, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lepton.sdk.tokens import AUTH_HEADER, PROGRESS_TOKEN_ENV, authorized

Route = Callable[[], tuple[bytes, str]]  # GET handler: (body, content type)
GUARDED = frozenset({"/progress"})  # paths that need the job's token when one is set
REALM = 'Bearer realm="lepton-progress"'
JSON = "application/json"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def token_from_env(token: str | None = None) -> str | None:
    """`token`, else the one the operator put into the environment (PROGRESS_TOKEN_ENV); None when
    neither is set or both are empty: a local run asks for none."""
    return token or os.environ.get(PROGRESS_TOKEN_ENV) or None


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class Endpoint:
    """Serves `routes` on host:port (port 0: any free port, see `.port`) from a daemon thread."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        port: int,
        *,
        host: str = "0.0.0.0",
        token: str | None = None,
        guarded: Collection[str] = GUARDED,
    ) -> None:
        """`token` None or empty: nothing is guarded (callers usually pass `token_from_env(...)`)."""
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _handler(dict(routes), token or None, frozenset(guarded)))
        self._closed = False
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True,
                                        name=f"lepton-http-{port}")  # fmt: skip
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()


def _handler(routes: dict[str, Route], token: str | None, guarded: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if token is not None and path in guarded and not authorized(self.headers.get(AUTH_HEADER), token):
                self.send_response(401)
                self.send_header("WWW-Authenticate", REALM)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            route = routes.get(path)
            if route is None:
                self.send_error(404)
                return
            try:
                body, kind = route()
            except Exception as exc:  # a broken route answers 500; the endpoint keeps serving
                print(f"lepton: GET {path} failed: {exc!r}", file=sys.stderr, flush=True)
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # no access log on stderr
            return

    return Handler
