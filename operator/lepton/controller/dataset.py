"""Dataset on the skeleton: the preparation Jobs it owns (and their pods, read for the termination
message that carries the workload's summary), the tokenizer's model it may reference, and its plan
(the pure `decide` composed with the pure `render`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lepton.api import KINDS, Dataset
from lepton.controller.reconciler import Binding, ChildKind
from lepton.render.dataset import DataSettings, output_root, render
from lepton.render.networkpolicy import NetworkSettings
from lepton.status.clock import rfc3339
from lepton.status.dataset import PreparationView, decide
from lepton.status.events import dataset_events
from lepton.status.plan import ChildKey, Observed, Plan
from lepton.status.references import Resolution

REFERENCE_LOOK_SECONDS = 5.0  # while waiting for a tokenizer from another resource: nothing wakes us


class DatasetBinding(Binding[Dataset]):
    info = KINDS["Dataset"]
    children = (
        ChildKind("batch/v1", "Job", "jobs", pruned=True),
        ChildKind("v1", "Pod", "pods", read_only=True),
    )

    def __init__(self, settings: DataSettings, network: NetworkSettings | None = None) -> None:
        self.settings, self.network = settings, network

    def plan(self, resource: Dataset, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        rendered = render(resource, self.settings, resolution.uris.get("tokenizer"), self.network)
        jobs = {j["metadata"]["name"]: j for j in observed.of("Job")}
        view = PreparationView.of(jobs.get(rendered.job), observed.of("Pod"))
        status = decide(resource, view, job=rendered.job, preparation=rendered.preparation,
                        output_root=output_root(resource), waiting=resolution.waiting, now=rfc3339(now))  # fmt: skip
        wanted = status.prepared_spec != rendered.preparation and not resolution.waiting
        # The current preparation's Job is applied while it is wanted (created, suspended or resumed);
        # once its outcome is in status it may stay until its TTL, and is never created again. Jobs of
        # earlier specs go: a running one is stopped.
        children = [c for c in rendered.children if c["kind"] != "Job" or wanted]
        keep = frozenset[ChildKey]() if wanted else frozenset({("Job", rendered.job)})
        return Plan(
            status=status,
            children=children,
            keep=keep,
            events=dataset_events(resource.status, status),
            requeue_after=REFERENCE_LOOK_SECONDS if resolution.waiting else None,
        )
