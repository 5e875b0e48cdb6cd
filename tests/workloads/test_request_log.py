"""Production data back into a Dataset, end to end on real processes: a real server logs requests
holding e-mail addresses and phone numbers, clients post feedback, the real data workload prepares a
Dataset from the log; its version holds the rows with their labels, and no stored byte of the log or of
the published version holds an unmasked e-mail address or phone number. More traffic, a new version."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from lepton.api.contract import DataConfig, DataInput
from lepton.api.pii import find
from lepton.api.requestlog import RESPONSE_ID_HEADER
from lepton.workloads.data.runner import prepare
from tests.workloads.test_server import Server

PII_TEXTS = [
    "my mail is jane.doe@example.com, call me at +44 20 7946 0958",
    "reach bob_smith@corp.io or (555) 123-4567 about the outage",
    "office 01 23 45 67 89 and a newline\n@edge.org",
]


LITERALS = [b"jane.doe", b"example.com", b"7946 0958", b"bob_smith", b"123-4567", b"45 67 89", b"x@y.com"]


def scan(root: Path) -> list[tuple[str, str, str]]:
    """Every e-mail or phone number in any byte under `root`: raw bytes of every file, and the decoded
    values of every Parquet file (its bytes are compressed)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("utf-8", errors="replace")
        found += [(str(path), e, m) for e, m in find(text, ["email", "phone"])]
        if path.suffix == ".parquet":
            for row in pq.read_table(path).to_pylist():
                found += [(str(path), e, m) for v in row.values() if isinstance(v, str)
                          for e, m in find(v, ["email", "phone"])]  # fmt: skip
    return found


@pytest.fixture(scope="module")
def logged(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, Path]:
    root = tmp_path_factory.mktemp("requestlog")
    log_dir = root / "log"
    config = {"task": "causal-lm", "modelPath": str(tiny_model), "maxBatchDelayMs": 2, "maxOutputTokens": 8,
              "requestLog": {"directory": str(log_dir), "sampleRate": 1.0, "replica": "r0"}}  # fmt: skip
    server = Server(config, root / "server.log").start().wait_ready()
    yield server, log_dir
    server.stop()


def wait_written(server: Server, records: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = server.metrics()
        done = sum(v for k, v in m.items() if k.startswith("lepton_server_request_log_records_total"))
        if done >= records:
            return
        time.sleep(0.05)
    raise AssertionError(f"the log has {done} records, not {records}")


def ask(server: Server, text: str) -> str:
    reply = server.post("/v1/completions", {"prompt": text, "max_tokens": 4})
    assert reply.status == 200, reply.body
    assert reply.headers[RESPONSE_ID_HEADER.lower()] == reply.json()["id"]
    return str(reply.json()["id"])


def data_config(log_dir: Path, out: Path) -> DataConfig:
    return DataConfig(dataset="test/feedback", sources=[DataInput(path=str(log_dir), request_log=True, feedback=True)],
                      output_dir=str(out), metrics_port=0, termination_log=str(out.parent / "term"))  # fmt: skip


def rows(out: Path, version: str) -> list[dict[str, Any]]:
    return pq.read_table(out / "versions" / version / "train").to_pylist()


def test_served_traffic_becomes_a_new_dataset_version_with_no_pii_stored(logged: tuple[Server, Path]) -> None:
    server, log_dir = logged
    ids = [ask(server, t) for t in PII_TEXTS]
    chat = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "I am x@y.com"}],
                                                "max_tokens": 3})  # fmt: skip
    assert chat.status == 200
    feedback = [
        server.post("/v1/feedback", {"responseId": ids[0], "label": 1}),
        server.post("/v1/feedback", {"responseId": ids[1], "label": 0, "correction": "write to me@mail.com"}),
    ]
    assert [(f.status, f.json()["recorded"]) for f in feedback] == [(200, True), (200, True)]
    wait_written(server, 6)

    out = log_dir.parent / "dataset"
    first = prepare(data_config(log_dir, out))
    assert first.version and not first.reused
    got = {r["responseId"]: r for r in rows(out, first.version)}
    assert set(ids) <= set(got) and len(got) == 4
    assert (got[ids[0]]["label"], got[ids[1]]["label"], got[ids[2]]["label"]) == (1, 0, None)
    assert got[ids[1]]["correction"] == "write to <email>"
    assert "<email>" in got[ids[0]]["text"] and "<phone>" in got[ids[0]]["text"]
    assert scan(log_dir) == [] and scan(out) == []
    # and, independent of the patterns, not one of the literal secrets in any byte of the store
    stored = b"".join(p.read_bytes() for p in sorted(log_dir.rglob("*")) if p.is_file())
    assert not [s for s in LITERALS if s in stored], [s for s in LITERALS if s in stored]

    assert prepare(data_config(log_dir, out)).reused  # no new traffic: the same version, nothing recomputed

    ask(server, "one more from carol@example.net")
    wait_written(server, 7)
    second = prepare(data_config(log_dir, out))
    assert second.version != first.version and not second.reused
    assert len(rows(out, second.version)) == 5
    assert scan(log_dir) == [] and scan(out) == []


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"label": 1}, 400, "responseId"),
        ({"responseId": "nope", "label": 1}, 400, "responseId"),
        ({"responseId": "cmpl-" + "0" * 32}, 400, "feedback needs a label, a correction, or both"),
        ({"responseId": "cmpl-" + "0" * 32, "label": 1, "extra": 2}, 400, "extra"),
        ({"responseId": "cmpl-" + "0" * 32, "label": 1.5}, 400, "label"),
        ({"responseId": "cmpl-" + "0" * 32, "label": ""}, 400, "label: give 1 to 1024 characters"),
    ],
)
def test_bad_feedback_gets_a_4xx_that_says_why(logged: tuple[Server, Path], body: Any, status: int, words: str) -> None:
    reply = logged[0].post("/v1/feedback", body)
    assert reply.status == status, reply.body
    assert words in json.dumps(reply.json()["error"])


def test_feedback_without_logging_is_a_clear_404(tiny_model: Path, tmp_path: Path) -> None:
    server = Server({"task": "causal-lm", "modelPath": str(tiny_model)}, tmp_path / "s.log").start().wait_ready()
    try:
        reply = server.post("/v1/feedback", {"responseId": "cmpl-" + "0" * 32, "label": 1})
        assert reply.status == 404 and "request logging is off" in reply.json()["error"]["message"]
        answered = server.post("/v2/models/tiny/infer", {"inputs": [{"name": "text", "datatype": "BYTES",
                                                                     "shape": [1], "data": ["hi"]}]})  # fmt: skip
        assert answered.headers[RESPONSE_ID_HEADER.lower()].startswith("infer-")
    finally:
        server.stop()
