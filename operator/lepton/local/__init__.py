"""The local backend: runs rendered workloads as processes on this machine.

`BACKENDS` maps a kind to its `LocalBackend` (local/<kind>.py); `leptonctl run` dispatches on it and
the generic runner (`local/backend.py`) spawns, polls, draws progress and handles Ctrl-C for all.
"""

from __future__ import annotations

from typing import Any

from lepton.local.backend import LocalBackend, LocalRunError, RunOptions, run
from lepton.local.dataset import DatasetBackend
from lepton.local.inferenceservice import InferenceServiceBackend
from lepton.local.trainingjob import TrainingJobBackend
from lepton.local.tuningstudy import TuningStudyBackend

BACKENDS: dict[str, type[LocalBackend[Any]]] = {
    b.kind: b for b in (DatasetBackend, TrainingJobBackend, TuningStudyBackend, InferenceServiceBackend)
}

__all__ = ["BACKENDS", "LocalBackend", "LocalRunError", "RunOptions", "run"]
