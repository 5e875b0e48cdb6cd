"""A TuningStudy's trials as TrainingJobs (pure): the template with the trial's parameters set, the
study's Dataset version pinned, its own output directory, and the labels and annotation that say
which study and trial it is. Used by the operator and by the local backend alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lepton.api.common import StorageLocation
from lepton.api.constants import Label
from lepton.api.kinds import API_VERSION, ObjectMeta, TrainingJob, TuningStudy
from lepton.api.trials import ParamValue, TrialSpecError, parameter_text, trial_spec
from lepton.api.tuningstudy import Parameter, trial_name
from lepton.render.common import child_labels, owner_reference

COMPONENT = "trial"


def trial_job(study: TuningStudy, number: int, parameters: Mapping[str, ParamValue], *, retry: int = 0,
              dataset_version: str | None = None) -> TrainingJob:  # fmt: skip
    """Trial `number`'s TrainingJob (its `retry`-th run after infrastructure failures)."""
    name = trial_name(study.metadata.name, number, retry)
    spec = trial_spec(study.spec.trial_template.training_job, parameters,
                      trial_name(study.metadata.name, number), dataset_version)  # fmt: skip
    shown = {k: parameter_text(v) for k, v in sorted(parameters.items())}
    metadata = ObjectMeta(
        name=name,
        namespace=study.metadata.namespace,
        labels={**child_labels(study, COMPONENT), Label.TRIAL: str(number)},
        annotations={
            Label.PARAMETERS: json.dumps(shown, sort_keys=True, separators=(",", ":")),
            Label.RETRY: str(retry),
            **({Label.DATASET_VERSION: dataset_version} if dataset_version else {}),
        },
    )
    return TrainingJob(api_version=API_VERSION, kind="TrainingJob", metadata=metadata, spec=spec)


def trial_manifest(study: TuningStudy, job: TrainingJob) -> dict[str, Any]:
    """The trial as the object the operator applies: owned (controller) by the study."""
    meta: dict[str, Any] = {**job.metadata.model_dump(exclude_none=True), "ownerReferences": [owner_reference(study)]}
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": meta, "spec": job.spec.to_wire()}


def suspended(run: Mapping[str, Any], suspend: bool) -> dict[str, Any]:
    """A trial run as it is, with spec.suspend set: stopping (or resuming) changes nothing else."""
    meta = run.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "ownerReferences") if k in meta}
    return {"apiVersion": run.get("apiVersion"), "kind": "TrainingJob", "metadata": kept,
            "spec": {**(run.get("spec") or {}), "suspend": suspend}}  # fmt: skip


def output_location(location: StorageLocation) -> str:
    """How status names a trial's output (the TrainingJob's status.outputModel once it succeeded)."""
    return location.pvc.location() if location.pvc is not None else str(location.uri)


def parameter_by_name(space: list[Parameter]) -> dict[str, Parameter]:
    return {p.name: p for p in space}


__all__ = ["COMPONENT", "ParamValue", "TrialSpecError", "parameter_text", "suspended", "trial_job", "trial_manifest"]
