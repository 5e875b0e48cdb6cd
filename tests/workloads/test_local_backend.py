"""`leptonctl run -f`: the quickstart manifest, validated and rendered as on a cluster, trained by
local torchrun processes, with a run directory, logs and the final model; run again it says it is done,
`--fresh` trains it anew, Ctrl-C checkpoints and the same command resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES, ROOT
from tests.workloads.conftest import finish, lose_node, torchrun, trainer_config, wait_for

QUICKSTART = EXAMPLES / "quickstart" / "trainingjob.yaml"


# leptonctl with Ctrl-C armed even where this test runs with SIGINT ignored (a background job of a script).
CTRL_C_ARMED = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "from lepton.cli.main import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip


def leptonctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lepton.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


def quickstart(tmp_path: Path, **spec: Any) -> Path:
    """The quickstart manifest with its model written under tmp_path (and `spec` merged in)."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["output"]["uri"] = str(tmp_path / "model")
    doc["spec"]["data"] = {"uri": str(EXAMPLES / "data" / "tickets.jsonl"), "validationFraction": 0.1}
    doc["spec"] |= spec
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


def rank0_log(runs: Path) -> str:
    return (sorted(runs.iterdir())[-1] / "quickstart-0-0.log").read_text()


def test_quickstart_trains_then_is_done_then_fresh_interrupted_and_resumed(tmp_path: Path) -> None:
    # Checkpoints every 2 steps (the quickstart says 10): the interrupt below lands early in the run,
    # so the run cannot finish before the SIGTERM reaches the trainer, however slow this machine is.
    manifest = quickstart(tmp_path, checkpoint={"everySteps": 2})
    runs, model = tmp_path / "runs", tmp_path / "model"
    run = ["run", "-f", str(manifest), "--runs-dir", str(runs)]

    proc = leptonctl(*run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "succeeded: model in" in proc.stderr and "/44  loss" in proc.stderr  # the progress bar
    (run_dir,) = runs.iterdir()
    assert {p.name for p in run_dir.glob("*.log")} == {"quickstart-0-0.log", "quickstart-0-1.log"}
    first = json.loads((model / "lepton-training.json").read_text())
    assert first["world_size"] == 2 and first["final_loss"] < 4.0
    assert first["steps"] == first["total_steps"] == 44
    assert (model / "model.safetensors").exists()

    # The README's first command, a second time: done already, nothing started, where the model is.
    proc = leptonctl(*run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"quickstart already finished: 44 of 44 steps; model in {model}" in proc.stderr
    assert "--fresh" in proc.stderr and len(list(runs.iterdir())) == 1

    # --fresh forgets the earlier run; a SIGINT (Ctrl-C) after its first checkpoint stops it after one more.
    interrupted = subprocess.Popen([sys.executable, "-c", CTRL_C_ARMED, *run, "--fresh"], cwd=ROOT,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
    # Read its stderr all along: a progress bar that fills the pipe while nobody reads would stop the run.
    lines: list[str] = []
    pipe = interrupted.stderr
    assert pipe is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(pipe.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for((model / "checkpoints" / "step-00000002" / "COMPLETE").exists, 300, "a checkpoint")
        interrupted.send_signal(signal.SIGINT)
        interrupted.wait(timeout=300)
        reader.join(timeout=30)
        stderr = "".join(lines)
    finally:
        if interrupted.poll() is None:
            lose_node(interrupted)
    assert interrupted.returncode == 130, stderr[-3000:]
    assert "--fresh: removed" in stderr and "step-00000044" in stderr and "lepton-training.json" in stderr
    assert "interrupted: checkpoint of step" in stderr and "run the same command again to resume" in stderr
    assert not (model / "lepton-training.json").exists()
    stopped = max(int(p.name.split("-")[1]) for p in (model / "checkpoints").glob("step-*"))
    assert 2 < stopped < 44
    assert "resumed" not in rank0_log(runs)  # started afresh, not from the earlier run's step 44

    # The same command resumes from there and ends where the uninterrupted run ended.
    proc = leptonctl(*run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step-{stopped:08d} at step {stopped}" in rank0_log(runs)
    resumed = json.loads((model / "lepton-training.json").read_text())
    assert resumed["steps"] == 44 and resumed["final_loss"] == pytest.approx(first["final_loss"], rel=1e-4)
    assert len(list(runs.iterdir())) == 3

    # The README goes on: serve what it trained (the service names the TrainingJob; locally its model is
    # found in that job's latest finished run), ask it for a completion, Ctrl-C.
    serve_and_ask(["run", "-f", str(EXAMPLES / "inferenceservice.yaml"), "--runs-dir", str(runs)], model)


def serve_and_ask(run: list[str], model: Path) -> None:
    server = subprocess.Popen([sys.executable, "-c", CTRL_C_ARMED, *run], cwd=ROOT, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    lines: list[str] = []
    try:
        assert server.stderr is not None
        for line in server.stderr:
            lines.append(line)
            if line.startswith("serving 'quickstart-chat' on "):
                break
        else:
            raise AssertionError("".join(lines)[-3000:])
        base = line.split(" on ")[1].split()[0]
        body = json.dumps({"model": "quickstart-chat", "prompt": "my order", "max_tokens": 8}).encode()
        request = urllib.request.Request(f"{base}/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as rsp:
            answer = json.loads(rsp.read())
        assert answer["choices"][0]["text"] and answer["usage"]["completion_tokens"] >= 1
        with urllib.request.urlopen(f"{base}/v2/models/quickstart-chat", timeout=10) as rsp:
            assert json.loads(rsp.read())["metadata"]["trainingJob"] == "quickstart"  # lineage
        assert any(str(model) in line for line in lines), "".join(lines)
        server.send_signal(signal.SIGINT)
        _, rest = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            lose_node(server)
    assert server.returncode == 0, "".join(lines) + rest
    assert "stopped serving" in rest


def test_a_failing_workload_says_its_own_error_first(tmp_path: Path) -> None:
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"text": f"ticket {i}"}) + "\n" for i in range(3)))
    manifest = quickstart(tmp_path, data={"uri": str(data)})
    proc = leptonctl("run", "-f", str(manifest), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("failed: "))
    assert lines[failed].startswith("failed: quickstart-0-")
    assert "[trainer] error:" in lines[failed] and "training rows are fewer than one step needs" in lines[failed]
    # The trainer exits 3 for a problem the user can fix; torchrun exits 1 whatever failed: the worker's code is told.
    assert lines[failed + 1].strip().startswith("full log: ") and ".log (exit code 3)" in lines[failed + 1]
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr


def test_run_rejects_what_cannot_run_here(tmp_path: Path) -> None:
    gpu = yaml.safe_load(QUICKSTART.read_text())
    gpu["spec"]["gpusPerNode"] = 8
    gpu["spec"]["backend"] = "nccl"
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(gpu))
    proc = leptonctl("run", "-f", str(tmp_path / "gpu.yaml"))
    assert proc.returncode == 2 and "the local backend runs on CPU" in proc.stderr
    proc = leptonctl("run", "-f", str(EXAMPLES / "invalid" / "trainingjob-zero-nodes.yaml"))
    assert proc.returncode == 2 and "spec.nodes in body should be greater than or equal to 1" in proc.stderr
    study = yaml.safe_load((EXAMPLES / "tuningstudy.yaml").read_text())
    study["spec"]["trialTemplate"]["trainingJob"]["gpusPerNode"] = 1
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    proc = leptonctl("run", "-f", str(tmp_path / "study.yaml"))
    assert proc.returncode == 2 and "the local backend runs on CPU" in proc.stderr
    proc = leptonctl("run", "-f", str(QUICKSTART), "--runs-dir", str(tmp_path / "no-runs"))
    assert proc.returncode == 2 and "no local run under" in proc.stderr and "prepare it first" in proc.stderr


def test_the_readme_quickstart_prepares_a_dataset_that_the_job_trains_on(tmp_path: Path) -> None:
    """README's first command: leptonctl run the Dataset, then the TrainingJob naming it (datasetRef)."""
    dataset = yaml.safe_load((EXAMPLES / "dataset.yaml").read_text())
    dataset["spec"]["output"]["uri"] = str(tmp_path / "datasets")
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(dataset))
    runs = tmp_path / "runs"
    proc = leptonctl("run", "-f", str(tmp_path / "dataset.yaml"), "--runs-dir", str(runs))
    assert proc.returncode == 0 and "published version " in proc.stderr, proc.stderr[-3000:]
    version = (tmp_path / "datasets" / "current").read_text().strip()
    proc = leptonctl("run", "-f", str(tmp_path / "dataset.yaml"), "--runs-dir", str(runs))
    assert proc.returncode == 0 and f"version {version} was already published" in proc.stderr

    job = yaml.safe_load(QUICKSTART.read_text())
    job["spec"]["output"]["uri"] = str(tmp_path / "model")
    job["spec"]["hyperparameters"] |= {"epochs": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    proc = leptonctl("run", "-f", str(tmp_path / "job.yaml"), "--runs-dir", str(runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "model" / "lepton-training.json").read_text())
    assert meta["data"]["dataset"] == "support-tickets" and meta["data"]["datasetVersion"] == version
    assert meta["data"]["path"] == str(tmp_path / "datasets" / "versions" / version / "train")


def test_the_trainer_resumed_at_its_last_step_exits_0(tiny_model: Path, tmp_path: Path) -> None:
    """What `leptonctl run` did on a second run before it knew a job was done; still what a pod
    restarted after its last checkpoint does on a cluster. (DDP; FSDP takes the same path.)"""
    run = tmp_path / "run"
    config = trainer_config(tiny_model, run, maxSteps=10)
    meta_file = run / "out" / "lepton-training.json"
    assert finish(torchrun(config, run), run) == 0, (run / "torchrun.log").read_text()[-3000:]
    first = json.loads(meta_file.read_text())
    assert first["steps"] == first["total_steps"] == 10

    meta_file.unlink()  # stopped between the last checkpoint and the export: the model is written again
    assert finish(torchrun(config, run), run) == 0, (run / "torchrun.log").read_text()[-3000:]
    again = json.loads(meta_file.read_text())
    assert again["steps"] == 10 and again["final_loss"] == first["final_loss"]  # the checkpoint keeps the loss
    assert again["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)

    assert finish(torchrun(config, run), run) == 0, (run / "torchrun.log").read_text()[-3000:]
    assert "nothing to train: resumed at the last step (10 of 10)" in (run / "torchrun.log").read_text()
    assert json.loads(meta_file.read_text()) == again  # kept as it was
