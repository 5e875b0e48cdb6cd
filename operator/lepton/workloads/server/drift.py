"""Drift of live inputs against the model's training data (spec.drift), per replica.

At load the server reads the reference, the `dataStats` the trainer wrote into lepton-training.json
beside the model; a model without one (a hub id, a model trained elsewhere) has drift off, said once in
the log, in GET /v2/models/{name} and in GET /v2/models/{name}/drift. Every input that passes the
server's checks is counted into a sliding window of the last `windowInputs` inputs: its length bin and
its tokens folded into the reference's bins (O(tokens), C-level counting; what an input keeps is at most
one count per bin it touched, so memory is bounded by window x bins). A classifier's predicted labels
go into a window of their own. Scores (lepton.api.drift: PSI or Jensen-Shannon distance) are computed
when asked for, at a scrape of /metrics or a GET of the drift view, not per request.

Exported at scrape time (a prometheus_client collector, so the families exist in every server):
- lepton_server_drift_score{feature}: per feature of the reference; NaN until the window holds
  minInputs inputs (a score of three inputs is noise; NaN compares false in every alert).
- lepton_server_drift_window_inputs: inputs in the window now.
- lepton_server_drift_threshold: spec.drift.threshold, so an alert compares each service with its own.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import ValidationError

from lepton.api.drift import (
    STATS_VERSION,
    DataStats,
    DriftMonitoring,
    Feature,
    bin_of,
    reference_counts,
    score,
    shares,
)

log = logging.getLogger("lepton.server")
SCORE = "lepton_server_drift_score"
WINDOW = "lepton_server_drift_window_inputs"
THRESHOLD = "lepton_server_drift_threshold"


def load_reference(model_path: str) -> tuple[DataStats | None, str]:
    """The model's training-data summary, or None and why there is none."""
    path = Path(model_path) / "lepton-training.json"
    try:
        meta = json.loads(path.read_text())
    except OSError:
        return None, f"the model has no {path.name} (not trained by Lepton): no reference to compare with"
    except ValueError as exc:
        return None, f"{path.name} is not valid JSON ({exc})"
    raw = meta.get("dataStats") if isinstance(meta, dict) else None
    if not isinstance(raw, dict):
        return None, f"{path.name} carries no dataStats (trained before drift statistics, or not on text)"
    if raw.get("version") != STATS_VERSION:
        return None, f"{path.name}'s dataStats has version {raw.get('version')!r}; this server reads {STATS_VERSION}"
    try:
        return DataStats.model_validate(raw), ""
    except ValidationError as exc:
        return None, f"{path.name}'s dataStats is malformed: {exc.errors()[0]['msg']}"


