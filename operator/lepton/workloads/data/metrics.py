"""Prometheus metrics (lepton_data_*) and GET /progress of a preparation on its metrics port, served
the way the trainer serves them (`lepton.sdk.endpoint`): a daemon HTTP thread, /progress guarded by
the job's progress token when the operator set one, /metrics open. The pod has no API access; whoever
wants progress asks.

/progress is a ProgressReport: step = input bytes read, totalSteps = all input bytes (when every
size is known), etaSeconds.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from lepton.api.contract import ProgressReport
from lepton.sdk.endpoint import GUARDED, JSON, Endpoint, token_from_env

__all__ = ["GUARDED", "ByteProgress", "DataMetrics"]


class DataMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.rows_read = Counter("lepton_data_input_rows", "Input rows read.", registry=r)
        self.bytes_read = Counter("lepton_data_input_bytes", "Input bytes read (whole files).", registry=r)
        self.step_rows = Counter("lepton_data_step_rows_out", "Rows out of each step and stage.", ["step"],
                                 registry=r)  # fmt: skip
        self.shards = Counter("lepton_data_shards", "Input files: done here, or skipped as finished by an "
                              "interrupted run.", ["outcome"], registry=r)  # fmt: skip
        self.rows_out = Gauge("lepton_data_output_rows", "Rows of the version, by split.", ["split"], registry=r)
        self.seconds = Gauge("lepton_data_preparation_seconds", "Seconds the preparation took.", registry=r)
        self.reused = Gauge("lepton_data_version_reused", "1 when the version was already published.", registry=r)
        self.report = ProgressReport(step=0)
        self._lock = threading.Lock()
        self._endpoint: Endpoint | None = None
        self._scraped = threading.Event()  # set by a /metrics request once `linger` started waiting for one

    def update(self, report: ProgressReport) -> None:
        with self._lock:
            self.report = report

    def progress(self) -> dict[str, Any]:
        with self._lock:
            return self.report.to_wire()

    def serve(self, port: int, token: str | None = None, host: str = "0.0.0.0") -> None:
        """Serve /metrics and /progress on `port` (0: off); `token` defaults to PROGRESS_TOKEN_ENV's."""
        if port <= 0:
            return
        routes = {"/metrics": self._metrics_page, "/progress": lambda: (json.dumps(self.progress()).encode(), JSON)}
        self._endpoint = Endpoint(routes, port, host=host, token=token_from_env(token))

    def _metrics_page(self) -> tuple[bytes, str]:
        body = generate_latest(self.registry)
        self._scraped.set()
        return body, CONTENT_TYPE_LATEST

    def linger(self, seconds: float | None, scrapes: int = 2) -> bool:
        """After the end: keep /metrics up until `scrapes` scrapes read the final values (a rate needs
        two samples), at most `seconds`. A preparation is often over between two scrapes; without this
        its totals are never seen. True when they were read."""
        if not seconds or self._endpoint is None:
            return False
        deadline = time.monotonic() + seconds
        for _ in range(scrapes):
            self._scraped.clear()
            if not self._scraped.wait(max(deadline - time.monotonic(), 0.0)):
                return False
        return True

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()


class ByteProgress:
    """Input bytes read so far, as ProgressReports with an ETA from the rate since the start."""

    def __init__(self, total: int | None, done: int = 0) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.started = time.monotonic()

    def advance(self, to: int) -> ProgressReport:
        self.done = max(self.done, to)
        eta = None
        if self.total and self.done > self.start_done:
            rate = (self.done - self.start_done) / max(time.monotonic() - self.started, 1e-6)
            eta = int(max(self.total - self.done, 0) / rate)
        return ProgressReport(step=self.done, total_steps=self.total, start_step=self.start_done, eta_seconds=eta)
