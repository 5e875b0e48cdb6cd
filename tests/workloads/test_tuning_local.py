"""`leptonctl run -f examples/tuningstudy.yaml`: a real study on this machine, with real training.

The shipped example runs as a user runs it (after preparing its Dataset): 8 TPE trials of the tiny
GPT-2, 2 at a time, each a torchrun TrainingJob run, the Optuna study in a real journal file, the
median pruner stopping trials that fall behind; run again it trains nothing, and `--fresh` starts it
over. The same study interrupted (SIGTERM to leptonctl, as Ctrl-C) and run again continues from its
journal with no trial lost or run twice. A study whose training fails, or that reaches its goal, ends
with every trial told and no process left.
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
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.conftest import EXAMPLES

MAX_STEPS = 60  # the example template's maxSteps
NAME = "tiny-gpt2-lr-search"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A user's checkout: the examples, and the Dataset the study trains on, prepared."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    done = leptonctl(tmp_path, "run", "-f", "examples/dataset.yaml")
    assert done.returncode == 0, done.stderr
    return tmp_path


def leptonctl(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-m", "lepton.cli.main", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # as Ctrl-C: it stops its trials and its tuner
        out, err = proc.communicate(timeout=120)
        raise AssertionError(f"leptonctl {' '.join(args)} still ran after {timeout:.0f}s:\n{out}{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stored(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    path = workdir / f".lepton/runs/{NAME}.study/journal.log"
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
    model = workdir / f".lepton/models/{NAME}/{NAME}-{best.number}"
    assert (model / "config.json").exists() and f"best: trial {best.number} = " in out
    assert "study Succeeded: 8/8 trials done" in out
    assert not left_running(workdir)

    before = set(run_dirs(workdir))  # a finished study, run again: it says so and trains nothing
    again = leptonctl(workdir, "run", "-f", "examples/tuningstudy.yaml")
    assert again.returncode == 0 and f"best: trial {best.number} = " in again.stdout + again.stderr
    (rerun,) = set(run_dirs(workdir)) - before
    assert not [d for d in rerun.iterdir() if d.is_dir()], "a trial ran again"
    assert sorted(t.number for t in stored(workdir)) == list(range(8))

    one = yaml.safe_load((workdir / "examples/tuningstudy.yaml").read_text())  # --fresh: a new study
    one["spec"]["maxTrials"] = one["spec"]["parallelism"] = 1
    (workdir / "one.yaml").write_text(yaml.safe_dump(one))
    before = set(run_dirs(workdir))
    fresh = leptonctl(workdir, "run", "--fresh", "-f", "one.yaml")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert [t.number for t in stored(workdir)] == [0]
    (rerun,) = set(run_dirs(workdir)) - before
    (log,) = (rerun / f"{NAME}-0").glob("*.log")  # trial 0 trained from step 0, not taken from the old study
    assert f"done: {MAX_STEPS} steps" in log.read_text() and "resumed from" not in log.read_text()


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
    assert not left_running(workdir)  # the trials (checkpointed) and the tuner stopped with leptonctl
    before = stored(workdir)
    running = sorted(t.number for t in before if t.state == TrialState.RUNNING)
    assert running, "the interruption left no trial running: nothing to continue"
    again = leptonctl(workdir, "run", "-f", "examples/tuningstudy.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    after = stored(workdir)
    assert sorted(t.number for t in after) == list(range(8))  # none lost, none twice
    assert all(t.state != TrialState.RUNNING for t in after)
    assert not left_running(workdir)
    for number in running:  # the trials cut short ran to an end in the second run, under their numbers
        params = next(t.params for t in before if t.number == number)
        assert next(t.params for t in after if t.number == number) == params


def run_dirs(workdir: Path) -> list[Path]:
    return [d for d in (workdir / ".lepton/runs").glob(f"{NAME}-*") if d.is_dir()]


def left_running(workdir: Path) -> list[str]:
    """Processes still working in the user's checkout (the tuner, trainers): none once leptonctl ended."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(workdir):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def variant(workdir: Path, **changes: object) -> str:
    """The example study with its spec and template changed: a file in the checkout."""
    study = yaml.safe_load((workdir / "examples/tuningstudy.yaml").read_text())
    template = study["spec"]["trialTemplate"]["trainingJob"]
    for key, value in changes.items():
        if key == "textField":
            template["data"]["textField"] = value
        elif key == "maxSteps":
            template["hyperparameters"]["maxSteps"] = value
        else:
            study["spec"][key] = value
    (workdir / "variant.yaml").write_text(yaml.safe_dump(study))
    return "variant.yaml"


def test_a_study_whose_training_fails_ends_failed_with_every_trial_told(workdir: Path) -> None:
    result = leptonctl(
        workdir, "run", "-f", variant(workdir, textField="body", maxFailedTrials=0, parallelism=1), timeout=300
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "study Failed" in out and "more than maxFailedTrials (0)" in out
    assert "no text in field 'body'" in out  # why the trial failed, from its log
    trials = stored(workdir)
    assert any(t.state == TrialState.FAIL for t in trials)
    assert all(t.state != TrialState.RUNNING for t in trials), [(t.number, t.state) for t in trials]
    assert not left_running(workdir)


def test_a_study_that_reaches_its_goal_stops_its_other_trials(workdir: Path) -> None:
    result = leptonctl(workdir, "run", "-f", variant(workdir, goal=1000.0, maxSteps=10), timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "reached the goal 1000" in out
    trials = stored(workdir)
    assert len(trials) < 8 and sum(t.state == TrialState.COMPLETE for t in trials) >= 1
    assert all(t.state != TrialState.RUNNING for t in trials), [(t.number, t.state) for t in trials]
    assert not left_running(workdir)
