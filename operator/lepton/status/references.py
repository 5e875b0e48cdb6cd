"""References between resources (datasetRef, modelFrom a TrainingJob or a TuningStudy), resolved purely
from the referenced objects as fetched. A reference to something not ready yet is a reason to wait,
never an error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lepton.api.common import CommonStatus, DatasetRef, Lineage, ModelSource
from lepton.api.conditions import ConditionType
from lepton.api.constants import Phase
from lepton.api.kinds import Dataset, InferenceService, Resource, TrainingJob, TuningStudy
from lepton.api.tuner import WarmTrial

Ref = tuple[str, str]  # (kind, name) in the job's namespace


@dataclass(frozen=True)
class Resolution:
    uris: dict[str, str] = field(default_factory=dict)  # "model" | "data" | "teacher" -> location
    waiting: list[str] = field(default_factory=list)  # why not yet, one line per reference
    dataset_version: str | None = None  # the version of the referenced Dataset that "data" points at
    warm_start: list[WarmTrial] = field(default_factory=list)  # a TuningStudy's fromStudy: its top trials
    lineage: Lineage | None = None  # what the resource builds on (or serves), once every reference resolved

    @property
    def ready(self) -> bool:
        return not self.waiting


def source_location(source: ModelSource) -> str:
    """How status names a model given directly (one from another resource shows its resolved location)."""
    if source.pvc is not None:
        return source.pvc.location()
    if source.hub is not None:
        return f"hub://{source.hub.id}"
    return source.uri or ""


def _model_refs(source: ModelSource | None) -> list[Ref]:
    if source is None:
        return []
    if source.training_job is not None:
        return [("TrainingJob", source.training_job.name)]
    if source.tuning_study is not None:
        return [("TuningStudy", source.tuning_study.name)]
    return []


def model_sources(resource: Resource) -> list[tuple[str, ModelSource | None]]:
    """Every model a resource reads, keyed by its role: "model", "teacher", "canary", "tokenizer"."""
    match resource:
        case TrainingJob(spec=spec):
            return [("model", spec.model), ("teacher", spec.distillation.teacher if spec.distillation else None)]
        case InferenceService(spec=spec):
            return [("model", spec.model), ("canary", spec.canary.model if spec.canary else None)]
        case Dataset(spec=spec):
            return [("tokenizer", spec.tokenize.tokenizer if spec.tokenize else None)]
        case TuningStudy(spec=spec):
            return [("model", spec.trial_template.training_job.model)]
    return []


def dataset_ref(resource: Resource) -> DatasetRef | None:
    match resource:
        case TrainingJob(spec=spec):
            return spec.data.dataset_ref if spec.data else None
        case TuningStudy(spec=spec):
            data = spec.trial_template.training_job.data
            return data.dataset_ref if data else None
    return None


def references(resource: Resource) -> list[Ref]:
    """The (kind, name) of every resource this one waits for, in a stable order."""
    sources = model_sources(resource)
    refs = _model_refs(sources[0][1]) if sources else []
    ref = dataset_ref(resource)
    if ref is not None:
        refs.append(("Dataset", ref.name))
    for _, source in sources[1:]:
        refs += _model_refs(source)
    if isinstance(resource, TuningStudy) and resource.spec.from_study is not None:
        refs.append(("TuningStudy", resource.spec.from_study.name))
    return refs


def _is_ready(obj: Mapping[str, Any]) -> bool:
    conds = obj.get("status", {}).get("conditions", [])
    return any(c.get("type") == ConditionType.READY and c.get("status") == "True" for c in conds)


def _model_uri(source: ModelSource | None, found: Mapping[Ref, Mapping[str, Any] | None]) -> tuple[str | None, str]:
    """(location, why not) of a model that comes from another resource."""
    for ref in _model_refs(source):
        obj = found.get(ref)
        if obj is None:
            return None, f"{ref[0]} {ref[1]!r} not found"
        status = obj.get("status", {})
        if ref[0] == "TrainingJob":
            if status.get("phase") != Phase.SUCCEEDED or not status.get("outputModel"):
                return None, f"TrainingJob {ref[1]!r} has not produced its model yet (phase {status.get('phase')})"
            return str(status["outputModel"]), ""
        best = status.get("bestTrial") or {}
        if status.get("phase") != Phase.SUCCEEDED:  # the best so far may still change
            return None, f"TuningStudy {ref[1]!r} has not finished yet (phase {status.get('phase')})"
        if not best.get("model"):
            return None, f"TuningStudy {ref[1]!r} has no best trial with a model"
        return str(best["model"]), ""
    return None, ""


def resolve(resource: Resource, found: Mapping[Ref, Mapping[str, Any] | None]) -> Resolution:
    uris: dict[str, str] = {}
    waiting: list[str] = []
    for key, source in model_sources(resource):
        uri, why = _model_uri(source, found)
        if uri:
            uris[key] = uri
        elif why:
            waiting.append(why)
    ref = dataset_ref(resource)
    version: str | None = None
    if ref is not None:
        obj = found.get(("Dataset", ref.name))
        status = (obj or {}).get("status", {})
        # A job keeps the version it started with: after a gang restart it reads the same data.
        pinned = ref.version or (resource.status.dataset_version if isinstance(resource, TrainingJob) else None)
        if obj is None:
            waiting.append(f"Dataset {ref.name!r} not found")
        elif not _is_ready(obj) or not status.get("location"):
            waiting.append(f"Dataset {ref.name!r} has no published version yet")
        elif pinned and pinned != status.get("version") and pinned not in status.get("versions", []):
            waiting.append(f"Dataset {ref.name!r} has no version {pinned!r}")
        else:
            location = str(status["location"]).rstrip("/")
            version = pinned or status.get("version")
            if version and version != status.get("version"):  # an older version beside the current one
                location = f"{location.rsplit('/', 1)[0]}/{version}"
            uris["data"] = f"{location}/{ref.split}"
    warm: list[WarmTrial] = []
    if isinstance(resource, TuningStudy) and resource.spec.from_study is not None:
        other = resource.spec.from_study.name
        warm, why = _warm_start(other, found.get(("TuningStudy", other)))
        if why:
            waiting.append(why)
    lineage = None if waiting else lineage_of(resource, found, uris.get("model"), version)
    return Resolution(uris, waiting, version, warm, lineage)


def _lineage_in(obj: Mapping[str, Any] | None) -> Lineage:
    try:
        return Lineage.model_validate(((obj or {}).get("status") or {}).get("lineage") or {})
    except ValueError:  # written by another version of the operator: start the chain here
        return Lineage()


def lineage_of(resource: Resource, found: Mapping[Ref, Mapping[str, Any] | None], model: str | None,
               dataset_version: str | None) -> Lineage | None:  # fmt: skip
    """The lineage of what `resource` trains (TrainingJob, TuningStudy's trials) or serves (its primary
    model), from its own spec and the lineage its references recorded. None for other kinds."""
    sources = model_sources(resource)
    if not sources or isinstance(resource, Dataset):
        return None
    source = sources[0][1]
    refs = _model_refs(source)
    upstream = found.get(refs[0]) if refs else None
    trial = ((upstream or {}).get("status") or {}).get("bestTrial") or {}
    if isinstance(resource, InferenceService):  # what it serves: the chain its model's producer recorded
        if refs and refs[0][0] == "TrainingJob":
            return _lineage_in(upstream).model_copy(update={"training_job": refs[0][1]})
        if refs:  # a study's best trial: the study's data, the trial's TrainingJob
            update = {
                "tuning_study": refs[0][1],
                "trial": trial.get("number"),
                "training_job": trial.get("trainingJob"),
            }
            return _lineage_in(upstream).model_copy(update=update)
        return Lineage(base_model=source_location(source) if source else None)
    ref = dataset_ref(resource)
    pinned = resource.status.dataset_version if isinstance(resource, TrainingJob | TuningStudy) else None
    lineage = Lineage(
        dataset=ref.name if ref else None,
        dataset_version=(pinned or dataset_version) if ref else None,
        base_model=model or (source_location(source) if source else None),
    )
    if isinstance(resource, TrainingJob):
        lineage = lineage.model_copy(update={"training_job": resource.metadata.name})
    if refs and refs[0][0] == "TuningStudy":
        lineage = lineage.model_copy(update={"tuning_study": refs[0][1], "trial": trial.get("number")})
    return lineage


def _warm_start(name: str, obj: Mapping[str, Any] | None) -> tuple[list[WarmTrial], str]:
    """The finished top trials of another study (its status), or why not yet."""
    if obj is None:
        return [], f"TuningStudy {name!r} (fromStudy) not found"
    status = obj.get("status") or {}
    if status.get("phase") not in (Phase.SUCCEEDED, Phase.FAILED):
        return [], f"TuningStudy {name!r} (fromStudy) has not finished yet (phase {status.get('phase')})"
    warm: list[WarmTrial] = []
    for trial in [*(status.get("topTrials") or []), *(status.get("paretoFront") or [])]:
        raw = trial.get("values") or ([trial["value"]] if trial.get("value") is not None else [])
        try:
            values = [float(v) for v in raw]
        except (TypeError, ValueError):
            continue
        params = trial.get("parameters")
        if values and isinstance(params, dict):
            warm.append(WarmTrial(parameters={str(k): str(v) for k, v in params.items()}, values=values))
    return warm, ""


S = TypeVar("S", bound=CommonStatus)


def with_lineage(status: S, resolution: Resolution) -> S:
    """`status` with the lineage its references resolved to; a status whose kind records none, or a
    resolution still waiting, leaves it as it is (what it built on so far stays shown)."""
    if resolution.lineage is None or "lineage" not in type(status).model_fields:
        return status
    if getattr(status, "lineage", None) == resolution.lineage:
        return status
    return status.model_copy(update={"lineage": resolution.lineage})
