"""The data workload as the pod runs it (`python -m lepton.workloads.data`, a real process): versions
by content on any directory, nothing recomputed for a known version, SIGKILL mid-way leaves nothing
visible and resumes from finished shards, malformed inputs named by file and line, a real HTTP
server as a source, retention."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from lepton.api.contract import DataConfig
from lepton.api.dataset import PreparationSummary
from tests.conftest import EXAMPLES, ROOT
from tests.workloads.conftest import FileServer

TICKETS = EXAMPLES / "data" / "tickets.jsonl"
PIPELINE = [{"normalize": {}}, {"dedupe": {}}, {"dedupe": {"method": "minhash"}}, {"maskPii": {}}]


def config(out: Path, sources: list[dict[str, Any]], **extra: Any) -> DataConfig:
    doc = {"dataset": "test/tickets", "sources": sources, "outputDir": str(out), "metricsPort": 0,
           "terminationLog": str(out.parent / f"{out.name}.summary"), "pipeline": PIPELINE,
           "split": {"train": 0.9, "validation": 0.1, "key": "text"}} | extra  # fmt: skip
    return DataConfig.model_validate(doc)


def start(cfg: DataConfig, tmp: Path) -> subprocess.Popen[str]:
    path = tmp / f"config-{time.monotonic_ns()}.json"
    path.write_text(cfg.model_dump_json(by_alias=True))
    return subprocess.Popen([sys.executable, "-m", "lepton.workloads.data", "--config", str(path)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def prepare(cfg: DataConfig, tmp: Path) -> tuple[int, str, PreparationSummary | None]:
    proc = start(cfg, tmp)
    _, err = proc.communicate(timeout=600)
    log = Path(cfg.termination_log)
    summary = PreparationSummary.model_validate_json(log.read_text()) if log.is_file() else None
    return proc.returncode, err, summary


def ok(cfg: DataConfig, tmp: Path) -> tuple[str, PreparationSummary]:
    code, err, summary = prepare(cfg, tmp)
    assert code == 0 and summary is not None and summary.version, err[-3000:]
    return err, summary


def rows_of(out: Path, version: str) -> dict[str, list[Any]]:
    base = out / "versions" / version
    return {s: pq.read_table(base / s).to_pylist() for s in ("train", "validation", "test") if (base / s).is_dir()}


def test_the_same_inputs_give_the_same_version_anywhere(tmp_path: Path) -> None:
    copies = []
    for name in ("a", "b"):
        (tmp_path / name / "in").mkdir(parents=True)
        copies.append(shutil.copy(TICKETS, tmp_path / name / "in" / "tickets.jsonl"))
    _, first = ok(config(tmp_path / "a" / "out", [{"path": str(tmp_path / "a" / "in")}]), tmp_path)
    _, second = ok(config(tmp_path / "b" / "out", [{"path": str(tmp_path / "b" / "in")}]), tmp_path)
    assert first.version == second.version and not first.reused and not second.reused
    assert rows_of(tmp_path / "a" / "out", str(first.version)) == rows_of(tmp_path / "b" / "out", str(second.version))
    manifest = json.loads((tmp_path / "a" / "out" / "versions" / str(first.version) / "manifest.json").read_text())
    assert manifest["digest"].startswith(f"sha256:{first.version}") and manifest["inputs"][0]["name"] == "tickets.jsonl"
    assert set(manifest["schema"]) == {"text", "label"} and manifest["statistics"]["text"]["nulls"] == 0
    assert first.rows is not None and manifest["rows"] == first.rows.to_wire()
    assert [s["step"] for s in manifest["steps"]] == ["0:normalize", "1:dedupe", "2:dedupe", "3:maskPii", "split"]
    assert (tmp_path / "a" / "out" / "current").read_text().strip() == first.version

    # Once more: nothing recomputed, the files untouched.
    part = tmp_path / "a" / "out" / "versions" / str(first.version) / "train" / "part-00000.parquet"
    mtime = part.stat().st_mtime_ns
    err, again = ok(config(tmp_path / "a" / "out", [{"path": str(tmp_path / "a" / "in")}]), tmp_path)
    assert again.reused and again.version == first.version and "nothing recomputed" in err
    assert part.stat().st_mtime_ns == mtime

    # A changed byte, or a changed step parameter: another version.
    text = Path(copies[1]).read_text()
    Path(copies[1]).write_text(text.replace("Ticket 0:", "Ticket 0;", 1))
    _, changed = ok(config(tmp_path / "b" / "out", [{"path": str(tmp_path / "b" / "in")}]), tmp_path)
    assert changed.version != first.version
    other = config(tmp_path / "a" / "out", [{"path": str(tmp_path / "a" / "in")}],
                   pipeline=[*PIPELINE[:2], {"dedupe": {"method": "minhash", "bands": 10}}, PIPELINE[3]])  # fmt: skip
    _, reparam = ok(other, tmp_path)
    assert reparam.version not in (first.version, changed.version)
    assert reparam.versions == [reparam.version, first.version]  # newest first


def big_inputs(directory: Path, files: int, rows: int) -> None:
    directory.mkdir(parents=True)
    for f in range(files):
        with (directory / f"part-{f:02d}.jsonl").open("w") as fh:
            for i in range(rows):
                words = " ".join(f"w{(i * 7 + j * 13 + f) % 5000}" for j in range(30))
                fh.write(json.dumps({"text": f"file {f} row {i} {words}", "label": i % 2}) + "\n")


def test_sigkill_midway_leaves_no_version_and_the_rerun_resumes(tmp_path: Path) -> None:
    big_inputs(tmp_path / "in", files=6, rows=12000)
    out = tmp_path / "out"
    cfg = config(out, [{"path": str(tmp_path / "in")}], memoryLimitBytes=64 << 20)
    proc = start(cfg, tmp_path)
    shards = out / ".staging"
    deadline = time.monotonic() + 300
    while not list(shards.glob("*/shards/shard-00001.parquet")):
        assert proc.poll() is None, "finished before it could be interrupted: make the input bigger"
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not list((out / "versions").iterdir()) and not (out / "current").exists()

    err, resumed = ok(cfg, tmp_path)
    assert "resuming after" in err
    fresh = config(tmp_path / "fresh", [{"path": str(tmp_path / "in")}], memoryLimitBytes=64 << 20)
    _, whole = ok(fresh, tmp_path)
    assert resumed.version == whole.version and resumed.rows == whole.rows and resumed.steps == whole.steps
    assert rows_of(out, str(resumed.version)) == rows_of(tmp_path / "fresh", str(whole.version))
    assert not list((out / ".staging").iterdir())


@pytest.mark.parametrize(
    ("name", "content", "fmt", "line", "words"),
    [
        ("bad.jsonl", '{"text": "fine"}\n{"text": "fine too"}\n{"text": broken\n', "auto", 3, "not valid JSON"),
        ("list.jsonl", '{"text": "fine"}\n[1, 2]\n', "auto", 2, "not a JSON object"),
        ("bad.csv", "text,label\nhello,1\nworld,0,extra\n", "auto", 3, "expected 2 fields, found 3"),
        ("bad.txt", "fine\nstill fine\n", "csv", None, None),  # declared csv: a one-column CSV is fine
    ],
)
def test_malformed_input_names_file_and_line(tmp_path: Path, name: str, content: str, fmt: str, line: int | None,
                                            words: str | None) -> None:  # fmt: skip
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_text(content)
    cfg = config(tmp_path / "out", [{"path": str(tmp_path / "in"), "format": fmt}], pipeline=[],
                 split=None if line is None else {"train": 0.9, "validation": 0.1})  # fmt: skip
    if line is None:
        cfg = cfg.model_copy(update={"text_field": "fine"})
        ok(cfg, tmp_path)
        return
    code, err, summary = prepare(cfg, tmp_path)
    assert code == 3 and summary is not None and summary.error is not None
    assert (summary.error.reason, summary.error.file, summary.error.line) == ("BadFormat", name, line)
    assert words in summary.error.message and f"{name}:{line}: " in err
    assert not (tmp_path / "out" / "versions").exists() or not list((tmp_path / "out" / "versions").iterdir())


@pytest.mark.parametrize(
    ("sources", "extra", "reason"),
    [
        ([{"path": "does/not/exist"}], {}, "SourceUnreachable"),
        ([{"path": str(TICKETS)}], {"pipeline": [{"filter": {"length": True, "operator": "Gt", "value": 100000}}]},
         "EmptyResult"),
        ([{"path": str(TICKETS)}], {"pipeline": [{"normalize": {"column": "body"}}]}, "MissingColumn"),
        ([{"url": "http://127.0.0.1:9/nothing.jsonl"}], {}, "SourceUnreachable"),
    ],
)  # fmt: skip
def test_failures_say_why(tmp_path: Path, sources: list[dict[str, Any]], extra: dict[str, Any], reason: str) -> None:
    code, _, summary = prepare(config(tmp_path / "out", sources, **extra), tmp_path)
    assert code == 3 and summary is not None and summary.error is not None and summary.error.reason == reason


def test_an_http_source_with_secret_headers_and_a_digest(tmp_path: Path, file_server: FileServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A real HTTP server over a directory; requests need `Authorization: Bearer s3cret`."""
    file_server.auth = "Bearer s3cret"
    base, root = file_server.base, file_server.root
    shutil.copy(TICKETS, root / "tickets.jsonl")
    import hashlib

    digest = hashlib.sha256(TICKETS.read_bytes()).hexdigest()
    source = {"url": f"{base}/tickets.jsonl", "headersEnv": "TEST_HEADERS", "sha256": digest}
    monkeypatch.setenv("TEST_HEADERS", "Authorization: Bearer s3cret")
    _, summary = ok(config(tmp_path / "out", [source]), tmp_path)
    (tmp_path / "local").mkdir()
    shutil.copy(TICKETS, tmp_path / "local" / "x.jsonl")
    _, local = ok(config(tmp_path / "out2", [{"path": str(tmp_path / "local")}]), tmp_path)
    assert summary.rows == local.rows  # the same bytes, the same rows (names differ, so the versions do)

    code, _, bad = prepare(config(tmp_path / "o3", [source | {"sha256": "0" * 64}]), tmp_path)
    assert code == 3 and bad is not None and bad.error is not None and bad.error.reason == "DigestMismatch"
    monkeypatch.setenv("TEST_HEADERS", "Authorization: Bearer wrong")
    code, _, refused = prepare(config(tmp_path / "o4", [source]), tmp_path)
    assert code == 3 and refused is not None and refused.error is not None
    assert refused.error.reason == "SourceUnreachable" and "401" in refused.error.message
    assert "wrong" not in refused.model_dump_json()
    monkeypatch.delenv("TEST_HEADERS")
    code, _, missing = prepare(config(tmp_path / "o5", [source]), tmp_path)
    assert missing is not None and missing.error is not None and missing.error.reason == "CredentialsMissing"


