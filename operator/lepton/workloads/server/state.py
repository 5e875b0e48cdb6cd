"""What the routes share: the configuration, the metrics, the service once the model is loaded, and the
lifecycle flags (loading → ready → draining) that the health routes report."""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from lepton.api.contract import ServerConfig

from .errors import ApiError
from .metrics import Metrics
from .service import Service

if TYPE_CHECKING:
    from .requestlog import RequestLog

try:
    VERSION = metadata.version("lepton-operator")
except metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


class State:
    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.service: Service | None = None
        self.request_log: RequestLog | None = None  # set at startup when config.request_log is given
        self.draining = False
        self.inflight = 0
        self.last_arrival = time.monotonic()
        # What the model's own metadata says it was built from; what the operator resolved wins.
        self.metadata = artifact_lineage(config.model_path) | dict(config.metadata)

    @property
    def ready(self) -> bool:
        return self.service is not None and not self.draining

    def why_not_ready(self) -> str:
        return "draining: the server is shutting down" if self.draining else "loading: the model is not loaded yet"

    def require(self) -> Service:
        """The service, or 503 while the model loads (requests during a drain are still answered)."""
        if self.service is None:
            raise ApiError(503, "the model is still loading; retry when /v2/health/ready answers 200",
                           headers={"Retry-After": "2"})  # fmt: skip
        return self.service

    def check_name(self, name: str) -> None:
        if name != self.config.name:
            raise ApiError(404, f"model {name[:128]!r} not found; this server serves {self.config.name!r}",
                           param="model")  # fmt: skip


def artifact_lineage(model_path: str) -> dict[str, str]:
    """The lineage the trainer wrote beside the model (lepton-training.json), as strings; {} for a model
    that has none (a hub id, a model trained elsewhere)."""
    try:
        meta = json.loads((Path(model_path) / "lepton-training.json").read_text())
    except (OSError, ValueError):
        return {}
    lineage = meta.get("lineage") if isinstance(meta, dict) else None
    if not isinstance(lineage, dict):
        return {}
    return {str(k): str(v) for k, v in lineage.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}


STATE = web.AppKey("state", State)


def state_of(request: web.Request) -> State:
    return request.app[STATE]


def started_of(request: web.Request) -> float:
    started = request.get("started")
    return started if isinstance(started, float) else time.monotonic()
