"""Prometheus metrics (lepton_trainer_*) and a /progress JSON document on every rank's metrics port.

The operator (or a person with port-forward) reads progress from rank 0 over HTTP: training pods
need no Kubernetes API access and no sidecar. The state and both formats are `lepton.sdk.progress`'s,
served through `lepton.sdk.endpoint`: a custom program that reports through lepton.sdk reads the same.

When the operator started the pod, its environment holds the job's progress token
(`lepton.api.tokens`): /progress then answers 401 to any request without `Authorization: Bearer
<token>`. /metrics stays readable without it: Prometheus cannot hold a per-job token, and the job's
NetworkPolicy already admits only the operator's and Prometheus's namespaces to this port. A local
run has no token and serves both openly.
"""

from __future__ import annotations

from lepton.sdk.endpoint import GUARDED, Endpoint, token_from_env
from lepton.sdk.progress import ProgressState

__all__ = ["GUARDED", "Progress"]


class Progress(ProgressState):
    """`update(**wire_fields)`, `evaluated(step, metrics)` (see ProgressState), served by `serve`."""

    def __init__(self, total_steps: int, rank: int) -> None:
        super().__init__(total_steps=total_steps, rank=rank)
        self._endpoint: Endpoint | None = None

    def serve(self, port: int, token: str | None = None, host: str = "0.0.0.0") -> None:
        """Serve /metrics and /progress on `port` (0: off). `token` defaults to the one the operator
        put into the environment (PROGRESS_TOKEN_ENV); None or empty: no token is asked for."""
        if port <= 0:
            return
        self._endpoint = Endpoint(self.routes(), port, host=host, token=token_from_env(token))

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
