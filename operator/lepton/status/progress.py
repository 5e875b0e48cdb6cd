"""A workload's progress report (the typed contract model), turned into TrainingJob status fields."""

from __future__ import annotations

from lepton.api.contract import ProgressReport
from lepton.api.trainingjob import Progress


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
