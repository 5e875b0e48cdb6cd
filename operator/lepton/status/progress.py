"""A workload's progress report (the typed contract model), turned into TrainingJob status fields."""

from __future__ import annotations

import json
from collections.abc import Sequence

from lepton.api.contract import ProgressReport, TrainingSummary, _finite
from lepton.api.trainingjob import Evaluation, Progress
from lepton.sdk.progress import MAX_EVALUATIONS


def progress_from(report: ProgressReport) -> Progress:
    """Pure and total: the report is already parsed, so no field can break a reconcile."""
    step, total = report.step, report.total_steps
    return Progress(
        step=step,
        total_steps=total,
        percent=min(100, int(100 * step / total)) if step is not None and total else None,
        epoch=round(report.epoch, 3) if report.epoch is not None else None,
        loss=f"{report.loss:.4f}" if report.loss is not None else None,
        samples_per_second=f"{report.samples_per_second:.1f}" if report.samples_per_second is not None else None,
        eta_seconds=report.eta_seconds,
    )


def metric_text(value: float) -> str:
    """A metric in status: 6 significant digits, as Optuna's values print."""
    return f"{value:.6g}"


def evaluations_from(previous: Sequence[Evaluation], report: ProgressReport) -> list[Evaluation]:
    """The evaluations in status merged with those of the report (a report newer than a restart may
    lack older ones): one per step, the latest MAX_EVALUATIONS, oldest first."""
    by_step = {e.step: e for e in previous}
    for step, metrics in report.evaluations:
        by_step[step] = Evaluation(step=step, metrics={k: metric_text(v) for k, v in metrics})
    return [by_step[s] for s in sorted(by_step)][-MAX_EVALUATIONS:]


def finished_progress(previous: Progress | None, message: str) -> Progress | None:
    """Progress once rank 0 succeeded: the step of its summary, 100%, nothing left (the last report read
    is usually from before the end: the endpoint closes with the program). None when no summary says."""
    try:
        doc = json.loads(message)
    except ValueError:
        return previous
    step = _finite(doc.get("step")) if isinstance(doc, dict) else None
    if step is None or step < 0:
        return previous
    base = previous or Progress()
    return base.model_copy(update={"step": int(step), "percent": 100, "eta_seconds": 0,
                                   "total_steps": base.total_steps or int(step)})  # fmt: skip


def summary_metrics(message: str) -> dict[str, str]:
    """The final metrics in rank 0's termination message (a TrainingSummary); {} for anything else."""
    try:
        doc = json.loads(message)
    except ValueError:
        return {}
    metrics = doc.get("metrics") if isinstance(doc, dict) else None
    if not isinstance(metrics, dict):
        return {}
    return {str(k): metric_text(v) for k, raw in metrics.items() if (v := _finite(raw)) is not None}


__all__ = [
    "TrainingSummary",
    "evaluations_from",
    "finished_progress",
    "metric_text",
    "progress_from",
    "summary_metrics",
]
