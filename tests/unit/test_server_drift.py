"""The model server's drift windows (lepton.workloads.server.drift): eviction, bounded memory, clipping
to the training truncation, predicted labels, and the /metrics text it exports read back by the
operator's parser (lepton.status.drift.scores_from_metrics)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from lepton.api.drift import DataStats, DriftMonitoring, count_tokens, data_stats
from lepton.status.drift import scores_from_metrics
from lepton.workloads.server.drift import DriftCollector, DriftMonitor

# --- the server's windows ----------------------------------------------------------------------------------


def reference(labels: list[int] | None = None) -> DataStats:
    # lengths 2..5, tokens 1..4 evenly
    seqs = [[1, 2], [3, 4, 1], [2, 3, 4, 1], [2, 3, 4, 1, 2]] * 25
    return data_stats([len(s) for s in seqs], count_tokens(seqs), labels=labels, max_length=5)


def test_the_window_slides_and_forgets_what_left_it() -> None:
    config = DriftMonitoring(window_inputs=20, min_inputs=10)
    m = DriftMonitor(config, reference())
    m.observe([[1, 2]] * 9)
    assert m.window == 9 and m.scores() == {"input_length": None, "tokens": None}  # under minInputs
    m.observe([[1, 2]] * 31)
    assert m.window == 20 and sum(m.lengths) == 20 and sum(m.tokens) == 40  # 20 inputs of 2 tokens each
    shifted = m.scores()
    assert shifted["input_length"] is not None and shifted["input_length"] > 1
    # 20 inputs like the reference push every short one out: the window equals the reference again
    m.observe([[1, 2], [3, 4, 1], [2, 3, 4, 1], [2, 3, 4, 1, 2]] * 5)
    assert m.window == 20 and m.scores() == {"input_length": pytest.approx(0.0), "tokens": pytest.approx(0.0)}
    assert len(m.inputs) == 20, "memory is bounded by the window"


def test_long_inputs_are_clipped_to_the_training_truncation_and_unknown_tokens_are_other() -> None:
    m = DriftMonitor(DriftMonitoring(window_inputs=20, min_inputs=10), reference())
    m.observe([[9] * 1000])
    assert m.lengths[-1] == 1 and m.tokens[-1] == 1000  # length 5 (maxLength) bin; token 9 is "other"


def test_predicted_labels_are_scored_against_the_training_labels() -> None:
    m = DriftMonitor(DriftMonitoring(window_inputs=20, min_inputs=10), reference(labels=[0, 1] * 50),
                     labels=["billing", "shipping"])  # fmt: skip
    m.observe_labels(["billing", "shipping"] * 10)
    assert m.scores()["label"] == pytest.approx(0.0)
    m.observe_labels(["billing"] * 20 + ["unknown-name"])
    assert m.label_counts == [20, 0]
    assert m.scores()["label"] == pytest.approx((1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5))
    view = m.view()
    assert view["drifted"] == ["label"] and view["reference"]["labels"] == [0.5, 0.5]


def exposition(monitor: DriftMonitor | None) -> str:
    registry, collector = CollectorRegistry(), DriftCollector()
    collector.monitor = monitor
    registry.register(collector)
    return generate_latest(registry).decode()


def test_the_operator_reads_what_the_server_exports() -> None:
    m = DriftMonitor(DriftMonitoring(window_inputs=20, min_inputs=10), reference())
    assert scores_from_metrics(exposition(None)) is None  # drift off: families without samples
    m.observe([[1, 2]] * 5)
    text = exposition(m)
    assert 'lepton_server_drift_score{feature="tokens"} NaN' in text
    assert scores_from_metrics(text) == ({}, 5)  # NaN: not scored yet
    m.observe([[1, 2]] * 15)
    scores, window = scores_from_metrics(exposition(m)) or ({}, 0)
    assert window == 20 and scores == pytest.approx({k: v for k, v in m.scores().items() if v is not None})
    assert "lepton_server_drift_threshold 0.2" in exposition(m)
