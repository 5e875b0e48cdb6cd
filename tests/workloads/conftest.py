"""The workloads tier: real torchrun processes (gloo, CPU) on a tiny model built here."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES

CORPUS = EXAMPLES / "data" / "tickets.jsonl"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lepton.workloads.trainer.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", CORPUS)


def trainer_config(model: Path, run_dir: Path, **hyper: Any) -> dict[str, Any]:
    hp = {"learningRate": 0.003, "batchSize": 4, "maxSteps": 40, "warmupSteps": 2, "maxSeqLength": 48,
          "seed": 1, "lrScheduler": "linear"} | hyper  # fmt: skip
    return {
        "job": "test/tiny",
        "task": "causal-lm",
        "modelPath": str(model),
        "data": {"path": str(CORPUS), "validationFraction": 0.1},
        "hyperparameters": hp,
        "backend": "gloo",
        "checkpointDir": str(run_dir / "ckpt"),
        "checkpointEverySteps": 5,
        "outputDir": str(run_dir / "out"),
        "metricsPort": 0,
    }


def launch(
    torchrun_args: list[str], config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A real torchrun agent running the trainer with `config`, in a session of its own, logging to `log`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args,
           "-m", "lepton.workloads.trainer", "--config", str(config)]  # fmt: skip
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=environ, start_new_session=True)


def torchrun(config: dict[str, Any], run_dir: Path, procs: int = 2) -> subprocess.Popen[bytes]:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    path.write_text(json.dumps(config))
    args = ["--nnodes=1", f"--nproc-per-node={procs}", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0",
            "--max-restarts=0"]  # fmt: skip
    return launch(args, path, run_dir / "torchrun.log")


def finish(proc: subprocess.Popen[bytes], run_dir: Path, timeout: float = 300, log: str = "torchrun.log") -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        lose_node(proc)
        raise AssertionError((run_dir / log).read_text()[-4000:]) from None


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo.extend(children.get(out[-1], []))
    return out


def lose_node(proc: subprocess.Popen[bytes]) -> None:
    """What losing a node does to a pod: every process of it dies at once, nothing is told."""
    for pid in tree(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "out" / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
