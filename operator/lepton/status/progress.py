"""Training progress as reported by rank 0's /progress endpoint, turned into status fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lepton.api.trainingjob import Progress


def _num(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def progress_from(doc: Mapping[str, Any]) -> Progress:
    """Tolerant of missing or odd fields: a progress report never breaks a reconcile."""
    step, total = _num(doc, "step"), _num(doc, "totalSteps")
    loss, rate, eta, epoch = (
        _num(doc, "loss"),
        _num(doc, "samplesPerSecond"),
        _num(doc, "etaSeconds"),
        _num(doc, "epoch"),
    )
    return Progress(
        step=int(step) if step is not None else None,
        total_steps=int(total) if total is not None else None,
        percent=min(100, int(100 * step / total)) if step is not None and total else None,
        epoch=round(epoch, 3) if epoch is not None else None,
        loss=f"{loss:.4f}" if loss is not None else None,
        samples_per_second=f"{rate:.1f}" if rate is not None else None,
        eta_seconds=int(eta) if eta is not None else None,
    )


def checkpoint_from(doc: Mapping[str, Any]) -> str | None:
    value = doc.get("checkpoint")
    return value if isinstance(value, str) and value else None
