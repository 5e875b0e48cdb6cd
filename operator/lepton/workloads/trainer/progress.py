"""Prometheus metrics and a /progress JSON document on every rank's metrics port.

The operator (or a person with port-forward) reads progress from rank 0 over HTTP: training pods
need no Kubernetes API access and no sidecar.

When the operator started the pod, its environment holds the job's progress token
(`lepton.api.tokens`): /progress then answers 401 to any request without `Authorization: Bearer
<token>`. /metrics stays readable without it: Prometheus cannot hold a per-job token, and the job's
NetworkPolicy already admits only the operator's and Prometheus's namespaces to this port. A local
run has no token and serves both openly.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from lepton.api.contract import MAX_EVALUATIONS
from lepton.api.tokens import AUTH_HEADER, PROGRESS_TOKEN_ENV, authorized

GUARDED = frozenset({"/progress"})  # paths that need the job's token when one is set


class Progress:
    def __init__(self, total_steps: int, rank: int) -> None:
        self.registry = CollectorRegistry()
        self.rank = rank
        self.state: dict[str, Any] = {"step": 0, "totalSteps": total_steps, "rank": rank}
        self._started = time.monotonic()
        self._gauges = {
            name: Gauge(f"lepton_trainer_{name}", help_, registry=self.registry)
            for name, help_ in (
                ("step", "Optimizer steps done."),
                ("total_steps", "Optimizer steps planned."),
                ("epoch", "Current fractional epoch."),
                ("loss", "Latest training loss (mean over ranks)."),
                ("samples_per_second", "Training throughput over all ranks."),
                ("eval_loss", "Latest evaluation loss."),
            )
        }
        self._gauges["total_steps"].set(total_steps)
        self._server: ThreadingHTTPServer | None = None

    def update(self, **values: float | int | str | None) -> None:
        self.state.update({k: v for k, v in values.items() if v is not None})
        for key, gauge in (("step", "step"), ("epoch", "epoch"), ("loss", "loss"),
                           ("samplesPerSecond", "samples_per_second"), ("evalLoss", "eval_loss")):  # fmt: skip
            value = values.get(key)
            if isinstance(value, int | float):
                self._gauges[gauge].set(value)
        step, total = int(self.state["step"]), int(self.state["totalSteps"])
        if step:
            elapsed = time.monotonic() - self._started
            self.state["etaSeconds"] = int(elapsed / max(step - self.state.get("startStep", 0), 1) * (total - step))

    def evaluated(self, step: int, metrics: dict[str, float | None]) -> None:
        """Record one evaluation: /progress keeps the last MAX_EVALUATIONS, so a reader polling every few
        seconds (the operator, for a TuningStudy's pruner) misses none of them."""
        kept = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        if not kept:
            return
        history = [e for e in self.state.get("evaluations", []) if e["step"] != step]
        self.state["evaluations"] = [*history, {"step": step, "metrics": kept}][-MAX_EVALUATIONS:]

    def serve(self, port: int, token: str | None = None, host: str = "0.0.0.0") -> None:
        """Serve /metrics and /progress on `port` (0: off). `token` defaults to the one the operator
        put into the environment (PROGRESS_TOKEN_ENV); None or empty: no token is asked for."""
        if port <= 0:
            return
        progress = self
        token = token or os.environ.get(PROGRESS_TOKEN_ENV) or None

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if token is not None and self.path in GUARDED and not authorized(self.headers.get(AUTH_HEADER), token):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="lepton-progress"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/metrics":
                    body, kind = generate_latest(progress.registry), CONTENT_TYPE_LATEST
                elif self.path == "/progress":
                    body, kind = json.dumps(progress.state).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # no access log on stderr
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="metrics").start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
