"""P4's baseline: the plain Optuna loop a user would write instead of a TuningStudy, over the same trials.

    python -m benchmarks.tuning_baseline --manifest study.yaml --runs-dir DIR --mode torchrun --result out.json

`optuna.create_study` (in memory, as such a loop usually is) with the study's own sampler, seed, pruner
and distributions (the tuner's mapping, `lepton.workloads.tuner.space`), then ask/tell for maxTrials
trials, one at a time. Each trial trains exactly what the TuningStudy's trial would (its TrainingJob
rendered by `render/trials.py`, the same TrainerConfig):
  torchrun   the same `torchrun -m lepton.workloads.trainer` processes the local backend starts for that
             trial (TrainingJobBackend.processes: same argv, same environment), one after the other;
  inprocess  the training function itself (`lepton.workloads.trainer.train.run`) called in this process
             (a one-process gloo group made for each trial): no process start, no torch import per trial.
The objective is the trainer's final metric, read from its TrainingSummary (the termination log).
Writes a JSON result: every trial's number, parameters, value and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

from lepton.api.kinds import ObjectMeta, TuningStudy
from lepton.api.validation import parse
from lepton.local.trainingjob import TrainingJobBackend, free_port
from lepton.render.trials import trial_job
from lepton.workloads.tuner import space


def load(manifest: Path) -> TuningStudy:
    study = parse(yaml.safe_load(manifest.read_text()))
    assert isinstance(study, TuningStudy)
    meta: ObjectMeta = study.metadata.model_copy(update={"uid": "local", "namespace": "local"})  # as leptonctl run
    return study.model_copy(update={"metadata": meta})


def summary_value(path: Path, metric: str) -> float:
    return float(json.loads(path.read_text())["metrics"][metric])


def train_torchrun(backend: TrainingJobBackend, run_dir: Path, metric: str) -> float:
    run_dir.mkdir(parents=True, exist_ok=True)
    (proc,) = backend.processes(run_dir)  # one node: one torchrun
    with proc.log.open("wb") as fh:
        code = subprocess.run(proc.argv, env={**os.environ, **proc.env}, stdout=fh, stderr=subprocess.STDOUT,
                              check=False).returncode  # fmt: skip
    if code != 0:
        raise SystemExit(f"trial {run_dir.name} failed ({code}); see {proc.log}")
    return summary_value(run_dir / f"{proc.name}.summary.json", metric)


def train_inprocess(backend: TrainingJobBackend, run_dir: Path, metric: str) -> float:
    (proc,) = backend.processes(run_dir)
    for key in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM"):  # the trainer pod's threads, here too
        if key in proc.env:
            os.environ[key] = proc.env[key]
    import torch

    from lepton.workloads.trainer.train import run  # torch: imported once, by the first trial

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = run_dir / "summary.json"
    config = backend.config.model_copy(update={"metrics_port": 0, "termination_log": str(summary)})
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})  # fmt: skip
    if run(config) != 0:
        raise SystemExit(f"trial {run_dir.name} failed")
    return summary_value(summary, metric)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--mode", choices=("torchrun", "inprocess"), required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resource = load(args.manifest)
    spec = resource.spec
    (objective,) = spec.objective_list()
    study = optuna.create_study(direction=objective.direction, sampler=space.sampler(spec.sampler, spec.search_space),
                                pruner=space.pruner(spec.pruner))  # fmt: skip
    distributions = space.distributions(spec.search_space)
    train = train_torchrun if args.mode == "torchrun" else train_inprocess
    trials: list[dict[str, Any]] = []
    for number in range(spec.max_trials or 0):
        trial = study.ask(distributions)
        started = time.perf_counter()
        backend = TrainingJobBackend(trial_job(resource, number, trial.params), args.runs_dir)
        value = train(backend, args.runs_dir / backend.resource.metadata.name, objective.metric)
        study.tell(trial, value)
        trials.append({"number": number, "parameters": trial.params, "value": value, "state": "complete",
                       "seconds": time.perf_counter() - started})  # fmt: skip
        print(f"trial {number}: {trial.params} -> {value:.6g}", file=sys.stderr, flush=True)
    args.result.write_text(json.dumps({"trials": trials}))


if __name__ == "__main__":
    main()
