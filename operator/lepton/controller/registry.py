"""All of the operator's handlers, registered in a registry of their own (no module-level globals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from lepton.api import GROUP, KINDS, VERSION
from lepton.controller import trainingjob
from lepton.controller.handlers import make_forgetter, make_reconciler
from lepton.controller.kube import KubeClient
from lepton.controller.metrics import OperatorMetrics
from lepton.controller.settings import Settings
from lepton.render.trainingjob import RenderSettings


def make_login(client: KubeClient) -> Callable[..., kopf.ConnectionInfo | None]:
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod: its ServiceAccount; elsewhere: KUBECONFIG. No client library needed."""
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None:
            client.login(info)  # the children's client authenticates the same way
        return info

    return login


def build_registry(metrics: OperatorMetrics, client: KubeClient, settings: Settings) -> kopf.OperatorRegistry:
    """Register the handlers of every kind in a registry of their own."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(make_login(client))
    trainingjob.register(
        registry,
        trainingjob.TrainingJobController(
            client,
            metrics,
            RenderSettings(trainer_image=settings.images.get("trainer", RenderSettings.trainer_image)),
            backoff_base=settings.restart_backoff_seconds,
        ),
    )
    for info in KINDS.values():
        if info.kind == "TrainingJob":
            continue  # its own controller, above
        reconcile = make_reconciler(info, metrics)
        for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
            on(GROUP, VERSION, info.plural, registry=registry, id="reconcile")(reconcile)
        # optional: no finalizer, so deleting never waits on a running operator.
        kopf.on.delete(GROUP, VERSION, info.plural, registry=registry, optional=True, id="forget")(
            make_forgetter(info, metrics)
        )
    return registry
