"""HTTP for the tuner: POST /v1/sync (the study's token when one is set), GET /healthz and /metrics
(open). Every domain error becomes its status code here, and only here."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from lepton.api.tokens import AUTH_HEADER, authorized
from lepton.api.tuner import SyncRequest
from lepton.workloads.tuner.metrics import TunerMetrics
from lepton.workloads.tuner.service import StudyService, SyncRequestError

MAX_BODY = 1024 * 1024  # a sync names at most a few hundred trials and their evaluations
READ_TIMEOUT = 30.0  # seconds a client may take to send its request
SYNC_PATH = "/v1/sync"
log = logging.getLogger("lepton.tuner")


def problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())


class TunerServer:
    def __init__(self, service: StudyService, metrics: TunerMetrics, *, host: str, port: int, token: str | None,
                 redact: Callable[[str], str] = str) -> None:  # fmt: skip
        self.service, self.metrics, self.token, self.redact = service, metrics, token, redact
        tuner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT
            server_version = "lepton-tuner"

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif self.path == "/metrics":
                    self._send(200, generate_latest(tuner.metrics.registry), CONTENT_TYPE_LATEST)
                else:
                    self._error(404, f"no such path {self.path}: GET /healthz, /metrics; POST {SYNC_PATH}")

            def do_POST(self) -> None:
                if self.path != SYNC_PATH:
                    self._error(404, f"no such path {self.path}: POST {SYNC_PATH}")
                    return
                status, body = tuner.handle_sync(self)
                if status == 401:
                    self.close_connection = True
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="lepton-tuner"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._send(status, body, "application/json")

            def _error(self, status: int, message: str) -> None:
                self._send(status, json.dumps({"error": message}).encode(), "application/json")

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # no access log: one line per sync decision instead
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def handle_sync(self, request: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        """(status, JSON body) of one POST /v1/sync."""
        status, body = self._sync(request)
        outcome = {200: "ok", 400: "bad_request", 401: "unauthorized", 409: "conflict", 411: "bad_request",
                   413: "too_large"}.get(status, "error")  # fmt: skip
        self.metrics.syncs.labels(outcome=outcome).inc()
        return status, body

    def _sync(self, request: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        def error(status: int, message: str) -> tuple[int, bytes]:
            if status != 401:
                log.warning("sync refused (%d): %s", status, message)
            return status, json.dumps({"error": message}).encode()

        if self.token is not None and not authorized(request.headers.get(AUTH_HEADER), self.token):
            return error(401, "")
        length_text = request.headers.get("Content-Length")
        if length_text is None:
            request.close_connection = True
            return error(411, "a sync needs a Content-Length")
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            request.close_connection = True
            return error(400, f"bad Content-Length {length_text!r}")
        if length > MAX_BODY:
            request.close_connection = True  # the body is never read
            return error(413, f"a sync may be at most {MAX_BODY} bytes; this one is {length}")
        try:
            sync = SyncRequest.model_validate_json(request.rfile.read(length))
        except ValidationError as exc:
            return error(400, f"not a SyncRequest: {problems(exc)}"[:2000])
        conflict = self.service.conflict(sync)
        if conflict is not None:
            return error(409, conflict)
        try:
            reply, line = self.service.sync(sync)
        except SyncRequestError as exc:
            return error(400, str(exc))
        except Exception as exc:  # storage down, an Optuna error: the caller retries the same sync
            log.error("sync failed: %s", self.redact("".join(traceback.format_exception(exc)).rstrip()))
            return 500, json.dumps({"error": self.redact(f"sync failed: {type(exc).__name__}: {exc}")[:2000]}).encode()
        if line:
            log.info("%s", line)
        return 200, json.dumps(reply.to_wire(), separators=(",", ":")).encode()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="tuner-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; a sync in flight finishes (its lock is released) before this returns."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.service.lock.acquire(timeout=READ_TIMEOUT):
            self.service.lock.release()
