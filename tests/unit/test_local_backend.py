"""The local backend's generic runner (with small Python processes standing in for pods) and what the
TrainingJob backend reads of an earlier run, without torch."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton.api.contract import ProgressReport
from lepton.api.kinds import Dataset, TrainingJob
from lepton.api.validation import parse
from lepton.local import BACKENDS, LocalBackend, LocalRunError, RunOptions, run
from lepton.local.backend import LocalProcess, error_line, progress_line
from lepton.local.dataset import DatasetBackend
from lepton.local.inferenceservice import InferenceServiceBackend
from lepton.local.trainingjob import TrainingJobBackend
from lepton.local.tuningstudy import TuningStudyBackend
from tests.conftest import EXAMPLES

TORCHRUN_FAILURE = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "train.py", line 341, in run
[rank0]: UnboundLocalError: cannot access local variable 'loss_value' where it is not associated with a value
E1123 21:49:07.355000 19081 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1)
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1142, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
lepton.workloads.trainer FAILED
"""
PEER_LOST = "[rank1]: RuntimeError: [pair.cc:561] Connection closed by peer [127.0.0.1]:29374.\n"


def test_the_error_line_is_the_workloads_not_torchruns() -> None:
    assert error_line(TORCHRUN_FAILURE) == (
        "UnboundLocalError: cannot access local variable 'loss_value' where it is not associated with a value"
    )
    assert error_line("[trainer] error: 3 training rows are fewer than one step needs\n") == (
        "[trainer] error: 3 training rows are fewer than one step needs"
    )
    assert error_line("loading\nstep 3\n") is None


def test_progress_line_reads_the_typed_report() -> None:
    report = ProgressReport.parse({"step": 11, "totalSteps": 44, "loss": float("nan"), "samplesPerSecond": 250.0,
                                   "etaSeconds": 3, "odd": "x"})  # fmt: skip
    assert progress_line(report) == f"[{'#' * 7}{'.' * 23}] step 11/44  250.0 samples/s  ETA 3s"
    assert progress_line(ProgressReport.parse({"step": 50, "totalSteps": 44, "loss": 1.0})).startswith(
        f"[{'#' * 30}] step 50/44  loss 1.0000"
    )
    assert progress_line(None) == progress_line(ProgressReport.parse("garbage")) == "starting…"


def test_the_table_of_backends_by_kind() -> None:
    assert set(BACKENDS) == {"Dataset", "TrainingJob", "TuningStudy", "InferenceService"}
    assert BACKENDS["TuningStudy"] is TuningStudyBackend
    assert BACKENDS["Dataset"] is DatasetBackend
    assert BACKENDS["TrainingJob"] is TrainingJobBackend
    assert BACKENDS["InferenceService"] is InferenceServiceBackend


# --- the generic runner, with stand-in processes ------------------------------------------------------

DATASET = parse(yaml.safe_load((EXAMPLES / "dataset.yaml").read_text()))


class StandIn(LocalBackend[Dataset]):
    kind = "Dataset"

    def __init__(self, resource: Dataset, *programs: str) -> None:
        super().__init__(resource)
        self.programs = programs

    def processes(self, run_dir: Path) -> list[LocalProcess]:
        return [LocalProcess(f"p{i}", [sys.executable, "-c", code], {}, run_dir / f"p{i}.log")
                for i, code in enumerate(self.programs)]  # fmt: skip

    def succeeded(self, run_dir: Path) -> str:
        return f"succeeded in {run_dir.name}"

    def interrupted(self) -> str:
        return "interrupted: saved"


