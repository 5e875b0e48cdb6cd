"""All of the operator's handlers, registered in a registry of their own (no module-level globals).

Every kind runs on the same event-driven skeleton (controller/reconciler.py): one `on.event` handler
per kind feeds the per-object loops, and one index per watched child kind wakes the owner's loop.
No on.create/on.update handlers, so kopf writes no diff-base annotation and adds no finalizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf

from lepton.api import GROUP, KINDS, VERSION
from lepton.api.constants import Label
from lepton.controller.children import trimmed
from lepton.controller.dataset import DatasetBinding
from lepton.controller.events import EventRecorder
from lepton.controller.inferenceservice import InferenceServiceBinding
from lepton.controller.kube import KubeClient
from lepton.controller.metrics import OperatorMetrics
from lepton.controller.reconciler import Binding, Reconciler
from lepton.controller.settings import Settings
from lepton.controller.trainingjob import TrainingJobBinding
from lepton.controller.tuningstudy import TuningStudyBinding
from lepton.render.dataset import DataSettings
from lepton.render.trainingjob import RenderSettings
from lepton.render.tuningstudy import TunerSettings


def make_login(client: KubeClient) -> Callable[..., kopf.ConnectionInfo | None]:
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod: its ServiceAccount; elsewhere: KUBECONFIG. No client library needed."""
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None:
            client.login(info)  # the children's client authenticates the same way
        return info

    return login


def bindings(settings: Settings) -> list[Binding[Any]]:
    render = RenderSettings(
        trainer_image=settings.images.get("trainer", RenderSettings.trainer_image),
        termination_grace_seconds=settings.termination_grace_seconds,
    )
    built: list[Binding[Any]] = [
        TrainingJobBinding(
            render,
            backoff_base=settings.restart_backoff_seconds,
            progress_key=settings.progress_key,
            network=settings.network(),
        ),
        InferenceServiceBinding(
            settings.images.get("server", "lepton/server:0.1.0"),
            network=settings.network(),
            discovery_seconds=settings.discovery_seconds,
            activator=settings.activator,
        ),
        DatasetBinding(
            DataSettings(settings.images.get("data", DataSettings.data_image), settings.data_metrics_linger_seconds),
            network=settings.network(),
        ),
        TuningStudyBinding(
            TunerSettings(settings.images.get("tuner", TunerSettings.tuner_image)),
            progress_key=settings.progress_key,
            network=settings.network(),
        ),
    ]
    missing = set(KINDS) - {b.info.kind for b in built}
    if missing:  # every kind the CRDs serve has a binding: a kind without one would never get a status
        raise RuntimeError(f"no binding for {sorted(missing)}")
    return built


def _index_id(kind: str, plural: str) -> str:
    return f"{kind.lower()}_{plural}"


def _indexer(reconciler: Reconciler[Any], kind: str) -> Callable[..., Any]:
    """The index function of one child kind: files the child under its owner's key (trimmed to what the
    kernel reads) and wakes the owner's loop."""

    async def child_index(body: kopf.Body, labels: Mapping[str, str], **_: Any) -> dict[tuple[str, str], Any]:
        key = (str(body.metadata.namespace), labels.get(Label.NAME, ""))
        reconciler.poke(key)
        return {key: trimmed(body, kind)}

    return child_index


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler[Any]) -> None:
    info = reconciler.binding.info
    ids = {child.plural: _index_id(info.kind, child.plural) for child in reconciler.binding.children}

    for child in reconciler.binding.children:
        kopf.index(child.plural, labels={Label.KIND: info.kind}, registry=registry,
                   id=ids[child.plural])(_indexer(reconciler, child.kind))  # fmt: skip

    async def resource_event(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
        for plural, index_id in ids.items():
            reconciler.indexes[plural] = kwargs[index_id]
        key = (str(body.metadata.namespace), str(body.metadata.name))
        if event.get("type") == "DELETED":
            await reconciler.forget(key)
        else:
            reconciler.track(key, trimmed(body, info.kind))

    kopf.on.event(GROUP, VERSION, info.plural, registry=registry, id=f"reconcile_{info.plural}")(resource_event)


def build_registry(metrics: OperatorMetrics, client: KubeClient, settings: Settings) -> kopf.OperatorRegistry:
    """Register every kind's binding on the skeleton, in a registry of their own."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(make_login(client))
    recorder = EventRecorder(client)
    reconcilers = [Reconciler(b, client, metrics, recorder) for b in bindings(settings)]
    for reconciler in reconcilers:
        register(registry, reconciler)

    @kopf.on.cleanup(registry=registry)
    async def stop_loops(**_: Any) -> None:
        for reconciler in reconcilers:
            await reconciler.stop_all()

    del stop_loops  # registered; nothing else refers to it
    return registry
