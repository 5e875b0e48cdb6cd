"""Drift, table-tested: the statistics (PSI and Jensen-Shannon values worked out by hand), the reference
the trainer builds, the parser the operator reads the servers' metrics text with, DriftMonitoring's
rules, and the DriftDetected condition (never touching Ready; lastTransitionTime moving only on a flip).
The server's windows and the text it exports: test_server_drift.py."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import yaml

from lepton.api.conditions import ConditionType, get_condition
from lepton.api.drift import (
    DataStats,
    DriftMonitoring,
    count_tokens,
    data_stats,
    histogram,
    js_distance,
    psi,
    quantile_edges,
)
from lepton.api.inferenceservice import InferenceServiceStatus
from lepton.api.validation import ManifestError, parse
from lepton.status.drift import drift_condition, merge, scores_from_metrics
from lepton.status.story import Story
from tests.conftest import EXAMPLES

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z"

# --- the statistics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "window", "expected_psi", "expected_js"),
    [
        ([50, 50], [50, 50], 0.0, 0.0),  # identical
        ([1, 2, 3, 4], [10, 20, 30, 40], 0.0, 0.0),  # counts are shares: only the proportions matter
        # 0.25 ln(2) + 0.25 ln(1.5); JS: m = (.375, .625), sqrt(0.5 KL(p|m) + 0.5 KL(q|m)) in bits
        ([50, 50], [25, 75], 0.25 * math.log(2) + 0.25 * math.log(1.5),
         math.sqrt(0.25 * math.log2(0.5 / 0.375) + 0.25 * math.log2(0.5 / 0.625)
                   + 0.125 * math.log2(0.25 / 0.375) + 0.375 * math.log2(0.75 / 0.625))),  # 0.220896
        # a bin empty in the reference: its share is floored at 1e-4
        ([100, 0], [90, 10], -0.1 * math.log(0.9) + (0.1 - 1e-4) * math.log(0.1 / 1e-4),
         math.sqrt(0.5 * math.log2(1 / 0.95) + 0.45 * math.log2(0.9 / 0.95) + 0.05 * math.log2(0.1 / 0.05))),
        # disjoint: both empty bins floored; JS reaches its bound of 1
        ([1, 0], [0, 1], 2 * (1 - 1e-4) * math.log(1 / 1e-4), 1.0),
        ([0, 0], [0, 0], 0.0, 0.0),  # nothing on either side
    ],
    ids=["identical", "scaled", "shifted", "empty-reference-bin", "disjoint", "empty"],
)  # fmt: skip
def test_psi_and_jensen_shannon_values(
    reference: list[int], window: list[int], expected_psi: float, expected_js: float
) -> None:
    assert psi(reference, window) == pytest.approx(expected_psi, abs=1e-9)
    assert js_distance(reference, window) == pytest.approx(expected_js, abs=1e-6)


def test_the_scores_need_the_same_bins() -> None:
    with pytest.raises(ValueError, match="2 reference bins and 3 window bins"):
        psi([1, 1], [1, 1, 1])


@pytest.mark.parametrize(
    ("values", "edges"),
    [
        (list(range(1, 101)), [11, 21, 31, 41, 51, 61, 71, 81, 91]),  # deciles
        ([5] * 50 + [9] * 50, [9]),  # repeated values: fewer bins, no empty one below the smallest
        ([], []),
    ],
)
def test_length_edges_are_the_deciles(values: list[int], edges: list[int]) -> None:
    assert quantile_edges(values) == edges


def test_histogram_bins_are_closed_below() -> None:
    # bins: < 10, [10, 20), >= 20
    assert histogram([1, 9, 10, 19, 20, 500], [10, 20]) == [2, 2, 2]


def test_the_reference_keeps_frequent_tokens_and_labels() -> None:
    sequences = [[1, 2, 3], [1, 1, 2], [4] * 900]
    stats = data_stats([len(s) for s in sequences], count_tokens(sequences), labels=[0, 2, 2], num_labels=4,
                       max_length=48)  # fmt: skip
    assert stats.tokens.ids == [4, 1, 2, 3] and stats.tokens.counts == [900, 3, 2, 1] and stats.tokens.other == 0
    assert stats.labels == [1, 0, 2, 0] and stats.rows == 3 and stats.max_length == 48
    # a token under 0.1% of all tokens goes to "other"
    rare = data_stats([1] * 3, count_tokens([[7] * 2000, [8], [9]]))
    assert rare.tokens.ids == [7] and rare.tokens.other == 2
    assert DataStats.model_validate(stats.to_wire()) == stats  # what lepton-training.json holds reads back


# --- metrics text -> status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("lepton_server_drift_window_inputs 3.0\n", ({}, 3)),
        ('# HELP x\nlepton_server_drift_score{feature="label"} 0.5 1700000000000\n'
         "lepton_server_drift_window_inputs 300\nlepton_server_requests_total 5\n", ({"label": 0.5}, 300)),
        ('lepton_server_drift_score{pod="p",feature="tokens"} +Inf\nlepton_server_drift_window_inputs 9\n', ({}, 9)),
        ('lepton_server_drift_score{feature="tokens"} oops\nlepton_server_drift_window_inputs 9\n', ({}, 9)),
    ],
    ids=["empty", "window-only", "timestamp-and-others", "not-finite", "garbage"],
)  # fmt: skip
def test_scores_from_metrics(text: str, expected: Any) -> None:
    assert scores_from_metrics(text) == expected


def test_merge_takes_the_highest_score_and_the_fullest_window() -> None:
    assert merge([None, None]) is None
    assert merge([({"tokens": 0.1, "label": 0.4}, 500), None, ({"tokens": 0.3}, 120)]) == (
        {"tokens": 0.3, "label": 0.4}, 500)  # fmt: skip


def story(status: InferenceServiceStatus | None = None, now: str = T0) -> Story[InferenceServiceStatus]:
    return Story(status or InferenceServiceStatus(), 3, now)


SPEC = DriftMonitoring(threshold=0.2, window_inputs=500, min_inputs=200)


@pytest.mark.parametrize(
    ("spec", "scores", "window", "expected"),
    [
        (None, {"tokens": 9.0}, 500, None),
        (SPEC, None, None, ("False", "NoReference", "no replica exports drift scores")),
        (SPEC, {}, 12, ("False", "WindowFilling", "12 of the 200 inputs (minInputs) a score needs have arrived")),
        (SPEC, {"tokens": 0.9}, 150, ("False", "WindowFilling", "150 of the 200")),
        (SPEC, {"input_length": 0.04, "tokens": 0.07}, 500,
         ("False", "NoDrift", "highest PSI: tokens 0.07, threshold 0.2, over the last 500 inputs")),
        (SPEC, {"input_length": 0.2, "tokens": 0.07}, 500, ("False", "NoDrift", "input_length 0.2")),  # not above
        (SPEC, {"input_length": 0.53125, "tokens": 1.5, "label": 0.1}, 500,
         ("True", "DriftDetected", "tokens PSI 1.5; input_length PSI 0.531 above the threshold 0.2 over the last 500 "
          "inputs: live inputs differ from the training data; the service keeps serving")),
        (DriftMonitoring(metric="jensenShannon", threshold=0.3, min_inputs=20), {"tokens": 0.31}, 40,
         ("True", "DriftDetected", "tokens Jensen-Shannon distance 0.31 above the threshold 0.3")),
    ],
    ids=["not-configured", "no-reference", "filling", "filling-despite-score", "no-drift", "at-threshold",
         "drift", "jensen-shannon"],
)  # fmt: skip
def test_drift_condition(
    spec: DriftMonitoring | None, scores: dict[str, float] | None, window: int | None, expected: Any
) -> None:
    s = story()
    s.story(ready=True, reconciling=False, stalled=False, reason="Serving", message="")
    drift_condition(s, spec, scores, window)
    cond = get_condition(s.status.conditions, ConditionType.DRIFT_DETECTED)
    ready = get_condition(s.status.conditions, ConditionType.READY)
    assert ready is not None and ready.status == "True", "drift never makes a service unready"
    if expected is None:
        assert cond is None and s.status.drift is None
        return
    assert cond is not None and (cond.status, cond.reason) == expected[:2]
    assert expected[2] in cond.message, cond.message
    assert cond.observed_generation == 3


def test_drift_condition_flips_and_transition_time() -> None:
    s = story()
    drift_condition(s, SPEC, {"tokens": 0.05}, 500)
    s = story(s.status, T1)
    drift_condition(s, SPEC, {"tokens": 0.06}, 500)  # still no drift: the time stays
    cond = get_condition(s.status.conditions, ConditionType.DRIFT_DETECTED)
    assert cond is not None and (cond.status, cond.last_transition_time) == ("False", T0)
    assert s.status.drift is not None and s.status.drift.to_wire() == {
        "metric": "psi", "scores": {"tokens": 0.06}, "windowInputs": 500}  # fmt: skip
    s = story(s.status, T1)
    drift_condition(s, SPEC, {"tokens": 0.9}, 500)  # drift: a flip
    cond = get_condition(s.status.conditions, ConditionType.DRIFT_DETECTED)
    assert cond is not None and (cond.status, cond.last_transition_time) == ("True", T1)
    s = story(s.status, T2)
    drift_condition(s, SPEC, {"tokens": 0.1}, 500)  # back under: flips back
    cond = get_condition(s.status.conditions, ConditionType.DRIFT_DETECTED)
    assert cond is not None and (cond.status, cond.reason, cond.last_transition_time) == ("False", "NoDrift", T2)
    s = story(s.status, T2)
    drift_condition(s, None, None, None)  # drift removed from the spec: its condition and scores go
    assert get_condition(s.status.conditions, ConditionType.DRIFT_DETECTED) is None and s.status.drift is None


def test_unchanged_scores_leave_the_status_equal() -> None:
    """Equal status: no patch. Scores are rounded, so a wobble in the fourth digit is no change."""
    first = story()
    drift_condition(first, SPEC, {"tokens": 0.05012}, 500)
    again = story(first.status, T1)
    drift_condition(again, SPEC, {"tokens": 0.05014}, 500)
    assert again.status == first.status


# --- the API ---------------------------------------------------------------------------------------------------

BASE = yaml.safe_load((EXAMPLES / "inferenceservice.yaml").read_text())


@pytest.mark.parametrize(
    ("drift", "expected"),
    [
        ({"metric": "jensenShannon", "threshold": 1.5},
         "spec.drift: Invalid value: drift.threshold must be at most 1 with metric jensenShannon: the "
         "Jensen-Shannon distance lies between 0 and 1"),
        ({"windowInputs": 100},  # minInputs defaults to 200
         "spec.drift: Invalid value: drift.minInputs must be at most drift.windowInputs: the window never holds "
         "more inputs than windowInputs"),
        ({"windowInputs": 5}, "spec.drift.windowInputs in body should be greater than or equal to 20"),
        ({"threshold": 0}, "spec.drift.threshold in body should be greater than 0"),
        ({"metric": "kl"}, 'spec.drift.metric: Unsupported value: "kl": supported values: "psi", "jensenShannon"'),
    ],
    ids=["js-threshold", "min-over-window", "window-minimum", "threshold-positive", "metric"],
)  # fmt: skip
def test_drift_rules_say_what_to_fix(drift: dict[str, Any], expected: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["drift"] = drift
    with pytest.raises(ManifestError) as caught:
        parse(doc)
    assert expected in str(caught.value)


def test_drift_defaults() -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["drift"] = {}
    svc: Any = parse(doc)
    assert svc.spec.drift.to_wire() == {"metric": "psi", "threshold": 0.2, "windowInputs": 500, "minInputs": 200}
