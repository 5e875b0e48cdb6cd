"""DriftDetected: whether live inputs drifted from the model's training data, from the replicas' own
drift scores (lepton_server_drift_* on each replica's /metrics; see lepton.workloads.server.drift).

Pure. The controller reads each replica's /metrics, parses it with `scores_from_metrics`, combines the
replicas with `merge` (the highest score per feature, the fullest window) and hands the result to
`drift_condition` from the InferenceService's decide.

DriftDetected never touches Ready, Reconciling or Stalled: a drifted service still serves what it
was asked, so kstatus still reads Current and `kubectl wait --for=condition=Ready` is unaffected. It
is a signal for people and alerts (retrain, look at the inputs), not a failure of the resource.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from lepton.api.conditions import ConditionType, Reason
from lepton.api.drift import DriftMonitoring, DriftStatus, metric_name
from lepton.api.inferenceservice import InferenceServiceStatus
from lepton.status.story import Story

SCORE = "lepton_server_drift_score"
WINDOW = "lepton_server_drift_window_inputs"
SHOWN_DIGITS = 3  # scores in status and messages: finer changes are noise, and each change is a status patch

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_FEATURE = re.compile(r'(?:^|,)\s*feature="(?P<feature>(?:[^"\\]|\\.)*)"')

Scores = tuple[dict[str, float], int]


def scores_from_metrics(text: str) -> Scores | None:
    """(score per feature, inputs in the window) from one replica's Prometheus text exposition; None when
    the replica scores no drift (spec.drift unset, or its model carries no dataStats). A feature whose
    window is not full enough yet (NaN) is left out."""
    scores: dict[str, float] = {}
    window: int | None = None
    for line in text.splitlines():
        if not line.startswith("lepton_server_drift_"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if match["name"] == WINDOW and math.isfinite(value):
            window = int(value)
        elif match["name"] == SCORE and math.isfinite(value):
            feature = _FEATURE.search(match["labels"] or "")
            if feature is not None:
                scores[feature["feature"]] = value
    return None if window is None else (scores, window)


def merge(replicas: Iterable[Scores | None]) -> Scores | None:
    """The replicas together: the highest score per feature and the fullest window; None when none scores."""
    found = [r for r in replicas if r is not None]
    if not found:
        return None
    scores: dict[str, float] = {}
    for per_replica, _ in found:
        for feature, value in per_replica.items():
            scores[feature] = max(value, scores.get(feature, value))
    return scores, max(window for _, window in found)


def drift_condition(
    story: Story[InferenceServiceStatus],
    spec: DriftMonitoring | None,
    scores: Mapping[str, float] | None,
    window: int | None,
) -> None:
    """Set DriftDetected (and status.drift) from the replicas' scores, the highest per feature, and the
    fullest window (`merge`). `scores`/`window` None: no replica exports drift scores.

    - spec None (drift not configured): no DriftDetected condition and no status.drift (both removed).
    - no scores: False, NoReference (the model carries no dataStats, or no replica was read yet).
    - window below spec.minInputs, or no feature scored yet: False, WindowFilling.
    - a feature's score above spec.threshold: True, DriftDetected, naming the feature, score and threshold.
    - otherwise: False, NoDrift.
    Ready is never touched: a drifted service still serves.
    """
    if spec is None:
        kept = [c for c in story.status.conditions if c.type != ConditionType.DRIFT_DETECTED]
        story.update(conditions=kept, drift=None)
        return
    kind = metric_name(spec.metric)
    if scores is None or window is None:
        story.update(drift=None)
        story.set(ConditionType.DRIFT_DETECTED, False, Reason.NO_REFERENCE,
                  "no replica exports drift scores: the model carries no dataStats (not trained by a Lepton "
                  "TrainingJob, or before drift statistics), or no replica could be read yet")  # fmt: skip
        return
    shown = {f: round(v, SHOWN_DIGITS) for f, v in sorted(scores.items()) if math.isfinite(v)}
    story.update(drift=DriftStatus(metric=spec.metric, scores=shown, window_inputs=window))
    if window < spec.min_inputs or not shown:
        story.set(ConditionType.DRIFT_DETECTED, False, Reason.WINDOW_FILLING,
                  f"{window} of the {spec.min_inputs} inputs (minInputs) a score needs have arrived")  # fmt: skip
        return
    past = sorted(((v, f) for f, v in shown.items() if v > spec.threshold), reverse=True)
    if past:
        named = "; ".join(f"{f} {kind} {v:g}" for v, f in past)
        story.set(ConditionType.DRIFT_DETECTED, True, Reason.DRIFT_DETECTED,
                  f"{named} above the threshold {spec.threshold:g} over the last {window} inputs: live inputs "
                  "differ from the training data; the service keeps serving")  # fmt: skip
        return
    top, feature = max((v, f) for f, v in shown.items())
    message = f"highest {kind}: {feature} {top:g}, threshold {spec.threshold:g}, over the last {window} inputs"
    story.set(ConditionType.DRIFT_DETECTED, False, Reason.NO_DRIFT, message)
