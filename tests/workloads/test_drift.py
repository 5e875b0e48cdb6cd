"""Drift end to end on CPU: the real trainer (torchrun, one process) writes dataStats of the split it
trained on into lepton-training.json; the real server scores live inputs against it; the operator's
parser reads its /metrics and the status function decides DriftDetected.

Unshifted inputs are new tickets drawn like the training data (the corpus' own sentence parts,
recombined); shifted ones are longer texts in another vocabulary. A server whose model carries no
dataStats says drift is off, and the status reads NoReference.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton.api.conditions import ConditionType, get_condition
from lepton.api.drift import DataStats, DriftMonitoring
from lepton.api.inferenceservice import InferenceServiceStatus
from lepton.status.drift import drift_condition, scores_from_metrics
from lepton.status.story import Story
from tests.workloads.conftest import CORPUS, finish, torchrun, trainer_config
from tests.workloads.test_server import NAME, Server, v2_infer

DRIFT = {"metric": "psi", "threshold": 0.2, "windowInputs": 200, "minInputs": 200}
TICKET = re.compile(r"^Ticket \d+: (.*?[.?!]) (.*?)Answer: (.*)$")
OTHER_WORDS = ["quarterly", "revenue", "forecast", "renewable", "energy", "markets", "southeast", "asia", "subsidies",
               "policy", "grid", "capacity", "photovoltaic", "turbines", "offshore", "storage", "tariffs"]  # fmt: skip


def tickets(n: int, rng: random.Random) -> list[str]:
    """New tickets like the training data: the corpus' own parts (issue, closing, answer) recombined."""
    parts = [TICKET.match(json.loads(line)["text"]) for line in CORPUS.read_text().splitlines() if line.strip()]
    issues, closings, answers = zip(*(p.groups() for p in parts if p is not None), strict=True)
    return [f"Ticket {rng.randrange(400)}: {rng.choice(issues)} {rng.choice(closings)}Answer: {rng.choice(answers)}"
            for _ in range(n)]  # fmt: skip


def shifted(n: int, rng: random.Random) -> list[str]:
    """Longer inputs in a vocabulary the training data never used."""
    return [" ".join(rng.choice(OTHER_WORDS) for _ in range(rng.randint(9, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("drift-train")
    config = trainer_config(tiny_model, run, maxSteps=6)
    assert finish(torchrun(config, run, procs=1), run) == 0, (run / "torchrun.log").read_text()[-3000:]
    return run / "out"


@pytest.fixture(scope="module")
def drift_servers(
    trained: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("drift-logs")
    base = {"task": "causal-lm", "protocols": ["v2"], "maxBatchSize": 32, "maxBatchDelayMs": 5, "maxInputTokens": 120,
            "maxOutputTokens": 1, "drift": DRIFT}  # fmt: skip
    started = {
        "trained": Server(base | {"modelPath": str(trained)}, logs / "trained.log").start(),
        "untrained": Server(base | {"modelPath": str(tiny_model)}, logs / "untrained.log").start(),  # no dataStats
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def send(server: Server, texts: list[str], per_request: int = 25) -> None:
    for i in range(0, len(texts), per_request):
        reply = server.post(f"/v2/models/{NAME}/infer", v2_infer(texts[i : i + per_request], max_tokens=1))
        assert reply.status == 200, reply.body


def condition(server: Server) -> tuple[Any, InferenceServiceStatus]:
    """What the operator will conclude from this replica's /metrics."""
    read = scores_from_metrics(server.call("GET", "/metrics").body.decode())
    story = Story(InferenceServiceStatus(), 1, "2026-01-01T00:00:00Z")
    scores, window = read if read is not None else (None, None)
    drift_condition(story, DriftMonitoring.model_validate(DRIFT), scores, window)
    return get_condition(story.status.conditions, ConditionType.DRIFT_DETECTED), story.status


def test_the_trainer_writes_the_statistics_of_its_training_split(trained: Path) -> None:
    meta = json.loads((trained / "lepton-training.json").read_text())
    stats = DataStats.model_validate(meta["dataStats"])
    assert stats.rows == meta["train_rows"] == 360  # 400 tickets, 10% held out for validation
    assert stats.max_length == 48 and sum(stats.input_length.counts) == stats.rows
    assert 3 <= len(stats.input_length.edges) <= 9 and stats.labels is None  # causal-lm: no labels
    assert stats.tokens.ids and sum(stats.tokens.counts) + stats.tokens.other > 20 * stats.rows


def test_unshifted_inputs_stay_under_the_threshold_and_shifted_ones_raise_drift(
    drift_servers: dict[str, Server],
) -> None:
    server, rng = drift_servers["trained"], random.Random(7)
    meta = server.call("GET", f"/v2/models/{NAME}").json()
    assert meta["drift"] == {"enabled": True, "metric": "psi", "threshold": 0.2, "windowInputs": 200, "minInputs": 200}

    send(server, tickets(100, rng))
    cond, status = condition(server)
    assert (cond.status, cond.reason) == ("False", "WindowFilling"), cond
    assert status.drift is not None and status.drift.window_inputs == 100 and status.drift.scores == {}

    send(server, tickets(100, rng))
    cond, status = condition(server)
    view = server.call("GET", f"/v2/models/{NAME}/drift").json()
    print(f"unshifted: {view['scores']}")  # the numbers the report quotes (pytest -s)
    assert (cond.status, cond.reason) == ("False", "NoDrift"), cond.message
    assert status.drift is not None and max(status.drift.scores.values()) < 0.2, status.drift
    assert view["window"] == {"input_length": 200, "tokens": 200} and view["drifted"] == []

    started = time.monotonic()
    send(server, shifted(200, rng))  # the window now holds only shifted inputs
    elapsed = time.monotonic() - started
    cond, status = condition(server)
    view = server.call("GET", f"/v2/models/{NAME}/drift").json()
    print(f"shifted: {view['scores']} ({elapsed:.2f}s for 200 inputs)")
    assert (cond.status, cond.reason) == ("True", "DriftDetected"), cond.message
    assert status.drift is not None and min(status.drift.scores.values()) > 0.2, status.drift
    assert "above the threshold 0.2 over the last 200 inputs" in cond.message
    assert view["drifted"] == ["input_length", "tokens"]
    text = server.call("GET", "/metrics").body.decode()
    assert "lepton_server_drift_threshold 0.2" in text and "lepton_server_drift_window_inputs 200.0" in text

    send(server, tickets(200, rng))  # back to the usual inputs: the window forgets the shift
    cond, _ = condition(server)
    assert (cond.status, cond.reason) == ("False", "NoDrift"), cond.message


def test_a_model_without_data_stats_has_drift_off(drift_servers: dict[str, Server]) -> None:
    server = drift_servers["untrained"]
    meta = server.call("GET", f"/v2/models/{NAME}").json()
    assert meta["drift"]["enabled"] is False and "lepton-training.json" in meta["drift"]["reason"]
    assert server.call("GET", f"/v2/models/{NAME}/drift").json()["enabled"] is False
    send(server, tickets(10, random.Random(1)))
    cond, status = condition(server)
    assert (cond.status, cond.reason) == ("False", "NoReference") and status.drift is None
    assert server.log.read_text().count("drift scoring off") == 1
