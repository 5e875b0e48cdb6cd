"""A custom-mode program (examples/custom/train.py, plain PyTorch DDP + lepton.sdk) under a real
2-process torchrun (gloo on CPU) with the environment a TrainingJob gives it: the operator's reads
of /progress see it advance, the termination log holds its final metrics, and a run stopped by
SIGTERM resumes from its checkpoint to the very weights of a run that was never stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lepton.api.contract import ProgressReport, TrainingSummary
from lepton.api.tokens import bearer
from lepton.sdk import env
from tests.conftest import EXAMPLES
from tests.workloads.conftest import finish, wait_for

torch = pytest.importorskip("torch")

EXAMPLE = EXAMPLES / "custom" / "train.py"
TOKEN = "5f2a" * 16
# 2 epochs of 32 steps (2,048 samples, 2 ranks x 32); slowed a little so that a poll (and a SIGTERM) finds it mid-run.
HYPERPARAMETERS = {"epochs": 2, "batch_size": 32, "lr": 0.01, "seed": 3, "eval_every": 8, "report_every": 2,
                   "step_sleep": 0.05}  # fmt: skip
TOTAL = 64


def _port_pair() -> int:
    """A port p with p + 1 free too: rank r serves on LEPTON_METRICS_PORT + LOCAL_RANK."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


@dataclass
class Run:
    dir: Path
    port: int = field(default_factory=_port_pair)

    @property
    def log(self) -> str:
        return (self.dir / "torchrun.log").read_text()

    def summary(self) -> TrainingSummary:
        return TrainingSummary.model_validate_json((self.dir / "termination-log").read_text())

    def start(self) -> subprocess.Popen[bytes]:
        """torchrun as a TrainingJob's pod runs it, with the LEPTON_* environment the operator sets."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lepton = {env.JOB: "test/custom", env.CHECKPOINT_DIR: str(self.dir / "ckpt"), env.CHECKPOINT_EVERY_STEPS: "8",
                  env.CHECKPOINT_KEEP: "2", env.RESUME: "latest", env.OUTPUT_DIR: str(self.dir / "out"),
                  env.HYPERPARAMETERS: json.dumps(HYPERPARAMETERS), env.METRICS_PORT: str(self.port),
                  env.METRICS_HOST: "127.0.0.1", env.PROGRESS_TOKEN: TOKEN,
                  env.TERMINATION_LOG: str(self.dir / "termination-log")}  # fmt: skip
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
               "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "--max-restarts=0", str(EXAMPLE)]  # fmt: skip
        environ = {**os.environ, "OMP_NUM_THREADS": "1", **lepton}
        return subprocess.Popen(cmd, cwd=self.dir, env=environ, stdout=(self.dir / "torchrun.log").open("ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def get(self, path: str, token: str | None = TOKEN, rank: int = 0) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port + rank}{path}",
                                         headers=bearer(token) if token else {})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=2) as rsp:
                return int(rsp.status), rsp.read()
        except urllib.error.HTTPError as err:
            return err.code, b""
        except OSError:
            return 0, b""  # not serving (yet, or any more)

    def run_polling(self) -> tuple[int, list[dict[str, Any]]]:
        """Run to the end, reading /progress as the operator does (with the job's token) meanwhile."""
        proc, polls = self.start(), list[dict[str, Any]]()
        while proc.poll() is None:
            code, body = self.get("/progress")
            if code == 200:
                polls.append(json.loads(body))
            time.sleep(0.1)
        return finish(proc, self.dir, timeout=180), polls


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, int, list[dict[str, Any]]]:
    run = Run(tmp_path_factory.mktemp("sdk") / "whole")
    code, polls = run.run_polling()
    return run, code, polls


def test_progress_advances_and_the_termination_log_holds_the_final_metrics(
    whole: tuple[Run, int, list[dict[str, Any]]],
) -> None:
    run, code, polls = whole
    assert code == 0, run.log[-3000:]
    reports = [ProgressReport.parse(doc) for doc in polls if doc.get("step")]
    assert len({r.step for r in reports}) >= 3, f"too few reads saw progress: {polls}"
    steps = [r.step or 0 for r in reports]
    assert steps == sorted(steps) and steps[-1] <= TOTAL and all(r.total_steps == TOTAL for r in reports)
    assert all(r.start_step == 0 and r.loss is not None and r.samples_per_second for r in reports)
    evaluations = [r.metrics_at() for r in reports if r.evaluations]
    assert evaluations and all(set(m) == {"eval_loss", "accuracy"} for e in evaluations for m in e.values())
    assert all(sorted(e) == list(range(8, max(e) + 1, 8)) for e in evaluations)  # every evaluation so far
    summary = run.summary()
    model = json.loads((run.dir / "out" / "model.json").read_text())
    assert summary.step == TOTAL and summary.model == str(run.dir / "out")
    assert summary.metrics == model["metrics"] and set(summary.metrics) == {"eval_loss", "accuracy"}
    assert summary.metrics["accuracy"] > 0.7, summary  # it learned
    assert sorted(p.name for p in (run.dir / "ckpt").iterdir()) == ["step-00000056", "step-00000064"]  # keep 2


def test_a_stopped_run_resumes_to_the_same_weights(
    whole: tuple[Run, int, list[dict[str, Any]]], tmp_path: Path
) -> None:
    reference, code, _ = whole
    assert code == 0, reference.log[-3000:]
    broken = Run(tmp_path / "broken")
    proc = broken.start()
    wait_for(lambda: (broken.dir / "ckpt" / "step-00000008").is_dir() or proc.poll() is not None, 120,
             "the first checkpoint")  # fmt: skip
    assert broken.get("/progress", token=None)[0] == 401 and broken.get("/metrics", token=None, rank=1)[0] == 200
    os.killpg(proc.pid, signal.SIGTERM)  # as Kubernetes does when it deletes the pod (or a study prunes)
    assert finish(proc, broken.dir, timeout=120) != 0
    stopped = re.search(r"stopped on SIGTERM at step (\d+) after a checkpoint", broken.log)
    assert stopped is not None, broken.log[-3000:]
    at = int(stopped.group(1))
    assert 8 <= at < TOTAL and (broken.dir / "ckpt" / f"step-{at:08d}" / "COMPLETE").is_file()
    assert not (broken.dir / "termination-log").exists(), "a stopped run has no final metrics"

    broken.port = _port_pair()
    code, polls = broken.run_polling()
    assert code == 0, broken.log[-3000:]
    assert f"resumed from step-{at:08d} at step {at}" in broken.log
    first = next(ProgressReport.parse(doc) for doc in polls if doc.get("step"))
    assert first.start_step == at and (first.step or 0) >= at > 0  # its first report: where it resumed
    summary, whole_summary = broken.summary(), reference.summary()
    assert summary.step == whole_summary.step == TOTAL
    for name, value in whole_summary.metrics.items():
        assert summary.metrics[name] == pytest.approx(value, rel=1e-6), name
    weights = torch.load(broken.dir / "out" / "model.pt", weights_only=True)
    expected = torch.load(reference.dir / "out" / "model.pt", weights_only=True)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected), "the resumed run ends with other weights"
