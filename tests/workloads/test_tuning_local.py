"""`leptonctl run -f examples/tuningstudy.yaml`: a real study on this machine, with real training.

The shipped example runs as a user runs it (after preparing its Dataset): 8 TPE trials of the tiny
GPT-2, 2 at a time, each a torchrun TrainingJob run, the Optuna study in a real journal file, the
median pruner stopping trials that fall behind. Then the same study interrupted (SIGTERM to leptonctl,
as Ctrl-C) and run again continues from its journal with no trial lost or run twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.conftest import EXAMPLES

MAX_STEPS = 30  # the example template's maxSteps


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A user's checkout: the examples, and the Dataset the study trains on, prepared."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    done = leptonctl(tmp_path, "run", "-f", "examples/dataset.yaml")
    assert done.returncode == 0, done.stderr
    return tmp_path


def leptonctl(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lepton.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def stored(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    path = workdir / ".lepton/runs/tiny-gpt2-lr-search.study/journal.log"
    storage = JournalStorage(JournalFileBackend(str(path)))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()


def test_the_example_study_tunes_real_training_and_prunes(workdir: Path) -> None:
    result = leptonctl(workdir, "run", "-f", "examples/tuningstudy.yaml")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    trials = stored(workdir)
    assert sorted(t.number for t in trials) == list(range(8))  # every trial once
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    values = [t.value for t in complete if t.value is not None]
    assert min(values) < max(values)  # the best trial is better than the worst
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.last_step is not None and t.last_step < MAX_STEPS for t in pruned), out
    best = min(complete, key=lambda t: t.value or 0.0)
    model = workdir / f".lepton/models/tiny-gpt2-lr-search/tiny-gpt2-lr-search-{best.number}"
    assert (model / "config.json").exists() and f"best: trial {best.number} = " in out
    assert "study Succeeded: 8/8 trials done" in out


def test_an_interrupted_study_continues_without_losing_or_repeating_a_trial(workdir: Path) -> None:
    cmd = [sys.executable, "-m", "lepton.cli.main", "run", "-f", "examples/tuningstudy.yaml"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # stop as the third trial starts: two finished or running, one just asked
        if ("trial   2" in line and "running" in line) or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)  # what Ctrl-C does
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest
    assert "run the same command again to continue it" in rest
    before = stored(workdir)
    running = sorted(t.number for t in before if t.state == TrialState.RUNNING)
    assert running, "the interruption left no trial running: nothing to continue"
    again = leptonctl(workdir, "run", "-f", "examples/tuningstudy.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    after = stored(workdir)
    assert sorted(t.number for t in after) == list(range(8))  # none lost, none twice
    assert all(t.state != TrialState.RUNNING for t in after)
    for number in running:  # the trials cut short ran to an end in the second run, under their numbers
        params = next(t.params for t in before if t.number == number)
        assert next(t.params for t in after if t.number == number) == params
