"""Request logging, unit tier: the PII patterns mask alike in Python's re (the server) and pyarrow's RE2
(the Dataset step); the API's rules; rendering into the server's and the data workload's contracts; the
server's log writer (masking, rotation, budget, failures) and the data workload's reading of the store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from prometheus_client import CollectorRegistry

from lepton.api.contract import SERVER_CONFIG_ENV, DataInput, RequestLogConfig, ServerConfig
from lepton.api.pii import PII, find, mask, ordered
from lepton.api.validation import ManifestError, parse
from lepton.local.backend import LocalRunError
from lepton.local.inferenceservice import InferenceServiceBackend
from lepton.render.common import Mounts
from lepton.render.dataset import data_config
from lepton.render.inferenceservice import ServeResolved, ServeSettings, render
from lepton.workloads.data.requestlog import list_log_inputs, read_log
from lepton.workloads.server.requestlog import LogMetrics, LogWriter, RequestLog, sampled

# --- one set of patterns, two engines -----------------------------------------------------------------
PARITY = [
    "write to jane.doe+tag@example.co.uk today",
    "call +44 20 7946 0958 or (555) 123-4567",
    "portable +33 6 12 34 56 78, bureau +1 (555) 123-4567",
    "office 01 23 45 67 89, cell 06.12.34.56.78",
    "server 192.168.100.120 and 10.0.0.1 down",
    "not a phone: order 12345678, year 2026",
    "date 2026-01-01T12:00:00Z stays",
    "prénom.nom@exemple.fr écrit",  # non-ASCII beside a match: \b is ASCII in both
    "numéro 06 12 34 56 78é fin",
    "ünïcödé 12.34.56 x",
    "a@b.c is too short, a@b.io is not",
    "john\\n@x.com escaped",
    "mixed 555-123-4567@host.org",
    "",
]


# (06.12.34.56.78 is not here: IPs are masked first, and its last four groups are one: "06.<ip>".)
WHOLE_NUMBERS = ["(555) 123-4567", "+33 6 12 34 56 78", "+44 20 7946 0958", "+1 (555) 123-4567", "555-123-4567",
                 "01 23 45 67 89", "06 12 34 56 78", "+49 30 1234567"]  # fmt: skip


@pytest.mark.parametrize("number", WHOLE_NUMBERS)
def test_a_phone_number_is_masked_whole(number: str) -> None:
    """Parity alone cannot catch a number both engines miss: each of these shapes must go, every digit."""
    assert mask(f"call {number} today")[0] == "call <phone> today"


@pytest.mark.parametrize("text", PARITY)
def test_python_and_re2_mask_the_same_bytes(text: str) -> None:
    arrow = pa.array([text])
    for entity in ordered(PII):
        arrow = pc.replace_substring_regex(arrow, PII[entity], f"<{entity}>")
    assert mask(text)[0] == arrow[0].as_py()


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("mail me: bob@example.com", [("email", "bob@example.com")]),
        ("+1 415 555 2671", [("phone", "+1 415 555 2671")]),
        ("ip 8.8.8.8", [("ip", "8.8.8.8")]),
        ("version 1.2 on 2026-01-01T00:00Z", []),
    ],
)
def test_the_scanner_finds_what_masking_removes(text: str, found: list[tuple[str, str]]) -> None:
    assert find(text) == found
    assert find(mask(text)[0]) == []


# --- the API -------------------------------------------------------------------------------------------
def service(**spec: Any) -> Any:
    return parse({"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService",
                  "metadata": {"name": "chat", "namespace": "team-a", "uid": "u-1"},
                  "spec": {"model": {"uri": "/models/m"}} | spec})  # fmt: skip


def dataset(*sources: dict[str, Any]) -> Any:
    return parse({"apiVersion": "lepton.ai/v1alpha1", "kind": "Dataset",
                  "metadata": {"name": "fb", "namespace": "team-a", "uid": "u-2"},
                  "spec": {"sources": list(sources),
                           "output": {"pvc": {"claimName": "data", "path": "fb"}}}})  # fmt: skip


@pytest.mark.parametrize(
    ("logging", "message"),
    [
        ({"sampleRate": 0, "destination": {"uri": "/l"}}, "spec.logging.sampleRate in body should be greater than 0"),
        ({"sampleRate": 1.5, "destination": {"uri": "/l"}}, "should be less than or equal to 1"),
        ({"maxBytesPerDay": 10, "destination": {"uri": "/l"}}, "greater than or equal to 1024"),
        ({"entities": [], "destination": {"uri": "/l"}}, "should have at least 1 items"),
        ({"entities": ["name"], "destination": {"uri": "/l"}}, 'Unsupported value: "name"'),
        ({"destination": {}}, "logging.destination: set exactly one of pvc, uri or s3"),
        ({"destination": {"s3": {"uri": "s3://logs/a/"}}}, "logging.destination: s3 is not supported yet"),
        ({}, "spec.logging.destination: Required value"),
    ],
)
def test_bad_logging_is_refused_with_what_to_fix(logging: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        service(logging=logging)
    assert message in str(caught.value)


def test_logging_defaults() -> None:
    logging = service(logging={"destination": {"uri": "/l"}}).spec.logging
    assert (logging.sample_rate, logging.max_bytes_per_day, logging.entities) == (0.1, 2**30, ["email", "phone", "ip"])


# --- rendering -----------------------------------------------------------------------------------------
def server_config_of(svc: Any) -> tuple[ServerConfig, dict[str, Any]]:
    children = render(svc, ServeSettings(), ServeResolved()).children
    deployment = next(c for c in children if c["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return ServerConfig.model_validate_json(env[SERVER_CONFIG_ENV]), deployment["spec"]["template"]["spec"]


def test_a_pvc_destination_is_mounted_read_write_and_passed_to_the_server() -> None:
    logging = {"sampleRate": 0.5, "maxBytesPerDay": 4096, "destination": {"pvc": {"claimName": "logs", "path": "chat"}},
               "entities": ["phone"]}  # fmt: skip
    config, pod = server_config_of(service(logging=logging))
    assert config.request_log == RequestLogConfig(directory="/mnt/pvc/logs/chat", sample_rate=0.5,
                                                  max_bytes_per_day=4096, entities=["phone"])  # fmt: skip
    assert {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "logs", "readOnly": False}} in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "pvc-0", "mountPath": "/mnt/pvc/logs", "readOnly": False} in mounts
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_without_logging_the_server_config_has_none() -> None:
    assert server_config_of(service())[0].request_log is None


def test_locally_a_pvc_destination_is_refused() -> None:
    with pytest.raises(LocalRunError, match=r"logging\.destination cannot be a PVC"):
        InferenceServiceBackend(service(logging={"destination": {"pvc": {"claimName": "logs"}}}))


def test_a_request_log_source_reaches_the_data_workload_read_only() -> None:
    ds = dataset({"requestLog": {"pvc": {"claimName": "logs", "path": "chat"}}},
                 {"requestLog": {"uri": "file:///var/log/chat", "feedback": False}})  # fmt: skip
    mounts = Mounts()
    config = data_config(ds, mounts, [], None)
    assert config.sources == [
        DataInput(path="/mnt/pvc/logs/chat", request_log=True, feedback=True),
        DataInput(path="/var/log/chat", request_log=True, feedback=False),
    ]
    assert mounts.claims == {"logs": True, "data": False}


def test_other_sources_render_without_the_request_log_fields() -> None:
    config = data_config(dataset({"pvc": {"claimName": "raw"}}), Mounts(), [], None)
    assert "requestLog" not in config.sources[0].to_wire()  # their Job names (a hash) do not change


# --- the server's writer -------------------------------------------------------------------------------
def writer(tmp_path: Path, **config: Any) -> tuple[LogWriter, LogMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = LogMetrics(registry)
    cfg = RequestLogConfig(directory=str(tmp_path / "log"), sample_rate=1, replica="r1", **config)
    return LogWriter(cfg, metrics), metrics, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def run(w: LogWriter, records: list[dict[str, Any]]) -> None:
    w.start()
    for r in records:
        w.submit(r, 100)
    w.close()


def request(i: int, text: str, out: str = "ok") -> dict[str, Any]:
    return {"type": "request", "responseId": f"cmpl-{i:032x}", "time": "2026-01-01T00:00:00.000Z",
            "route": "/v1/completions", "model": "m", "index": 0, "input": text, "output": out}  # fmt: skip


def stored(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "log").iterdir())


def test_nothing_unmasked_reaches_a_stored_byte(tmp_path: Path) -> None:
    w, _, registry = writer(tmp_path)
    run(w, [request(1, "mail jane@example.com or call +44 20 7946 0958", "reply to bob@corp.io"),
            request(2, "john\n@x.com sits across a JSON escape"), request(3, "ip 10.1.2.3"),
            request(4, "ctrl \x01 23 45 and tab\t12.34.56"), request(5, 'quote"a@b.io\\')])  # fmt: skip
    data = b"".join(p.read_bytes() for p in stored(tmp_path))
    assert find(data.decode()) == []
    lines = [json.loads(x) for x in data.splitlines()]
    assert lines[0]["input"] == "mail <email> or call <phone>" and lines[0]["output"] == "reply to <email>"
    assert lines[1]["input"] == "john\n<email> sits across a JSON escape"  # the escape kept whole
    assert value(registry, "lepton_server_request_log_records_total", type="request") == 5
    assert value(registry, "lepton_server_request_log_masked_total") >= 5


def test_files_rotate_at_the_size_cap_and_are_never_reopened(tmp_path: Path) -> None:
    w, _, _ = writer(tmp_path, max_file_bytes=1024)
    run(w, [request(i, "x" * 300) for i in range(10)])
    first = stored(tmp_path)
    assert len(first) >= 3 and all(p.stat().st_size <= 1024 for p in first)
    assert all(p.name.endswith("-r1.jsonl") or "-r1." in p.name for p in first)
    w2, _, _ = writer(tmp_path, max_file_bytes=1024)  # a restart: new files, the old ones untouched
    sizes = {p: p.stat().st_size for p in first}
    run(w2, [request(99, "y")])
    assert {p: p.stat().st_size for p in first} == sizes and len(stored(tmp_path)) == len(first) + 1


def test_past_the_daily_budget_records_are_dropped_and_counted(tmp_path: Path) -> None:
    w, _, registry = writer(tmp_path, max_bytes_per_day=2048)
    run(w, [request(i, "z" * 400) for i in range(10)])
    total = sum(p.stat().st_size for p in stored(tmp_path))
    assert 0 < total <= 2048
    written = value(registry, "lepton_server_request_log_records_total", type="request")
    assert written + value(registry, "lepton_server_request_log_dropped_total", reason="budget") == 10
    w2, _, registry2 = writer(tmp_path, max_bytes_per_day=2048)  # today's bytes count after a restart
    run(w2, [request(50, "z" * 400)])
    assert value(registry2, "lepton_server_request_log_dropped_total", reason="budget") == 1


def test_a_failing_store_is_counted_and_never_raises(tmp_path: Path) -> None:
    (tmp_path / "log").write_text("a file where the directory should be")
    w, _, registry = writer(tmp_path)
    run(w, [request(1, "a"), request(2, "b")])
    assert value(registry, "lepton_server_request_log_failures_total") == 2


def test_a_full_queue_drops_instead_of_waiting(tmp_path: Path) -> None:
    w, _, registry = writer(tmp_path, max_queue_bytes=250)
    for i in range(3):  # not started: nothing drains the queue
        w.submit(request(i, "q"), 100)
    assert value(registry, "lepton_server_request_log_dropped_total", reason="queue") == 1
    w.start()
    w.close()


def test_sampling_is_a_property_of_the_response_id() -> None:
    ids = [f"cmpl-{i:032x}" for i in range(4000)]
    share = sum(sampled(i, 0.25) for i in ids) / len(ids)
    assert 0.22 < share < 0.28
    assert [sampled(i, 0.25) for i in ids] == [sampled(i, 0.25) for i in ids]
    assert all(sampled(i, 1.0) for i in ids[:10])


def test_feedback_on_an_unsampled_response_is_not_kept(tmp_path: Path) -> None:
    log = RequestLog(RequestLogConfig(directory=str(tmp_path), sample_rate=0.5), CollectorRegistry())
    ids = [f"cmpl-{i:032x}" for i in range(50)]
    assert [log.feedback(i, 1, None) for i in ids] == [sampled(i, 0.5) for i in ids]
    log.writer.close()


# --- the data workload reading the store ---------------------------------------------------------------
def write_lines(path: Path, docs: list[dict[str, Any]], tail: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs) + tail)


def rows(root: Path, feedback: bool = True) -> tuple[list[Any], list[dict[str, Any]]]:
    source = DataInput(path=str(root), request_log=True, feedback=feedback)
    cache = root.parent / "cache"
    inputs = list_log_inputs(source, 0, cache)
    out = [r for f in inputs for t in read_log(source, f, cache, 1 << 20) for r in t.to_pylist()]
    return inputs, out


def test_feedback_joins_by_response_id_and_the_latest_wins(tmp_path: Path) -> None:
    a, b = f"cmpl-{1:032x}", f"cmpl-{2:032x}"
    write_lines(tmp_path / "log" / "20260101T000000Z-r1.jsonl",
                [request(1, "first"), request(2, "second"),
                 {"type": "feedback", "responseId": a, "time": "2026-01-01T00:00:01.000Z", "label": 0}])  # fmt: skip
    write_lines(tmp_path / "log" / "20260101T000000Z-r2.jsonl",
                [{"type": "feedback", "responseId": a, "time": "2026-01-01T00:00:02.000Z", "label": 1,
                  "correction": "better"}])  # fmt: skip
    _, out = rows(tmp_path / "log")
    assert [(r["text"], r["responseId"], r["label"], r["correction"]) for r in out] == [
        ("first", a, 1, "better"), ("second", b, None, None)]  # fmt: skip
    _, plain = rows(tmp_path / "log", feedback=False)
    assert "label" not in plain[0]


def test_mixed_label_types_become_text(tmp_path: Path) -> None:
    write_lines(tmp_path / "log" / "a.jsonl", [request(1, "x"), request(2, "y"),
        {"type": "feedback", "responseId": f"cmpl-{1:032x}", "time": "t", "label": 3},
        {"type": "feedback", "responseId": f"cmpl-{2:032x}", "time": "t", "label": "good"}])  # fmt: skip
    assert [r["label"] for r in rows(tmp_path / "log")[1]] == ["3", "good"]


def test_a_line_being_written_is_left_for_the_next_version(tmp_path: Path) -> None:
    path = tmp_path / "log" / "a.jsonl"
    tail = b'{"type": "request", "respo'
    write_lines(path, [request(1, "done")], tail=tail)
    inputs, out = rows(tmp_path / "log")
    assert [r["text"] for r in out] == ["done"] and inputs[0].size == path.stat().st_size - len(tail)
    with path.open("ab") as fh:
        fh.write(b'nseId": "cmpl-' + b"0" * 32 + b'", "input": "later", "index": 0}\n')
    again, out = rows(tmp_path / "log")
    assert [r["text"] for r in out] == ["done", "later"] and again[0].digest != inputs[0].digest
    assert os.path.getsize(path) == again[0].size