TERM_SAVES = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("saved on SIGTERM", flush=True), sys.exit(143)))
print("ready", flush=True)
time.sleep(60)
"""


def _run(backend: LocalBackend[Any], tmp_path: Path, grace: float = 30.0) -> tuple[int, list[str]]:
    said: list[str] = []
    options = RunOptions(tmp_path / "runs", said.append, poll_seconds=0.05, failure_grace_seconds=grace)
    return run(backend, options), said


def test_a_run_that_succeeds(tmp_path: Path) -> None:
    assert isinstance(DATASET, Dataset)
    code, said = _run(StandIn(DATASET, "print('hi')", "pass"), tmp_path)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert code == 0 and said[-1] == f"succeeded in {run_dir.name}"
    assert json.loads((run_dir / "dataset.json").read_text())["kind"] == "Dataset"
    assert (run_dir / "p0.log").read_text() == "hi\n"


def test_what_cannot_start_leaves_no_run_directory(tmp_path: Path) -> None:
    assert isinstance(DATASET, Dataset)
    with pytest.raises(LocalRunError, match="has nothing to run"):
        _run(StandIn(DATASET), tmp_path)
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_failure_says_the_workloads_error_then_where_the_log_is(tmp_path: Path) -> None:
    assert isinstance(DATASET, Dataset)
    # The peer that lost its connection ends first; the culprit's own error is still the one said.
    peer = f"import sys; print({PEER_LOST!r}); sys.exit(1)"
    culprit = f"import sys, time; time.sleep(0.5); print({TORCHRUN_FAILURE!r}); sys.exit(1)"
    code, said = _run(StandIn(DATASET, peer, culprit, TERM_SAVES), tmp_path, grace=1.0)
    assert code == 1
    assert said[-2] == ("failed: p1: UnboundLocalError: cannot access local variable 'loss_value' where it is "
                        "not associated with a value")  # fmt: skip
    assert said[-1].startswith("  full log: ") and "p1.log (exit code 1); every process's log is in" in said[-1]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "saved on SIGTERM" in (run_dir / "p2.log").read_text()  # the survivor was stopped after the grace


def test_ctrl_c_sends_sigterm_to_every_process_group_and_waits(tmp_path: Path) -> None:
    assert isinstance(DATASET, Dataset)
    runs = tmp_path / "runs"

    def interrupt_when_ready() -> None:
        while not [p for p in runs.glob("*/p*.log") if "ready" in p.read_text()][1:]:
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    code, said = _run(StandIn(DATASET, TERM_SAVES, TERM_SAVES), tmp_path)
    assert code == 130 and said[-2:] == ["interrupted: stopping 2 process(es) (Ctrl-C again to kill them)",
                                         "interrupted: saved"]  # fmt: skip
    assert all("saved on SIGTERM" in p.read_text() for p in runs.glob("*/p*.log"))


# --- the TrainingJob backend: an earlier run's model and checkpoints ----------------------------------


def _job(tmp_path: Path) -> TrainingJobBackend:
    doc = yaml.safe_load((EXAMPLES / "quickstart" / "trainingjob.yaml").read_text())
    doc["spec"]["output"]["uri"] = str(tmp_path / "model")
    doc["spec"]["data"] = {"uri": str(EXAMPLES / "data" / "tickets.jsonl")}
    job = parse(doc)
    assert isinstance(job, TrainingJob)
    return TrainingJobBackend(job)


def _finish(backend: TrainingJobBackend, steps: int, total: int, checkpoint: int) -> None:
    out = backend.output
    ckpt = backend.checkpoints / f"step-{checkpoint:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").touch()
    (out / "train_log.jsonl").write_text("{}\n")
    meta = {"job": backend.config.job, "steps": steps, "total_steps": total, "final_loss": 2.5,
            "hyperparameters": backend.config.hyperparameters.to_wire(), "data": backend.config.data.to_wire(),
            "source_model": backend.config.model_path}  # fmt: skip
    (out / "lepton-training.json").write_text(json.dumps(meta))


def test_a_finished_job_is_reported_not_run_again(tmp_path: Path) -> None:
    backend = _job(tmp_path)
    assert backend.finished() is None  # nothing there yet
    _finish(backend, 44, 44, 44)
    assert backend.finished() == (f"quickstart already finished: 44 of 44 steps; model in {tmp_path / 'model'} "
                                  "(final loss 2.5000). Run with --fresh to train it again.")  # fmt: skip
    code, said = _run(backend, tmp_path)
    assert code == 0 and said == [backend.finished()] and not (tmp_path / "runs").exists()


def test_a_job_whose_last_checkpoint_is_not_the_total_is_not_finished(tmp_path: Path) -> None:
    backend = _job(tmp_path)
    _finish(backend, 44, 44, 40)
    assert backend.finished() is None
    assert backend.interrupted().startswith("interrupted: checkpoint of step 40 in ")


def test_fresh_removes_checkpoints_and_metadata_but_not_the_model(tmp_path: Path) -> None:
    backend = _job(tmp_path)
    _finish(backend, 44, 44, 44)
    (backend.output / "config.json").write_text("{}")
    removed = backend.start_afresh()
    assert [Path(p).name for p in removed] == ["step-00000044", "lepton-training.json", "train_log.jsonl"]
    assert backend.finished() is None and (backend.output / "config.json").exists()
    assert backend.interrupted().startswith("interrupted before the first checkpoint")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"gpusPerNode": 8, "backend": "nccl"}, "the local backend runs on CPU"),
        ({"suspend": True}, "spec.suspend is true"),
    ],
)
def test_what_cannot_run_here_is_one_line(change: dict[str, object], message: str) -> None:
    doc = yaml.safe_load((EXAMPLES / "quickstart" / "trainingjob.yaml").read_text())
    doc["spec"] |= change
    job = parse(doc)
    assert isinstance(job, TrainingJob)
    with pytest.raises(LocalRunError, match=message):
        TrainingJobBackend(job)
