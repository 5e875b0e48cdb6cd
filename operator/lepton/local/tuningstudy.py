"""Run a TuningStudy on this machine: the tuner as a local process on a journal that outlives the run,
and each trial as a local TrainingJob run (torchrun processes), `parallelism` at a time.

The semantics are the operator's, not a second copy: each loop builds what the operator would observe
(one TrainingJob-shaped object per trial run, with its phase, evaluations and final metrics), asks
the same pure `sync_request` what to tell the tuner and the same pure `decide` what to start and stop.
Only the execution differs: a run is a group of processes instead of pods, "suspend" is a SIGTERM (the
trainer checkpoints and exits), and the journal lives in `<runs>/<name>.study/`, so running the same
manifest again (after Ctrl-C, or a crash) continues the same study: no trial is lost or run twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lepton.api.constants import TERMINAL_PHASES, Label, Phase
from lepton.api.contract import ProgressReport
from lepton.api.kinds import API_VERSION, TuningStudy
from lepton.api.trials import parameter_text
from lepton.api.tuner import JOURNAL_FILE, TUNER_CONFIG_ENV, SyncReply, TrialInfo
from lepton.api.tuningstudy import TuningStudyStatus, trial_name
from lepton.local.backend import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    LocalBackend,
    LocalProcess,
    LocalRunError,
    RunOptions,
    error_line,
    free_port,
    read_progress,
    signal_all,
    sigterm_as_interrupt,
    stop,
)
from lepton.local.dataset import published_dataset
from lepton.local.results import STUDY_STATUS, study_dir
from lepton.local.trainingjob import METADATA, TrainingJobBackend
from lepton.render.trials import trial_job
from lepton.render.tuningstudy import tuner_config
from lepton.status.progress import evaluations_from, summary_metrics
from lepton.status.references import lineage_of
from lepton.status.tuningstudy import RunView, TunerView, decide, sync_request

LOOP_SECONDS = 0.5  # a pass reads every running trial's progress: the pruner acts on what it last saw
EXIT_POLL_SECONDS = 0.05
TUNER_START_SECONDS = 60.0
SYNC_SECONDS = 120.0  # a sampler may take a while (GP, CMA-ES at many trials)


@dataclass
class LocalRun:
    """One trial run: a TrainingJob's processes, and what the operator would read of it."""

    name: str
    number: int
    retry: int
    output: str
    processes: list[LocalProcess]
    stopped: bool = False  # SIGTERM sent because the trial was pruned or the study ends
    evaluations: list[Any] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)
    done_before: bool = False  # an earlier run of leptonctl already trained it

    def phase(self) -> str:
        if self.done_before:
            return Phase.SUCCEEDED
        codes = [p.proc.poll() if p.proc is not None else None for p in self.processes]
        if any(c is None for c in codes):
            return Phase.RUNNING
        if self.stopped:
            return Phase.SUSPENDED
        return Phase.SUCCEEDED if all(c == 0 for c in codes) else Phase.FAILED

    def observe(self) -> dict[str, Any]:
        """The run as the operator sees a trial TrainingJob."""
        port = self.processes[0].progress_port if self.processes else None
        report = read_progress(port) if port and self.phase() == Phase.RUNNING else None
        if report is not None:
            self.evaluations = evaluations_from(self.evaluations, report)
        phase = self.phase()
        status: dict[str, Any] = {"phase": phase, "outputModel": self.output,
                                  "evaluations": [e.to_wire() for e in self.evaluations]}  # fmt: skip
        if phase == Phase.SUCCEEDED and not self.metrics:
            self.metrics = self._final_metrics()
        status["metrics"] = self.metrics
        if phase == Phase.FAILED:
            status["conditions"] = [{"type": "Failed", "status": "True", "reason": "Error",
                                     "message": self.failure()}]  # fmt: skip
        return {"apiVersion": API_VERSION, "kind": "TrainingJob",
                "metadata": {"name": self.name, "labels": {Label.TRIAL: str(self.number)},
                             "annotations": {Label.RETRY: str(self.retry)}},
                "spec": {"suspend": self.stopped}, "status": status}  # fmt: skip

    def failure(self) -> str:
        """Why the run failed: the first failed process's error line (or its exit code), and its log."""
        failed = next((p for p in self.processes if p.code not in (0, None)), self.processes[0])
        why = error_line(failed.log.read_text(errors="replace")) if failed.log.exists() else None
        return f"{why or f'exit code {failed.code}'} (log: {failed.log})"

    def _final_metrics(self) -> dict[str, str]:
        for p in self.processes:  # rank 0's termination log (TrainingJobBackend puts it in the run dir)
            summary = p.log.with_name(f"{p.name}.summary.json")
            if summary.exists():
                return summary_metrics(summary.read_text())
        try:  # trained by an earlier run: its metadata beside the model
            meta = json.loads((Path(self.output) / METADATA).read_text())
        except (OSError, ValueError):
            return {}
        metrics = {"eval_loss": meta.get("eval_loss"), "eval_accuracy": meta.get("eval_accuracy"),
                   "loss": meta.get("final_loss")}  # fmt: skip
        return summary_metrics(json.dumps({"metrics": metrics}))


