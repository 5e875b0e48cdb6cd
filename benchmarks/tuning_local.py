"""P4 (a) and (b) on this machine: a TuningStudy run by `leptonctl run -f` (the local backend: the tuner
process on a journal, each trial a torchrun TrainingJob run) against a plain Optuna loop
(benchmarks/tuning_baseline.py), and the same study with and without a pruner.

Every run is a fresh process tree in a fresh directory (runs, journal, models): nothing is resumed or
skipped as already trained. The study trains the tiny GPT-2 (examples/models/tiny-gpt2, initialised
from its config) on examples/data/tickets.jsonl on CPU (gloo, one process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "models" / "tiny-gpt2"
DATA = ROOT / "examples" / "data" / "tickets.jsonl"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}  # fmt: skip


@dataclass(frozen=True)
class StudyShape:
    trials: int
    max_steps: int
    eval_every: int
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    sampler: str = "tpe"
    seed: int = 7
    batch_size: int = 8
    seq_length: int = 64

    def describe(self) -> str:
        pruner = ", ".join(f"{k} {v}" for k, v in self.pruner.items() if k != "type")
        return (f"{self.sampler} (seed {self.seed}), {self.trials} trials one at a time, {self.max_steps} steps each "
                f"(batch {self.batch_size}, sequence {self.seq_length}), an evaluation every {self.eval_every} steps, "
                f"pruner {self.pruner['type']}{f' ({pruner})' if pruner else ''}")  # fmt: skip


def manifest(name: str, shape: StudyShape, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": {
            "objective": {"metric": "eval_loss", "direction": "minimize"},
            "searchSpace": [
                {"name": "learningRate", "type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                {"name": "warmupSteps", "type": "int", "low": 0, "high": 20, "step": 5},
                {"name": "weightDecay", "type": "float", "low": 0.0, "high": 0.1},
            ],
            "sampler": {"type": shape.sampler, "seed": shape.seed},
            "pruner": shape.pruner,
            "maxTrials": shape.trials,
            "parallelism": 1,
            "trialTemplate": {
                "trainingJob": {
                    "task": "causal-lm",
                    "model": {"uri": str(MODEL), "init": "config"},
                    "data": {"uri": str(DATA), "validationFraction": 0.1},
                    "hyperparameters": {
                        "maxSteps": shape.max_steps,
                        "evalEverySteps": shape.eval_every,
                        "batchSize": shape.batch_size,
                        "maxSeqLength": shape.seq_length,
                    },
                    "nodes": 1,
                    "gpusPerNode": 0,
                    "backend": "gloo",
                    "checkpoint": {"everySteps": 100000},  # none but the last (and a pruned trial's)
                    "output": {"uri": str(out / "models")},
                }
            },
        },
    }


@dataclass
class Trial:
    number: int
    parameters: dict[str, Any]
    value: float | None
    state: str
    seconds: float
    last_step: int | None = None


@dataclass
class StudyRun:
    side: str
    wall: float  # the whole command, process start to exit
    trials: list[Trial]

    @property
    def best(self) -> float:
        return min(t.value for t in self.trials if t.value is not None and t.state == "complete")

    @property
    def trial_seconds(self) -> float:
        return sum(t.seconds for t in self.trials)

    @property
    def per_hour(self) -> float:
        return len(self.trials) * 3600 / self.wall


def _timed(argv: list[str], cwd: Path, what: str) -> float:
    log = cwd / f"{what}.log"
    started = time.perf_counter()
    with log.open("wb") as fh:
        code = subprocess.run(argv, cwd=cwd, env=ENV, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{what} failed ({code}):\n{log.read_text()[-3000:]}")
    return wall


def journal_trials(journal: Path) -> list[Trial]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return [
        Trial(
            t.number,
            dict(t.params),
            t.value,
            t.state.name.lower(),
            t.duration.total_seconds() if t.duration else 0.0,
            t.last_step,
        )
        for t in study.get_trials(deepcopy=False)
    ]


def run_lepton(name: str, shape: StudyShape) -> StudyRun:
    """`leptonctl run -f` on the study, in a fresh directory; trials as its journal holds them."""
    with tempfile.TemporaryDirectory(prefix="p4-lepton-") as tmp:
        work = Path(tmp)
        path = work / "study.yaml"
        path.write_text(yaml.safe_dump(manifest(name, shape, work)))
        wall = _timed([sys.executable, "-m", "lepton.cli.main", "run", "-f", str(path), "--runs-dir",
                       str(work / "runs")], work, "leptonctl")  # fmt: skip
        trials = journal_trials(work / "runs" / f"{name}.study" / "journal.log")
    return StudyRun("lepton", wall, trials)


def run_baseline(name: str, shape: StudyShape, mode: str) -> StudyRun:
    """benchmarks.tuning_baseline in a process of its own, as a user runs such a script."""
    with tempfile.TemporaryDirectory(prefix=f"p4-{mode}-") as tmp:
        work = Path(tmp)
        path = work / "study.yaml"
        path.write_text(yaml.safe_dump(manifest(name, shape, work)))
        result = work / "result.json"
        wall = _timed([sys.executable, "-m", "benchmarks.tuning_baseline", "--manifest", str(path), "--runs-dir",
                       str(work / "runs"), "--mode", mode, "--result", str(result)], work, mode)  # fmt: skip
        trials = [Trial(**t) for t in json.loads(result.read_text())["trials"]]
    return StudyRun(mode, wall, trials)


def run_side(side: str, name: str, shape: StudyShape) -> StudyRun:
    started = time.perf_counter()
    done = run_lepton(name, shape) if side == "lepton" else run_baseline(name, shape, side)
    print(f"    {side}: {done.wall:.1f} s wall, {len(done.trials)} trials, trial seconds {done.trial_seconds:.1f}, "
          f"best {done.best:.6g} ({time.perf_counter() - started:.0f} s with set-up)", file=sys.stderr,
          flush=True)  # fmt: skip
    return done


def same_trials(a: StudyRun, b: StudyRun) -> bool:
    """Whether both asked the same parameters and got the same values (to the 6 significant digits a
    TrainingJob's status keeps of a metric), trial by trial."""

    def key(run: StudyRun) -> list[tuple[Any, ...]]:
        return [(t.number, json.dumps(t.parameters, sort_keys=True), t.state, same6(t.value))
                for t in sorted(run.trials, key=lambda t: t.number)]  # fmt: skip

    return key(a) == key(b)


def same6(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
