"""Run a TrainingJob on this machine: the pods the operator would create, as local processes.

The manifest is validated by the same models and rendered by the same `render`; each pod's container
command (torchrun) runs as a process with the pod's environment. Only what a machine without a
cluster cannot have is translated: the rendezvous endpoint (rank 0's DNS name -> 127.0.0.1), the
metrics ports (one machine, several "pods"), and the image (this Python).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lepton.api.contract import TRAINER_CONFIG_ENV
from lepton.api.kinds import TrainingJob
from lepton.render.trainingjob import RenderSettings, render


class LocalRunError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalPod:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None


def local_pods(job: TrainingJob, run_dir: Path) -> list[LocalPod]:
    """The rendered pods, translated for this machine (see the module docstring)."""
    if job.spec.gpus_per_node:
        raise LocalRunError("gpusPerNode > 0: the local backend runs on CPU; set gpusPerNode: 0 (backend gloo)")
    if job.spec.model.hub is None and job.spec.model.uri is None:
        raise LocalRunError("locally, model must be a uri (a local directory) or a hub id")
    if job.spec.data.uri is None:
        raise LocalRunError("locally, data must be a uri (a local file or directory)")
    job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"uid": job.metadata.uid or "local"})})
    rendezvous = f"127.0.0.1:{free_port()}"
    base_port = free_port()
    pods = []
    for index, pod in enumerate(c for c in render(job, 0, RenderSettings()) if c["kind"] == "Pod"):
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        missing = [e["name"] for e in container["env"] if "valueFrom" in e and not os.environ.get(e["name"])]
        if missing:
            raise LocalRunError(f"secret-backed env {missing} must be set in your environment to run locally")
        config = json.loads(env[TRAINER_CONFIG_ENV])
        port = base_port + index * 100
        config["metricsPort"] = port
        env[TRAINER_CONFIG_ENV] = json.dumps(config)
        env.pop("HOME", None)  # the pod's read-only-root layout; locally the user's own
        for key in ("HF_HOME", "TRITON_CACHE_DIR"):
            env[key] = str(run_dir / "cache" / key.lower())
        argv = [a if not a.startswith("--rdzv-endpoint=") else f"--rdzv-endpoint={rendezvous}" for a in
                container["command"]]  # fmt: skip
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]  # the image's torchrun
        pods.append(LocalPod(pod["metadata"]["name"], argv, env, run_dir / f"{pod['metadata']['name']}.log", port))
    return pods


def read_progress(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=1) as rsp:
            return dict(json.loads(rsp.read()))
    except (OSError, ValueError):
        return None


def bar(progress: dict[str, Any] | None, width: int = 30) -> str:
    if not progress or not progress.get("totalSteps"):
        return "starting…"
    step, total = int(progress.get("step", 0)), int(progress["totalSteps"])
    done = int(width * step / max(total, 1))
    parts = [f"[{'#' * done}{'.' * (width - done)}] step {step}/{total}"]
    if "loss" in progress:
        parts.append(f"loss {float(progress['loss']):.4f}")
    if "samplesPerSecond" in progress:
        parts.append(f"{float(progress['samplesPerSecond']):.1f} samples/s")
    if "etaSeconds" in progress:
        parts.append(f"ETA {int(progress['etaSeconds'])}s")
    return "  ".join(parts)


def run(job: TrainingJob, runs_root: Path, echo: Callable[[str], None], tty: bool) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = runs_root / f"{job.metadata.name}-{stamp}"
    run_dir.mkdir(parents=True)
    pods = local_pods(job, run_dir)
    (run_dir / "trainingjob.json").write_text(json.dumps(job.to_wire(), indent=2))
    echo(f"run directory: {run_dir}")
    echo(f"starting {len(pods)} node(s) x {job.spec.procs_per_node or 1} process(es), gloo on CPU")
    for pod in pods:
        fh = pod.log.open("wb")
        pod.proc = subprocess.Popen(pod.argv, env={**os.environ, **pod.env}, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
    last = ""
    try:
        while any(p.proc is not None and p.proc.poll() is None for p in pods):
            progress = read_progress(pods[0].metrics_port)
            if progress is None and last:
                time.sleep(0.5)  # between the last step and exit the endpoint is gone
                continue
            line = bar(progress)
            if tty:
                sys.stderr.write("\r" + line.ljust(len(last)))
                sys.stderr.flush()
            elif line != last and line.count("#") != last.count("#"):
                echo(line)
            last = line
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in pods:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.terminate()  # the trainer checkpoints on SIGTERM; run again to resume
        for p in pods:
            if p.proc is not None:
                p.proc.wait()
        echo("\ninterrupted: a checkpoint was saved; run the same command again to resume")
        return 130
    if tty:
        sys.stderr.write("\n")
    codes = {p.name: p.proc.returncode if p.proc else -1 for p in pods}
    failed = {n: c for n, c in codes.items() if c != 0}
    if failed:
        first = min(failed)
        tail = (run_dir / f"{first}.log").read_text()[-3000:]
        echo(f"failed: {failed}; last lines of {first}.log:\n{tail}")
        return 1
    output = json.loads(pods[0].env[TRAINER_CONFIG_ENV])["outputDir"]
    meta = Path(output) / "lepton-training.json"
    summary = json.loads(meta.read_text()) if meta.exists() else {}
    echo(f"succeeded: model in {output} (final loss {summary.get('final_loss', float('nan')):.4f}, "
         f"eval loss {summary.get('eval_loss') or float('nan'):.4f}); logs in {run_dir}")  # fmt: skip
    return 0