class DriftMonitor:
    """The sliding windows of one replica and their scores against the reference. Used from the event
    loop only (observing and scoring), so it needs no lock."""

    def __init__(self, config: DriftMonitoring, reference: DataStats, labels: Sequence[str] = ()) -> None:
        self.config, self.reference = config, reference
        self.edges = list(reference.input_length.edges)
        self.max_length = reference.max_length
        self.token_bin = {t: i for i, t in enumerate(reference.tokens.ids)}
        self.other = len(reference.tokens.ids)
        self.ref = reference_counts(reference)
        self.label_bin: dict[str, int] = {}
        if "label" in self.ref:
            self.label_bin = {name: i for i, name in enumerate(labels)}
            width = max(len(self.ref["label"]), len(labels))
            self.ref["label"] += [0] * (width - len(self.ref["label"]))
        self.inputs: deque[tuple[int, tuple[tuple[int, int], ...]]] = deque()
        self.lengths = [0] * len(self.ref["input_length"])
        self.tokens = [0] * len(self.ref["tokens"])
        self.labels: deque[int] = deque()
        self.label_counts = [0] * len(self.ref.get("label", []))

    @property
    def window(self) -> int:
        return len(self.inputs)

    def observe(self, inputs: Sequence[Sequence[int]]) -> None:
        """Count validated inputs (token ids) into the window, evicting the oldest past windowInputs."""
        size = self.config.window_inputs
        for ids in inputs:
            length = min(len(ids), self.max_length) if self.max_length else len(ids)
            lbin = bin_of(length, self.edges)
            folded = tuple(Counter(map(self.token_bin.get, ids, repeat(self.other))).items())
            self.inputs.append((lbin, folded))
            self.lengths[lbin] += 1
            for b, c in folded:
                self.tokens[b] += c
            if len(self.inputs) > size:
                old_bin, old = self.inputs.popleft()
                self.lengths[old_bin] -= 1
                for b, c in old:
                    self.tokens[b] -= c

    def observe_labels(self, labels: Sequence[str]) -> None:
        """Count a classifier's predicted labels (by name, or a class id for a model without names)."""
        if not self.label_counts:
            return
        for name in labels:
            index = self.label_bin.get(name)
            if index is None:
                index = int(name) if name.isdigit() and int(name) < len(self.label_counts) else None
            if index is None:
                continue
            self.labels.append(index)
            self.label_counts[index] += 1
            if len(self.labels) > self.config.window_inputs:
                self.label_counts[self.labels.popleft()] -= 1

    def windows(self) -> dict[Feature, tuple[int, list[int]]]:
        """Each feature's window: (inputs in it, counts per bin)."""
        out: dict[Feature, tuple[int, list[int]]] = {
            "input_length": (len(self.inputs), self.lengths),
            "tokens": (len(self.inputs), self.tokens),
        }
        if self.label_counts:
            out["label"] = (len(self.labels), self.label_counts)
        return out

    def scores(self) -> dict[Feature, float | None]:
        """Each feature's score, None while its window holds fewer than minInputs inputs."""
        enough = self.config.min_inputs
        return {
            feature: score(self.config.metric, self.ref[feature], counts) if n >= enough else None
            for feature, (n, counts) in self.windows().items()
        }

    def view(self) -> dict[str, Any]:
        """The JSON of GET /v2/models/{name}/drift."""
        scores = self.scores()
        ref = self.reference
        return {
            "enabled": True,
            "metric": self.config.metric,
            "threshold": self.config.threshold,
            "windowInputs": self.config.window_inputs,
            "minInputs": self.config.min_inputs,
            "window": {f: n for f, (n, _) in self.windows().items()},
            "scores": scores,
            "drifted": sorted(f for f, s in scores.items() if s is not None and s > self.config.threshold),
            "reference": {
                "rows": ref.rows,
                "maxLength": ref.max_length,
                "inputLength": {"edges": self.edges, "shares": _rounded(shares(self.ref["input_length"]))},
                "tokens": {"kept": len(ref.tokens.ids), "otherShare": _rounded(shares(self.ref["tokens"]))[-1]},
                "labels": _rounded(shares(self.ref["label"])) if "label" in self.ref else None,
            },
            "live": {
                "inputLength": _rounded(shares(self.lengths)),
                "tokensOtherShare": _rounded(shares(self.tokens))[-1],
                "labels": _rounded(shares(self.label_counts)) if self.label_counts else None,
            },
        }


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def monitor(
    config: DriftMonitoring | None, model_path: str, labels: Sequence[str] = ()
) -> tuple[DriftMonitor | None, str]:
    """The replica's monitor, or None and why drift is off (logged once here)."""
    if config is None:
        return None, "drift scoring is not configured (spec.drift)"
    reference, why = load_reference(model_path)
    if reference is None:
        log.warning("drift scoring off: %s", why)
        return None, why
    log.info("drift scoring on: %s over the last %d inputs against %d training inputs (threshold %g)",
             config.metric, config.window_inputs, reference.rows, config.threshold)  # fmt: skip
    return DriftMonitor(config, reference, labels), ""


class DriftCollector(Collector):
    """The drift families of /metrics, computed at scrape time from the attached monitor (none: no samples)."""

    def __init__(self) -> None:
        self.monitor: DriftMonitor | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        help_ = "Drift score of the live input window against the training data, by feature (NaN until the window "
        scores = GaugeMetricFamily(SCORE, help_ + "holds minInputs inputs).", labels=["feature"])
        window = GaugeMetricFamily(WINDOW, "Inputs in the drift window now.")
        threshold = GaugeMetricFamily(THRESHOLD, "spec.drift.threshold: a score above it is drift.")
        m = self.monitor
        if m is not None:
            for feature, value in m.scores().items():
                scores.add_metric([feature], math.nan if value is None else value)
            window.add_metric([], m.window)
            threshold.add_metric([], m.config.threshold)
        yield scores
        yield window
        yield threshold