def test_retention_keeps_the_newest_versions(tmp_path: Path) -> None:
    out, seen = tmp_path / "out", []
    for n in range(4):
        (tmp_path / f"in{n}").mkdir()
        (tmp_path / f"in{n}" / "t.jsonl").write_text(TICKETS.read_text() + json.dumps({"text": f"extra {n}"}) + "\n")
        _, summary = ok(config(out, [{"path": str(tmp_path / f"in{n}")}], retain=2), tmp_path)
        seen.append(summary.version)
    assert summary.versions == [seen[3], seen[2]]
    assert sorted(p.name for p in (out / "versions").iterdir()) == sorted(seen[2:])


def test_the_summary_fits_a_termination_message(tmp_path: Path) -> None:
    steps = [{"normalize": {}}] * 60
    _, summary = ok(config(tmp_path / "out", [{"path": str(TICKETS)}], pipeline=steps), tmp_path)
    assert len(Path(tmp_path / "out.summary").read_bytes()) <= 4096 and summary.rows is not None
    assert os.path.getsize(tmp_path / "out.summary") > 0


def test_a_preparation_keeps_its_metrics_up_until_one_last_scrape() -> None:
    """metricsLingerSeconds: after the end, /metrics stays up until two scrapes read the final values (at
    most that long); without a scrape it waits the whole time; unset, it does not wait at all."""
    import threading
    import time
    import urllib.request

    from lepton.local.backend import free_port
    from lepton.workloads.data.metrics import DataMetrics

    metrics, port = DataMetrics(), free_port()
    metrics.serve(port, host="127.0.0.1")
    try:
        metrics.rows_out.labels(split="train").set(360)
        assert metrics.linger(None) is False
        started = time.monotonic()
        assert metrics.linger(0.3) is False and time.monotonic() - started >= 0.3  # nobody scraped
        seen: list[str] = []

        def scrape() -> None:
            for _ in range(2):  # a rate needs two samples of the final values
                time.sleep(0.2)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as rsp:
                    seen.append(rsp.read().decode())

        scraper = threading.Thread(target=scrape)
        scraper.start()
        started = time.monotonic()
        assert metrics.linger(30) is True and time.monotonic() - started < 10
        scraper.join(10)
        assert len(seen) == 2 and 'lepton_data_output_rows{split="train"} 360.0' in seen[1]
    finally:
        metrics.close()
