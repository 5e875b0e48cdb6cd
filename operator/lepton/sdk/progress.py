"""A training process's progress: the /progress document (the `ProgressReport` wire format of
lepton.api.contract, camelCase) and the lepton_trainer_* Prometheus gauges, kept together and
thread-safe. The built-in trainer and user code (lepton.sdk) report through the same class, so the
operator, the dashboards and a TuningStudy's pruner read both alike.

Standard library only: the Prometheus text format is written here by hand.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from lepton.sdk.endpoint import JSON, PROMETHEUS_TEXT, Route

MAX_EVALUATIONS = 20  # evaluations /progress keeps, newest last (lepton.api.contract.MAX_EVALUATIONS)

# (/progress key, gauge lepton_trainer_<name>, help): every one is exported, 0 until it is known.
GAUGES = (
    ("step", "step", "Optimizer steps done."),
    ("totalSteps", "total_steps", "Optimizer steps planned."),
    ("epoch", "epoch", "Current fractional epoch."),
    ("loss", "loss", "Latest training loss (mean over ranks)."),
    ("samplesPerSecond", "samples_per_second", "Training throughput over all ranks."),
    ("evalLoss", "eval_loss", "Latest evaluation loss."),
)
METRIC = "lepton_trainer_metric"  # {name="..."}: the latest value of each evaluated metric


def finite(value: Any) -> float | None:
    """`value` as a finite float; None for None, bools, NaN, infinities and what is not a number."""
    if value is None or isinstance(value, bool | str | bytes):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


class ProgressState:
    """What /progress and /metrics of one process say. `state` is the /progress document."""

    def __init__(self, total_steps: int | None = None, rank: int | None = None) -> None:
        self._lock = threading.RLock()
        self.state: dict[str, Any] = {"step": 0}
        if total_steps is not None:
            self.state["totalSteps"] = total_steps
        if rank is not None:
            self.state["rank"] = rank
        self._started = time.monotonic()
        self._metrics: dict[str, float] = {}

    def start(self, step: int) -> None:
        """This process begins (or resumes) at `step`: the rate, and so the ETA, count from here."""
        with self._lock:
            self.state["startStep"] = step
            self._started = time.monotonic()
            self._eta()

    def update(self, **values: Any) -> None:
        """Set /progress fields by their wire names (step, totalSteps, epoch, loss, evalLoss,
        samplesPerSecond, checkpoint, ...). None and non-finite numbers are ignored."""
        with self._lock:
            for key, value in values.items():
                if value is None or (isinstance(value, float) and not math.isfinite(value)):
                    continue
                self.state[key] = value
            self._eta()

    def evaluated(self, step: int, metrics: dict[str, Any]) -> None:
        """Record one evaluation: /progress keeps the last MAX_EVALUATIONS, so a reader polling every few
        seconds (the operator, for a TuningStudy's pruner) misses none of them. Non-finite values are
        dropped; an evaluation at a step already recorded replaces it; eval_loss also sets evalLoss."""
        kept = {str(k): number for k, v in metrics.items() if (number := finite(v)) is not None}
        if not kept:
            return
        with self._lock:
            history = [e for e in self.state.get("evaluations", []) if e["step"] != step]
            self.state["evaluations"] = [*history, {"step": step, "metrics": kept}][-MAX_EVALUATIONS:]
            self._metrics.update(kept)
            if "eval_loss" in kept:
                self.state["evalLoss"] = kept["eval_loss"]

    def _eta(self) -> None:
        step, total, start = self.state.get("step"), self.state.get("totalSteps"), self.state.get("startStep", 0)
        if isinstance(step, int) and isinstance(total, int) and step > start:
            elapsed = time.monotonic() - self._started
            self.state["etaSeconds"] = max(int(elapsed / (step - start) * (total - step)), 0)
        else:
            self.state.pop("etaSeconds", None)

    def progress_json(self) -> bytes:
        with self._lock:
            return json.dumps(self.state).encode()

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of the lepton_trainer_* gauges."""
        lines: list[str] = []
        with self._lock:
            for key, name, help_ in GAUGES:
                value = self.state.get(key)
                number = finite(value) if isinstance(value, int | float) else None
                lines += [f"# HELP lepton_trainer_{name} {help_}", f"# TYPE lepton_trainer_{name} gauge",
                          f"lepton_trainer_{name} {_number(number or 0.0)}"]  # fmt: skip
            lines += [f"# HELP {METRIC} Latest value of each evaluated metric, by name.", f"# TYPE {METRIC} gauge"]
            lines += [f'{METRIC}{{name="{_label(k)}"}} {_number(v)}' for k, v in sorted(self._metrics.items())]
        return ("\n".join(lines) + "\n").encode()

    def routes(self) -> dict[str, Route]:
        """/progress and /metrics of this state, for an `Endpoint`."""
        return {
            "/progress": lambda: (self.progress_json(), JSON),
            "/metrics": lambda: (self.metrics_text(), PROMETHEUS_TEXT),
        }


def _number(value: float) -> str:
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