class TuningStudyBackend(LocalBackend[TuningStudy]):
    kind = "TuningStudy"
    drives = True

    def __init__(self, study: TuningStudy, runs_root: Path = Path(".lepton/runs")) -> None:
        spec = study.spec
        if spec.storage is not None:
            raise LocalRunError("locally the study's journal is kept under the runs directory: remove spec.storage "
                                "(a PVC or an RDB secret is cluster storage)")  # fmt: skip
        if spec.from_study is not None:
            raise LocalRunError("fromStudy is not supported by leptonctl run yet: use enqueue, or a cluster")
        if spec.suspend:
            raise LocalRunError("spec.suspend is true: a suspended TuningStudy runs no trial")
        template = spec.trial_template.training_job
        if template.output.uri is None:
            raise LocalRunError("locally, trialTemplate.trainingJob.output must be a uri (a local directory)")
        meta = study.metadata.model_copy(update={"uid": study.metadata.uid or "local", "namespace": "local"})
        super().__init__(study.model_copy(update={"metadata": meta}), runs_root)
        self.journal = study_dir(runs_root, study.metadata.name)
        TrainingJobBackend(trial_job(self.resource, 0, {}), runs_root)  # what a trial cannot do here, in its words
        self.version: str | None = None
        if (
            template.data is not None and (ref := template.data.dataset_ref) is not None
        ):  # pinned for every trial, as on a cluster
            _, self.version = published_dataset(runs_root, ref.name, ref.version)

    def processes(self, run_dir: Path) -> list[LocalProcess]:
        return []  # driven: trials start as the tuner asks for them

    def succeeded(self, run_dir: Path) -> str:
        return f"study finished; logs in {run_dir}"

    def start_afresh(self) -> list[str]:
        """The journal, and every trial's checkpoints and training record (the same trial numbers come
        again, with new parameters: none may resume, or pass for trained, from the old study's)."""
        removed = []
        if self.journal.is_dir():
            shutil.rmtree(self.journal)
            removed.append(str(self.journal))
        prefix = f"{self.resource.metadata.name}-"
        root = Path(str(self.resource.spec.trial_template.training_job.output.uri))
        for trial in sorted(root.glob(f"{prefix}*")) if root.is_dir() else []:
            if trial.is_dir() and trial.name.removeprefix(prefix).isdigit():
                job = trial_job(self.resource, int(trial.name.removeprefix(prefix)), {})
                removed += TrainingJobBackend(job, self.runs_root).start_afresh()
        return removed

    def drive(self, run_dir: Path, options: RunOptions) -> int:
        self.journal.mkdir(parents=True, exist_ok=True)
        echo = options.echo
        tuner = self._tuner(run_dir)
        runs: dict[str, LocalRun] = {}

        def everything() -> list[LocalProcess]:
            return [*(p for r in runs.values() for p in r.processes), tuner]

        with sigterm_as_interrupt():
            try:
                self._start_tuner(tuner)
                echo(f"run directory: {run_dir}; study journal: {self.journal / JOURNAL_FILE}")
                code = self._loop(tuner, runs, run_dir, options)
            except KeyboardInterrupt:
                echo(f"interrupted: stopping {len(everything()) - 1} trial process(es) and the tuner "
                     "(Ctrl-C again to kill)")  # fmt: skip
                stop(everything(), echo)
                echo("the study is in its journal: run the same command again to continue it")
                return EXIT_INTERRUPTED
            except BaseException:  # the tuner failed, or this loop did: nothing keeps running after leptonctl
                stop(everything(), echo)
                raise
        stop([tuner], echo)
        return code

    # --- the loop ---------------------------------------------------------------------------------
    def _tuner(self, run_dir: Path) -> LocalProcess:
        port = free_port()
        config = tuner_config(self.resource).model_copy(update={"host": "127.0.0.1", "port": port,
                                                                "journal_dir": str(self.journal)})  # fmt: skip
        proc = LocalProcess("tuner", [sys.executable, "-m", "lepton.workloads.tuner"],
                            {TUNER_CONFIG_ENV: json.dumps(config.to_wire())}, run_dir / "tuner.log")  # fmt: skip
        proc.ready_url = f"http://127.0.0.1:{port}"
        return proc

    def _start_tuner(self, proc: LocalProcess) -> None:
        with proc.log.open("wb") as fh:
            proc.proc = subprocess.Popen(proc.argv, env={**os.environ, **proc.env}, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + TUNER_START_SECONDS
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise LocalRunError(f"the tuner exited with code {proc.code}: "
                                    f"{error_line(proc.log.read_text(errors='replace')) or proc.log}")  # fmt: skip
            try:
                with urllib.request.urlopen(f"{proc.ready_url}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        signal_all([proc], signal.SIGKILL)
        raise LocalRunError(f"the tuner did not answer within {TUNER_START_SECONDS:.0f}s; see {proc.log}")

    def _sync(self, tuner: LocalProcess, views: list[RunView], last: SyncReply | None) -> SyncReply:
        now = datetime.now(UTC)
        request = sync_request(self.resource, views, now, last)
        body = request.model_dump_json(by_alias=True).encode()
        http = urllib.request.Request(f"{tuner.ready_url}/v1/sync", data=body, method="POST",
                                      headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(http, timeout=SYNC_SECONDS) as rsp:
                return SyncReply.model_validate_json(rsp.read())
        except urllib.error.HTTPError as exc:
            why = " ".join(exc.read().decode(errors="replace").split())[:300]
            raise LocalRunError(f"the tuner refused the sync ({exc.code}): {why}; see {tuner.log}") from None
        except OSError as exc:
            raise LocalRunError(f"the tuner did not answer the sync ({exc}); see {tuner.log}") from None

    def _loop(self, tuner: LocalProcess, runs: dict[str, LocalRun], run_dir: Path, options: RunOptions) -> int:
        last: SyncReply | None = None
        table = ProgressTable(options)
        while True:
            if tuner.proc is not None and tuner.proc.poll() is not None:
                raise LocalRunError(f"the tuner exited with code {tuner.code}; see {tuner.log}")
            views = [v for r in runs.values() if (v := RunView.of(r.observe())) is not None]
            reply = self._sync(tuner, views, last)
            last = reply
            decision = decide(self.resource, views, TunerView(exists=True, ready=True, reply=reply),
                              dataset_version=self.version, now=datetime.now(UTC))  # fmt: skip
            self.resource = self.resource.model_copy(update={"status": decision.status})
            for body, suspend in decision.suspend:
                run = runs.get(str(body["metadata"]["name"]))
                if suspend and run is not None and not run.stopped:
                    run.stopped = True
                    signal_all(run.processes, signal.SIGTERM)  # the trainer checkpoints and exits
            for start in decision.start:
                run = self._start(start.number, start.parameters, start.retry, run_dir)
                runs[run.name] = run
            table.update(reply, runs)
            if decision.status.phase in TERMINAL_PHASES:
                for run in runs.values():
                    stop(run.processes, options.echo)
                status = self._with_best_model(decision.status)
                self._record(status)
                table.finish(status, reply)
                return 0 if status.phase == Phase.SUCCEEDED else EXIT_FAILED
            _pause(runs)

    def _with_best_model(self, status: TuningStudyStatus) -> TuningStudyStatus:
        """A best trial trained by an earlier run of this study (a finished study run again sees no run of
        it) has its model where its trial's output is: the status names it, as the cluster's does."""
        best = status.best_trial
        if best is None or best.model:
            return status
        output = TrainingJobBackend(trial_job(self.resource, best.number, {}), self.runs_root).output
        if not (output / METADATA).is_file():
            return status
        best = best.model_copy(update={"model": str(output), "training_job": best.training_job or output.name})
        return status.model_copy(update={"best_trial": best})

    def _record(self, status: TuningStudyStatus) -> None:
        """The study's final status beside its journal, with its lineage: what a TrainingJob or an
        InferenceService naming this study (model.tuningStudy) resolves its best trial from."""
        lineage = lineage_of(self.resource, {}, None, self.version)
        body = status.model_copy(update={"lineage": lineage}).to_wire()
        (self.journal / STUDY_STATUS).write_text(json.dumps(body, indent=2))

    def _start(self, number: int, parameters: Any, retry: int, run_dir: Path) -> LocalRun:
        job = trial_job(self.resource, number, parameters, retry=retry, dataset_version=self.version)
        backend = TrainingJobBackend(job, self.runs_root)
        output = str(backend.output)
        if backend.finished() is not None:
            if _trained_as(backend):  # by an earlier run of this study that ended before telling the tuner
                return LocalRun(job.metadata.name, number, retry, output, [], done_before=True)
            backend.start_afresh()  # trained, but not as this trial: the template changed since
        trial_dir = run_dir / job.metadata.name
        trial_dir.mkdir(parents=True, exist_ok=True)
        processes = backend.processes(trial_dir)
        for p in processes:
            with p.log.open("wb") as fh:
                p.proc = subprocess.Popen(p.argv, env={**os.environ, **p.env}, stdout=fh,
                                          stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        return LocalRun(job.metadata.name, number, retry, output, processes)


def _pause(runs: dict[str, LocalRun]) -> None:
    """Until the next pass: LOOP_SECONDS, or sooner once a trial process exits, so that its result is told
    and the next trial asked at once rather than up to a second later (trials are often short)."""
    running = [p.proc for r in runs.values() for p in r.processes if p.proc is not None and p.proc.poll() is None]
    deadline = time.monotonic() + LOOP_SECONDS
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in running):
            return
        time.sleep(EXIT_POLL_SECONDS)


class ProgressTable:
    """A line per trial whenever its state or latest evaluation changes (and, once, why its training
    failed); at the end every trial this run saw with its value and state (the step a pruned one reached),
    then the best."""

    def __init__(self, options: RunOptions) -> None:
        self.echo = options.echo
        self.lines: dict[int, str] = {}
        self.failures: set[str] = set()
        self.trials: dict[int, TrialInfo] = {}

    def update(self, reply: SyncReply, runs: dict[str, LocalRun]) -> None:
        for trial in reply.trials:
            self.trials[trial.number] = trial
            run = runs.get(trial_name_of(runs, trial.number))
            step = ""
            if trial.values:
                step = "value " + ", ".join(f"{v:.6g}" for v in trial.values)
            elif run is not None and run.evaluations:
                evaluation = run.evaluations[-1]
                step = f"step {evaluation.step}: " + ", ".join(
                    f"{k} {v}" for k, v in sorted(evaluation.metrics.items())
                )
            line = f"trial {trial.number:>3}  {_params(trial.parameters):<40}  {trial.state:<8}  {step}".rstrip()
            if self.lines.get(trial.number) != line:
                self.lines[trial.number] = line
                self.echo(line)
            if run is not None and run.processes and run.phase() == Phase.FAILED and run.name not in self.failures:
                self.failures.add(run.name)
                self.echo(f"trial {trial.number:>3}  failed: {run.failure()}")

    def finish(self, status: Any, reply: SyncReply) -> None:
        for top in reply.summary.top:  # a finished study run again sees no trial but its best ones
            self.trials.setdefault(top.number, top)
        self.echo(f"study {status.phase}: {status.trials_done} trials done ({_condition_message(status)})")
        width = max([len("parameters"), *(len(_params(t.parameters)) for t in self.trials.values())])
        self.echo(f"{'trial':>5}  {'parameters':<{width}}  {'value':>10}  state")
        for t in sorted(self.trials.values(), key=lambda t: t.number):
            value = ", ".join(f"{v:.6g}" for v in t.values or [])
            at = f" at step {t.last_step}" if t.state != "complete" and t.last_step is not None else ""
            self.echo(f"{t.number:>5}  {_params(t.parameters):<{width}}  {value:>10}  {t.state}{at}")
        best = status.best_trial
        if best is not None:
            self.echo(f"best: trial {best.number} = {best.value} with {best.parameters}; model in {best.model}")


def _trained_as(backend: TrainingJobBackend) -> bool:
    """Whether the model in the trial's output was trained with this trial's settings."""
    try:
        meta = json.loads((backend.output / METADATA).read_text())
    except (OSError, ValueError):
        return False
    config = backend.config
    if config is None:  # a program of its own: its trial is run again
        return False
    return isinstance(meta, dict) and (meta.get("hyperparameters"), meta.get("data"), meta.get("source_model")) == (
        config.hyperparameters.to_wire(),
        config.data.to_wire(),
        config.model_path,
    )


def trial_name_of(runs: dict[str, LocalRun], number: int) -> str:
    names = [r.name for r in runs.values() if r.number == number]
    return max(names, key=lambda n: runs[n].retry) if names else ""


def _params(parameters: Any) -> str:
    return " ".join(f"{k}={parameter_text(v)}" for k, v in sorted(parameters.items()))


def _condition_message(status: Any) -> str:
    for c in status.conditions:
        if c.type in ("Succeeded", "Failed") and c.status == "True":
            return str(c.message)
    return str(status.phase)


__all__ = ["ProgressReport", "TuningStudyBackend", "trial_name"]
