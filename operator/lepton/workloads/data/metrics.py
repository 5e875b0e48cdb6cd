"""Prometheus metrics and /progress of a preparation, on its metrics port (the local backend draws its
progress line from /progress; Prometheus scrapes /metrics). The pod has no API access."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class DataMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.bytes_read = Counter("lepton_data_input_bytes", "Input bytes read.", registry=r)
        self.rows_read = Counter("lepton_data_input_rows", "Input rows read.", registry=r)
        self.step_rows = Counter("lepton_data_step_rows_out", "Rows out of each step.", ["step"], registry=r)
        self.shards = Counter("lepton_data_shards", "Input files processed, by outcome.", ["outcome"], registry=r)
        self.rows_out = Gauge("lepton_data_output_rows", "Rows of the published version, by split.", ["split"],
                              registry=r)  # fmt: skip
        self.reused = Gauge("lepton_data_version_reused", "1 when the version was already published.", registry=r)
        self.seconds = Gauge("lepton_data_preparation_seconds", "Seconds the preparation took.", registry=r)
        self.state: dict[str, Any] = {"step": 0}
        self._started = time.monotonic()
        self._server: ThreadingHTTPServer | None = None

    def progress(self, done: int, total: int | None) -> None:
        """`done` of `total` input bytes: the /progress report's step and totalSteps."""
        self.state["step"] = done
        if total:
            self.state["totalSteps"] = total
            if done:
                elapsed = time.monotonic() - self._started
                self.state["etaSeconds"] = int(elapsed / done * max(total - done, 0))

    def serve(self, port: int) -> None:
        if port <= 0:
            return
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, kind = generate_latest(metrics.registry), CONTENT_TYPE_LATEST
                elif self.path == "/progress":
                    body, kind = json.dumps(metrics.state).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="metrics").start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
