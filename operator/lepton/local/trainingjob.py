"""Run a TrainingJob on this machine: the pods the operator would create, as local processes.

The manifest is validated by the same models and rendered by the same `render`; each pod's container
command (torchrun) runs as a process with the pod's environment. Only what a machine without a
cluster cannot have is translated: the rendezvous endpoint (rank 0's DNS name -> 127.0.0.1), the
metrics ports (one machine, several "pods"), and the image (this Python).

A job whose model is already there (lepton-training.json written, the last checkpoint at the planned
total) is not trained again: `--fresh` removes its checkpoints, training log and metadata first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from lepton.api.contract import TRAINER_CONFIG_ENV, TrainerConfig
from lepton.api.kinds import TrainingJob
from lepton.local.backend import LocalBackend, LocalProcess, LocalRunError, free_port
from lepton.local.dataset import published_dataset
from lepton.local.results import METADATA, upstream_model
from lepton.render.trainingjob import RenderSettings, Resolved, render
from lepton.sdk import checkpoints
from lepton.sdk import env as sdk_env
from lepton.status.references import lineage_of

__all__ = ["METADATA", "TrainingJobBackend", "free_port", "local_argv"]

TRAIN_LOG = "train_log.jsonl"  # the trainer appends one line a step
PORT_STRIDE = 100  # between the metrics ports of two local "pods" (each rank adds its local rank)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


class TrainingJobBackend(LocalBackend[TrainingJob]):
    kind = "TrainingJob"

    def __init__(self, job: TrainingJob, runs_root: Path = Path(".lepton/runs")) -> None:
        spec = job.spec
        if spec.gpus_per_node:
            raise LocalRunError("gpusPerNode > 0: the local backend runs on CPU; set gpusPerNode: 0 (backend gloo)")
        if spec.model is not None and spec.model.pvc is not None:
            raise LocalRunError("locally, model must be a uri (a local directory), a hub id, or a TrainingJob or "
                                "TuningStudy run locally")  # fmt: skip
        if spec.trainer is None and (spec.data is None or (spec.data.uri is None and spec.data.dataset_ref is None)):
            raise LocalRunError("locally, data must be a uri (a local file or directory) or a datasetRef")
        if spec.data is not None and spec.data.pvc is not None:
            raise LocalRunError("locally, data must be a uri (a local file or directory) or a datasetRef, not a pvc")
        if spec.suspend:
            raise LocalRunError("spec.suspend is true: a suspended TrainingJob runs no pod")
        super().__init__(job.model_copy(update={"metadata": job.metadata.model_copy(
            update={"uid": job.metadata.uid or "local"})}), runs_root)  # fmt: skip
        model_uri, found = upstream_model(runs_root, spec.model) if spec.model else (None, {})
        data_uri = version = None
        if spec.data is not None and (ref := spec.data.dataset_ref) is not None:  # its latest local version
            directory, version = published_dataset(runs_root, ref.name, ref.version)
            data_uri = str(directory / ref.split)
        lineage = lineage_of(self.resource, found, model_uri, version)
        resolved = Resolved(model_uri=model_uri, data_uri=data_uri, dataset_version=version, lineage=lineage)
        self.pods = [c for c in render(self.resource, 0, RenderSettings(), resolved) if c["kind"] == "Pod"]
        (container,) = self.pods[0]["spec"]["containers"]
        env = _env(container)
        if spec.trainer is None:
            self.config: TrainerConfig | None = TrainerConfig.model_validate_json(env[TRAINER_CONFIG_ENV])
            self.output, self.checkpoints = Path(self.config.output_dir), Path(self.config.checkpoint_dir)
        else:
            self.config = None
            self.output, self.checkpoints = Path(env[sdk_env.OUTPUT_DIR]), Path(env[sdk_env.CHECKPOINT_DIR])

    def processes(self, run_dir: Path) -> list[LocalProcess]:
        rendezvous, base_port = f"127.0.0.1:{free_port()}", free_port()
        program = self.resource.spec.trainer
        cwd = Path(program.working_dir) if program and program.working_dir else None
        out = []
        for index, pod in enumerate(self.pods):
            (container,) = pod["spec"]["containers"]
            env = _env(container)
            missing = [e["name"] for e in container["env"] if "valueFrom" in e and not os.environ.get(e["name"])]
            if missing:
                raise LocalRunError(f"secret-backed env {missing} must be set in your environment to run locally")
            port, name = base_port + index * PORT_STRIDE, pod["metadata"]["name"]
            summary = str(run_dir / f"{name}.summary.json")
            # One machine, several "pods": a metrics port and a termination log of its own each.
            if program is None:
                config = json.loads(env[TRAINER_CONFIG_ENV]) | {"metricsPort": port, "terminationLog": summary}
                env[TRAINER_CONFIG_ENV] = json.dumps(config)
            else:
                env |= {sdk_env.METRICS_PORT: str(port), sdk_env.METRICS_HOST: "127.0.0.1",
                        sdk_env.TERMINATION_LOG: summary}  # fmt: skip
                if "PET_RDZV_ENDPOINT" in env:
                    env["PET_RDZV_ENDPOINT"] = rendezvous
            env.pop("HOME", None)  # the pod's read-only-root layout; locally the user's own
            for key in ("HF_HOME", "TRITON_CACHE_DIR"):
                env[key] = str(run_dir / "cache" / key.lower())
            argv = [f"--rdzv-endpoint={rendezvous}" if a.startswith("--rdzv-endpoint=") else a
                    for a in container["command"]]  # fmt: skip
            out.append(LocalProcess(name, local_argv(argv), env, run_dir / f"{name}.log", port,
                                    cwd=cwd if cwd is not None and cwd.is_dir() else None))  # fmt: skip
        return out

    def starting(self, processes: list[LocalProcess]) -> str:
        procs = self.resource.spec.procs_per_node or 1
        return f"starting {len(processes)} node(s) x {procs} process(es), gloo on CPU"

    def _metadata(self) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.output / METADATA).read_text())
        except (OSError, ValueError):
            return None
        job = self.config.job if self.config else None
        return meta if isinstance(meta, dict) and meta.get("job") == job else None

    def _last_checkpoint(self) -> tuple[int, Path] | None:
        path = checkpoints.latest(self.checkpoints)  # the layout both trainers write (lepton.sdk.checkpoints)
        return (checkpoints.step_of(path), path) if path is not None else None

    def finished(self) -> str | None:
        if self.config is None:
            return None  # a program of its own: it resumes from its checkpoints itself
        if self.config.resume != "latest":
            return None  # every run starts from step 0
        meta, last = self._metadata(), self._last_checkpoint()
        if meta is None or last is None:
            return None
        planned = meta.get("total_steps", meta.get("steps"))
        if last[0] != planned or meta.get("steps") != planned:
            return None
        changed = [key for key, now in (("hyperparameters", self.config.hyperparameters.to_wire()),
                                        ("data", self.config.data.to_wire()),
                                        ("source_model", self.config.model_path)) if meta.get(key) != now]  # fmt: skip
        note = f" (trained with other {' and '.join(changed)} than this manifest's)" if changed else ""
        return (f"{self.resource.metadata.name} already finished: {planned} of {planned} steps; model in "
                f"{self.output} (final loss {_number(meta.get('final_loss'))}){note}. "
                "Run with --fresh to train it again.")  # fmt: skip

    def start_afresh(self) -> list[str]:
        removed = []
        if self.checkpoints.is_dir():
            for path in sorted(self.checkpoints.glob("step-*")) + sorted(self.checkpoints.glob(".tmp-step-*")):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
        for path in (self.output / METADATA, self.output / TRAIN_LOG):
            if path.is_file():
                path.unlink()
                removed.append(str(path))
        return removed

    def interrupted(self) -> str:
        last = self._last_checkpoint()
        if last is None:
            return "interrupted before the first checkpoint: the same command starts again from step 0"
        return f"interrupted: checkpoint of step {last[0]} in {last[1]}; run the same command again to resume"

    def succeeded(self, run_dir: Path) -> str:
        if self.config is None:
            summary = _summary(run_dir / f"{self.pods[0]['metadata']['name']}.summary.json")
            told = ", ".join(f"{k} {_number(v)}" for k, v in sorted(summary.items())) or "no final metrics reported"
            return f"succeeded: output in {self.output} ({told}); logs in {run_dir}"
        meta = self._metadata() or {}
        return (f"succeeded: model in {self.output} (final loss {_number(meta.get('final_loss'))}, "
                f"eval loss {_number(meta.get('eval_loss'))}); logs in {run_dir}")  # fmt: skip


def _summary(path: Path) -> dict[str, Any]:
    """The final metrics of rank 0's summary (lepton.sdk.finish), or {}."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    metrics = doc.get("metrics") if isinstance(doc, dict) else None
    return metrics if isinstance(metrics, dict) else {}


def local_argv(argv: list[str]) -> list[str]:
    """A pod's command as this machine runs it: the image's python and torchrun are this Python's."""
    out = []
    for i, arg in enumerate(argv):
        if arg in ("python", "python3") and (i == 0 or argv[i - 1] == "--no-python"):
            out.append(sys.executable)
        elif arg == "torchrun" and i == 0:
            out += [sys.executable, "-m", "torch.distributed.run"]
        else:
            out.append(arg)
    return out


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}
