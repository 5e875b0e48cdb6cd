"""The data runner: versions by content only, reuse without recomputation, resumable shards after a
SIGKILL, one atomic publish, retention, the manifest, the summary, exit codes and /progress. Process
boundaries (exit codes, SIGKILL, the termination file) run the real entry point; the rest calls
`prepare` in this process on real files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lepton.api.contract import DATA_FORMAT_VERSION, DataConfig, ProgressReport
from lepton.api.dataset import PreparationSummary, StepCount
from lepton.api.tokens import bearer
from lepton.local.backend import free_port
from lepton.workloads.data.errors import DataError, Reason
from lepton.workloads.data.metrics import DataMetrics
from lepton.workloads.data.publish import SUMMARY_LIMIT, ParquetParts, fit
from lepton.workloads.data.runner import prepare
from tests.conftest import EXAMPLES, ROOT

TICKETS = EXAMPLES / "data" / "tickets.jsonl"
SPLIT = {"train": 0.8, "validation": 0.1, "test": 0.1, "key": "text"}


def doc(out: Path, source: Path, **extra: Any) -> dict[str, Any]:
    return {"dataset": "test/runner", "sources": [{"path": str(source)}], "outputDir": str(out), "metricsPort": 0,
            "terminationLog": str(out.parent / f"{out.name}.summary"), "pipeline": [{"normalize": {}}, {"dedupe": {}}],
            "split": SPLIT} | extra  # fmt: skip


def config(out: Path, source: Path, **extra: Any) -> DataConfig:
    return DataConfig.model_validate(doc(out, source, **extra))


def run(document: dict[str, Any] | str, tmp: Path) -> tuple[int, str, PreparationSummary | None]:
    """The entry point as the pod runs it; (exit code, stderr, summary from the termination file)."""
    path = tmp / f"config-{time.monotonic_ns()}.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    proc = subprocess.run([sys.executable, "-m", "lepton.workloads.data", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    log = Path(document["terminationLog"]) if isinstance(document, dict) else None
    summary = PreparationSummary.model_validate_json(log.read_text()) if log and log.is_file() else None
    return proc.returncode, proc.stderr, summary


def rows_of(out: Path, version: str) -> dict[str, list[dict[str, Any]]]:
    base = out / "versions" / version
    return {s: pq.read_table(base / s).to_pylist() for s in ("train", "validation", "test") if (base / s).is_dir()}


def tickets_in(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(TICKETS, directory / "tickets.jsonl"))


def generated(directory: Path, files: int, rows: int) -> Path:
    """Files of distinct rows, except that each file repeats the last 50 of the one before (for dedupe
    across shards)."""
    directory.mkdir(parents=True)
    for f in range(files):
        with (directory / f"part-{f:02d}.jsonl").open("w") as fh:
            for i in range(rows):
                g, r = (f - 1, rows - 1 - i) if f and i < 50 else (f, i)
                words = " ".join(f"w{(r * 7 + j * 13 + g) % 5000}" for j in range(30))
                fh.write(json.dumps({"text": f"file {g} row {r} {words}", "label": r % 3}) + "\n")
    return directory


def tokenizer_dir(directory: Path, unknown: str = "[UNK]") -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for line in TICKETS.read_text().splitlines() for w in json.loads(line)["text"].split()})
    tok = Tokenizer(models.WordLevel({unknown: 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token=unknown))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


# --- the version is the content ------------------------------------------------------------------
def _same(tmp: Path, base: dict[str, Any]) -> dict[str, Any]:
    return base


def _elsewhere(tmp: Path, base: dict[str, Any]) -> dict[str, Any]:
    return base | {"sources": [{"path": str(tickets_in(tmp / "copy" / "in").parent)}]}


def _settings(tmp: Path, base: dict[str, Any]) -> dict[str, Any]:
    return base | {"retain": 7, "memoryLimitBytes": 1 << 30, "metricsPort": 9999, "dataset": "other/name",
                   "terminationLog": str(tmp / "elsewhere.log")}  # fmt: skip


def _byte(tmp: Path, base: dict[str, Any]) -> dict[str, Any]:
    changed = tickets_in(tmp / "changed")
    changed.write_text(changed.read_text().replace("Ticket 0:", "Ticket 0;", 1))
    return base | {"sources": [{"path": str(changed.parent)}]}


def _step(tmp: Path, base: dict[str, Any]) -> dict[str, Any]:
    return base | {"pipeline": [{"normalize": {"case": "lower"}}, {"dedupe": {}}]}


def _seed(tmp: Path, base: dict[str, Any]) -> dict[str, Any]:
    return base | {"split": SPLIT | {"seed": 7}}


def _max_length(tmp: Path, base: dict[str, Any]) -> dict[str, Any]:
    return base | {"maxLength": 16}


def _tokenizer(tmp: Path, base: dict[str, Any]) -> dict[str, Any]:
    return base | {"tokenizerPath": str(tokenizer_dir(tmp / "tok2", unknown="<unk>"))}


@pytest.mark.parametrize(
    ("change", "tokenize", "same"),
    [
        (_same, False, True),
        (_elsewhere, False, True),  # a copy of the files in another directory
        (_settings, False, True),  # retain, memory, port, names: not the content
        (_max_length, False, True),  # maxLength means nothing without a tokenizer
        (_byte, False, False),
        (_step, False, False),
        (_seed, False, False),
        (_max_length, True, False),
        (_tokenizer, True, False),  # another tokenizer.json
    ],
)
def test_the_version_is_the_inputs_and_the_spec(
    tmp_path: Path, change: Callable[[Path, dict[str, Any]], dict[str, Any]], tokenize: bool, same: bool
) -> None:
    extra = {"tokenizerPath": str(tokenizer_dir(tmp_path / "tok"))} if tokenize else {}
    base = doc(tmp_path / "a" / "out", tickets_in(tmp_path / "a" / "in").parent, **extra)
    first = prepare(DataConfig.model_validate(base))
    other = change(tmp_path, base) | {"outputDir": str(tmp_path / "b" / "out")}  # always another output dir
    second = prepare(DataConfig.model_validate(other))
    assert (first.version == second.version) is same
    assert not first.reused and not second.reused
    assert first.version and re.fullmatch(r"[0-9a-f]{16}", first.version)
    if same:  # the same bytes, too
        assert rows_of(tmp_path / "a" / "out", first.version) == rows_of(tmp_path / "b" / "out", first.version)


def test_a_second_run_reuses_the_version_and_recomputes_nothing(tmp_path: Path) -> None:
    source = tickets_in(tmp_path / "in").parent
    document = doc(tmp_path / "out", source)
    code, err, first = run(document, tmp_path)
    assert code == 0 and first and first.version and not first.reused, err
    assert f"[data] published {first.version} (" in err and first.rows
    assert f"{first.rows.train}/{first.rows.validation}/{first.rows.test}" in err
    files = sorted((tmp_path / "out" / "versions").rglob("*"))
    mtimes = [p.stat().st_mtime_ns for p in files]
    code, err, again = run(document, tmp_path)
    assert code == 0 and again and again.reused and again.version == first.version, err
    assert f"{first.version} already published, nothing recomputed" in err and "shard" not in err
    assert again.rows == first.rows and again.steps == first.steps and again.bytes == first.bytes
    assert sorted((tmp_path / "out" / "versions").rglob("*")) == files
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert (tmp_path / "out" / "current").read_text().strip() == first.version


# --- SIGKILL and resume -----------------------------------------------------------------------------
def test_sigkill_after_a_shard_leaves_nothing_visible_and_the_rerun_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Something published before, so `current` exists and must not move.
    code, err, old = run(doc(out, tickets_in(tmp_path / "old").parent), tmp_path)
    assert code == 0 and old and old.version, err
    source = generated(tmp_path / "in", files=6, rows=6000)
    pipeline = [{"normalize": {}}, {"dedupe": {}}, {"dedupe": {"method": "minhash"}}]
    document = doc(out, source, pipeline=pipeline, memoryLimitBytes=32 << 20)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(document))
    proc = subprocess.Popen([sys.executable, "-m", "lepton.workloads.data", "--config", str(path)], cwd=ROOT,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((out / ".staging").glob("*/shards/shard-00000.parquet")):
        assert proc.poll() is None, "finished before the first shard was seen: make the input bigger"
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert [p.name for p in (out / "versions").iterdir()] == [old.version]
    assert (out / "current").read_text().strip() == old.version
    assert json.loads((out / "versions.json").read_text()) == [old.version]
    finished = len(list((out / ".staging").glob("*/shards/shard-*.parquet")))
    assert 1 <= finished < 6, "killed too late to test a resume"

    code, err, resumed = run(document, tmp_path)
    assert code == 0 and resumed and resumed.version, err
    skipped = int(re.search(r"resuming after (\d+) finished shard", err).group(1))  # type: ignore[union-attr]
    assert skipped >= finished and "shard 1/6 done" not in err and "shard 6/6 done" in err
    code, err, whole = run(doc(tmp_path / "fresh", source, pipeline=pipeline, memoryLimitBytes=32 << 20), tmp_path)
    assert code == 0 and whole, err
    assert resumed.version == whole.version and resumed.rows == whole.rows and resumed.steps == whole.steps
    assert resumed.steps[1].details["removed"] == 250  # dedupe's state crossed the restart: 50 per later file
    assert rows_of(out, resumed.version) == rows_of(tmp_path / "fresh", whole.version)
    assert (out / "current").read_text().strip() == resumed.version
    assert resumed.versions == [resumed.version, old.version]
    assert not list((out / ".staging").iterdir())


# --- failures ----------------------------------------------------------------------------------
def _malformed(tmp: Path) -> dict[str, Any]:
    (tmp / "in" / "sub").mkdir(parents=True)
    shutil.copy(TICKETS, tmp / "in" / "a.jsonl")
    (tmp / "in" / "sub" / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n{"text": oops}\n')
    return doc(tmp / "out", tmp / "in")


def _filtered_out(tmp: Path) -> dict[str, Any]:
    return doc(tmp / "out", tickets_in(tmp / "in").parent,
               pipeline=[{"filter": {"length": True, "operator": "Gt", "value": 100000}}])  # fmt: skip


def _no_rows(tmp: Path) -> dict[str, Any]:
    (tmp / "in").mkdir()
    (tmp / "in" / "empty.jsonl").write_text("")
    return doc(tmp / "out", tmp / "in")


def _under_a_file(tmp: Path) -> dict[str, Any]:
    (tmp / "file").write_text("not a directory")
    return doc(tmp / "file" / "out", tickets_in(tmp / "in").parent) | {"terminationLog": str(tmp / "summary")}


def _no_key(tmp: Path) -> dict[str, Any]:
    return doc(tmp / "out", tickets_in(tmp / "in").parent, split=SPLIT | {"key": "ticket_id"})


@pytest.mark.parametrize(
    ("case", "reason", "where"),
    [
        (_malformed, Reason.BAD_FORMAT, "sub/b.jsonl:3: "),
        (_filtered_out, Reason.EMPTY_RESULT, None),
        (_no_rows, Reason.EMPTY_RESULT, None),
        (_under_a_file, Reason.OUTPUT_UNWRITABLE, None),
        (_no_key, Reason.MISSING_COLUMN, None),
    ],
)
def test_a_failure_exits_3_with_the_reason_in_the_summary(
    tmp_path: Path, case: Callable[[Path], dict[str, Any]], reason: str, where: str | None
) -> None:
    document = case(tmp_path)
    code, err, summary = run(document, tmp_path)
    assert code == 3, err
    assert summary is not None and summary.error is not None and summary.version is None
    assert summary.error.reason == reason
    lines = [line for line in err.splitlines() if line.startswith("[data] error: ")]
    assert len(lines) == 1 and "Traceback" not in err
    if where:
        assert summary.error.file == "sub/b.jsonl" and summary.error.line == 3
        assert lines[0].startswith(f"[data] error: {where}")
    out = Path(document["outputDir"])
    assert not (out / "current").exists()
    assert not (out / "versions").is_dir() or not list((out / "versions").iterdir())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "invalid data configuration"),
        ('{"dataset": "x", "outputDir": "/tmp/x"}', "sources"),
        ('{"dataset": "x", "sources": [{"path": "a", "url": "http://b"}], "outputDir": "/tmp/x"}', "exactly one"),
    ],
)
def test_an_invalid_configuration_exits_2_with_one_line(tmp_path: Path, text: str, words: str) -> None:
    code, err, _ = run(text, tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert err.startswith("[data] error: ")


def test_an_unexpected_failure_exits_1_with_internal_error(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    document = doc(tmp_path / "out", tickets_in(tmp_path / "in").parent, tokenizerPath=str(tmp_path / "tok"))
    code, err, summary = run(document, tmp_path)
    assert code == 1 and "Traceback" in err
    assert summary is not None and summary.error is not None and summary.error.reason == "InternalError"


# --- publication ---------------------------------------------------------------------------------
def test_retention_keeps_the_newest_versions(tmp_path: Path) -> None:
    out, versions = tmp_path / "out", list[str]()
    for n in range(3):
        source = tickets_in(tmp_path / f"in{n}")
        source.write_text(source.read_text().replace("Ticket 1:", f"Ticket {n}x:", 1))
        versions.append(str(prepare(config(out, source.parent, retain=2)).version))
    assert len(set(versions)) == 3
    kept = sorted(p.name for p in (out / "versions").iterdir())
    assert kept == sorted(versions[1:])
    assert json.loads((out / "versions.json").read_text()) == [versions[2], versions[1]]
    assert (out / "current").read_text().strip() == versions[2]
    assert not list((out / ".staging").iterdir())  # trash and staging gone
    # The older kept version again: reused, first now; the newest stays, the count holds.
    again = prepare(config(out, tmp_path / "in1", retain=2))
    assert again.reused and again.versions == [versions[1], versions[2]]
    assert (out / "current").read_text().strip() == versions[1]
    # A version dropped before is prepared anew, and pushes the oldest out.
    back = prepare(config(out, tmp_path / "in0", retain=2))
    assert not back.reused and back.versions == [versions[0], versions[1]]
    assert sorted(p.name for p in (out / "versions").iterdir()) == sorted(versions[:2])


def test_the_manifest_describes_the_version(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipeline: list[dict[str, Any]] = [{"normalize": {}}, {"dedupe": {}}, {"maskPii": {}}]
    summary = prepare(config(out, tickets_in(tmp_path / "in").parent, pipeline=pipeline, maxLength=12,
                             decontaminate={}, augment={"method": "random-swap", "copies": 2},
                             tokenizerPath=str(tokenizer_dir(tmp_path / "tok"))))  # fmt: skip
    assert summary.version and summary.rows
    base = out / "versions" / summary.version
    manifest = json.loads((base / "manifest.json").read_text())
    assert manifest["version"] == summary.version and manifest["digest"].startswith(f"sha256:{summary.version}")
    assert len(manifest["digest"]) == len("sha256:") + 64 and manifest["formatVersion"] == DATA_FORMAT_VERSION
    assert manifest["inputs"] == [
        {"source": 0, "name": "tickets.jsonl", "size": TICKETS.stat().st_size, "format": "jsonl",
         "digest": f"sha256:{hashlib.sha256(TICKETS.read_bytes()).hexdigest()}"}
    ]  # fmt: skip
    assert manifest["schema"] == {"text": "string", "label": "int64", "input_ids": "list<item: int32>"}
    assert manifest["spec"]["maxLength"] == 12 and manifest["spec"]["augment"]["copies"] == 2
    assert [next(iter(step)) for step in manifest["spec"]["pipeline"]] == ["normalize", "dedupe", "maskPii"]
    rows = {s: pq.read_metadata(p).num_rows for s in ("train", "validation", "test") for p in (base / s).glob("*")}
    assert manifest["rows"] == rows == summary.rows.to_wire()
    files = [p for s in manifest["files"].values() for p in s]
    assert manifest["bytes"] == sum((base / f).stat().st_size for f in files) == summary.bytes
    assert all(re.fullmatch(r"(train|validation|test)/part-\d{5}\.parquet", f) for f in files)
    stats = manifest["statistics"]
    assert stats["label"]["nulls"] == 0 and 0 <= stats["label"]["min"] <= stats["label"]["max"]
    assert 0 < stats["text"]["minLength"] <= stats["text"]["meanLength"] <= stats["text"]["maxLength"]
    steps = [StepCount.model_validate(s) for s in manifest["steps"]]
    assert [s.step for s in steps] == ["0:normalize", "1:dedupe", "2:maskPii", "split", "decontaminate", "augment",
                                       "tokenize"]  # fmt: skip
    assert steps == summary.steps
    split, decon, aug, tok = steps[3:]
    assert split.rows_in == steps[2].rows_out == sum(split.details.values())
    assert decon.rows_in == split.details["train"] and decon.rows_out == decon.rows_in - decon.details["removed"]
    assert aug.rows_in == decon.rows_out and aug.rows_out == 3 * aug.rows_in == summary.rows.train
    assert tok.rows_out == sum(rows.values()) and tok.details["tokens"] > 0
    lengths = [len(ids) for ids in pq.read_table(base / "train").column("input_ids").to_pylist()]
    assert max(lengths) <= 12 and min(lengths) > 0


@pytest.mark.parametrize(
    ("steps", "details", "kept_steps"),
    [
        (3, 3, 3),  # small: everything stays
        (40, 20, 40),  # details too long: they go first, the steps stay
        (200, 0, 0),  # too many steps even bare: they go
    ],
)
def test_the_summary_fits_a_termination_message(steps: int, details: int, kept_steps: int) -> None:
    counts = [StepCount(step=f"{i}:maskPii", rows_in=10**9, rows_out=10**9,
                        details={f"entity-{k}": 10**9 for k in range(20)}) for i in range(steps)]  # fmt: skip
    summary = fit(PreparationSummary(version="0" * 16, steps=counts, columns=["text"], versions=["0" * 16]))
    assert len(summary.model_dump_json(by_alias=True, exclude_none=True).encode()) <= SUMMARY_LIMIT
    assert len(summary.steps) == kept_steps
    assert sum(1 for s in summary.steps if s.details) == (details if details == steps else 0)


# --- metrics and /progress ---------------------------------------------------------------------------
def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_metrics_and_progress(tmp_path: Path, token: str | None) -> None:
    source = generated(tmp_path / "in", files=3, rows=200)
    total = sum(p.stat().st_size for p in source.iterdir())
    metrics, port, reports = DataMetrics(), free_port(), list[ProgressReport]()
    metrics.serve(port, token=token)
    try:
        prepare(config(tmp_path / "out", source), progress=reports.append, metrics=metrics)
        auth = bearer(token) if token else {}
        code, body = _get(f"http://127.0.0.1:{port}/progress", auth)
        assert code == 200 and ProgressReport.parse(json.loads(body)) == ProgressReport(
            step=total, total_steps=total, start_step=0, eta_seconds=0
        )
        if token:
            assert _get(f"http://127.0.0.1:{port}/progress")[0] == 401
        code, text = _get(f"http://127.0.0.1:{port}/metrics")  # open: Prometheus holds no token
        assert code == 200
        assert 'lepton_data_shards_total{outcome="done"} 3.0' in text
        assert "lepton_data_input_rows_total 600.0" in text and f"lepton_data_input_bytes_total {total}.0" in text
        assert 'lepton_data_step_rows_out_total{step="1:dedupe"} 500.0' in text
        assert "lepton_data_version_reused 0.0" in text and "lepton_data_preparation_seconds" in text
    finally:
        metrics.close()
    steps = [r.step or 0 for r in reports]
    assert steps == sorted(steps) and steps[-1] == total and all(r.total_steps == total for r in reports)
    # The same again: reused, and the gauge says so.
    again = DataMetrics()
    assert prepare(config(tmp_path / "out", source), metrics=again).reused
    assert again.registry.get_sample_value("lepton_data_version_reused") == 1


def test_prepare_raises_data_error_for_an_empty_result(tmp_path: Path) -> None:
    cfg = config(tmp_path / "out", tickets_in(tmp_path / "in").parent,
                 pipeline=[{"filter": {"column": "label", "operator": "Gt", "value": 5}}])  # fmt: skip
    with pytest.raises(DataError) as info:
        prepare(cfg)
    assert info.value.reason == Reason.EMPTY_RESULT and "no rows left" in info.value.message


class _StopError(Exception):
    pass


@pytest.mark.parametrize("finished", [1, 3])
def test_an_interrupted_run_resumes_from_its_finished_shards(tmp_path: Path, finished: int) -> None:
    source = generated(tmp_path / "in", files=4, rows=300)
    sizes = [p.stat().st_size for p in sorted(source.iterdir())]

    def stop_after_shards(report: ProgressReport) -> None:  # the first report at a file's end: it is done
        if report.step == sum(sizes[:finished]):
            raise _StopError

    cfg = config(tmp_path / "out", source, pipeline=[{"dedupe": {}}], decontaminate={})
    with pytest.raises(_StopError):
        prepare(cfg, progress=stop_after_shards)
    assert not list((tmp_path / "out" / "versions").iterdir()) and not (tmp_path / "out" / "current").exists()
    metrics = DataMetrics()
    resumed = prepare(cfg, metrics=metrics)
    assert metrics.registry.get_sample_value("lepton_data_shards_total", {"outcome": "skipped"}) == finished
    assert metrics.registry.get_sample_value("lepton_data_shards_total", {"outcome": "done"}) == 4 - finished
    whole = prepare(config(tmp_path / "fresh", source, pipeline=[{"dedupe": {}}], decontaminate={}))
    assert resumed.version == whole.version and resumed.steps == whole.steps
    assert resumed.steps[0].details["removed"] == 150
    assert resumed.version
    assert rows_of(tmp_path / "out", resumed.version) == rows_of(tmp_path / "fresh", resumed.version)


@pytest.mark.parametrize(("part_bytes", "parts"), [(1 << 30, 1), (1, 5)])
def test_parts_roll_over_and_appear_whole(tmp_path: Path, part_bytes: int, parts: int) -> None:
    writer = ParquetParts(tmp_path / "train", part_bytes=part_bytes)
    for n in range(5):
        writer.write(pa.table({"text": [f"row {n}.{i}" for i in range(100)], "label": [None] * 100}), "train")
    files = writer.close()
    assert [p.name for p in files] == [f"part-{k:05d}.parquet" for k in range(parts)]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [p.name for p in files]  # no temporary left
    table = pq.read_table(tmp_path / "train")
    assert table.num_rows == writer.rows == 500 and table.schema.field("label").type == pa.string()
    assert writer.bytes == sum(p.stat().st_size for p in files)
