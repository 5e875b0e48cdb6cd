"""What earlier local runs left, read by the runs that reference them: a TrainingJob's model (the output
of its latest finished run) and a TuningStudy's status (written beside its journal when it ends). A
reference locally resolves to these, as on a cluster it resolves to the referenced object's status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lepton.api.common import ModelSource
from lepton.local.backend import LocalRunError
from lepton.status.references import Ref

METADATA = "lepton-training.json"  # written by the trainer last, beside the model
STUDY_STATUS = "status.json"  # <runs>/<study>.study/status.json: the study's status as the operator writes it


def study_dir(runs_root: Path, name: str) -> Path:
    return runs_root / f"{name}.study"


def run_outputs(runs_root: Path, kind: str, name: str) -> list[tuple[float, Path]]:
    """(when, output directory) of every local run of `kind` `name` under `runs_root`, from the manifest
    each run directory keeps (<run>/<kind>.json, its spec.output.uri)."""
    found: list[tuple[float, Path]] = []
    for manifest in runs_root.glob(f"*/{kind.lower()}.json") if runs_root.is_dir() else []:
        try:
            doc = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        uri = ((doc.get("spec") or {}).get("output") or {}).get("uri")
        if (doc.get("metadata") or {}).get("name") == name and uri:
            found.append((manifest.stat().st_mtime, Path(str(uri).removeprefix("file://"))))
    return found


def trained_model(runs_root: Path, job: str) -> Path:
    """The output of the latest local run of TrainingJob `job` that finished (its model is there)."""
    found = [(when, out) for when, out in run_outputs(runs_root, "TrainingJob", job) if (out / METADATA).is_file()]
    if not found:
        raise LocalRunError(
            f"the model comes from TrainingJob {job!r}, and no local run of it under {runs_root} has finished: "
            f"run it first (leptonctl run -f <its manifest>), or set model.uri to a model directory"
        )
    return max(found)[1]


def trained_job(runs_root: Path, job: str) -> dict[str, Any]:
    """TrainingJob `job` as its latest finished local run leaves it: Succeeded, its model, its lineage."""
    out = trained_model(runs_root, job)
    try:
        meta = json.loads((out / METADATA).read_text())
    except (OSError, ValueError):
        meta = {}
    lineage = meta.get("lineage") if isinstance(meta, dict) else None
    return {"status": {"phase": "Succeeded", "outputModel": str(out), "lineage": lineage or {}}}


def finished_study(runs_root: Path, name: str) -> dict[str, Any]:
    """TuningStudy `name` as its last local run left it (its status), once that run ended with a best model."""
    path = study_dir(runs_root, name) / STUDY_STATUS
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        status = None
    if not isinstance(status, dict) or not (status.get("bestTrial") or {}).get("model"):
        raise LocalRunError(
            f"the model comes from TuningStudy {name!r}, and no local run of it under {runs_root} has finished "
            "with a best trial: run it first (leptonctl run -f <its manifest>)"
        )
    return {"status": status}


def upstream_model(runs_root: Path, source: ModelSource) -> tuple[str | None, dict[Ref, dict[str, Any]]]:
    """(location, the referenced object as found) of a model that comes from a TrainingJob's or a
    TuningStudy's local run; (None, {}) for a model given directly."""
    if source.training_job is not None:
        job = trained_job(runs_root, source.training_job.name)
        return str(job["status"]["outputModel"]), {("TrainingJob", source.training_job.name): job}
    if source.tuning_study is not None:
        study = finished_study(runs_root, source.tuning_study.name)
        return str(study["status"]["bestTrial"]["model"]), {("TuningStudy", source.tuning_study.name): study}
    return None, {}
