"""`leptonctl run -f`: the quickstart manifest, validated and rendered as on a cluster, trained by
local torchrun processes, with a run directory, logs and the final model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import EXAMPLES, ROOT

QUICKSTART = EXAMPLES / "quickstart" / "trainingjob.yaml"


def leptonctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lepton.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


def test_quickstart_trains_a_model_locally(tmp_path: Path) -> None:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["output"]["uri"] = str(tmp_path / "model")
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    proc = leptonctl("run", "-f", str(manifest), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "succeeded: model in" in proc.stderr and "/44  loss" in proc.stderr  # the progress bar
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run_dir.glob("*.log")} == {"quickstart-0-0.log", "quickstart-0-1.log"}
    meta = json.loads((tmp_path / "model" / "lepton-training.json").read_text())
    assert meta["world_size"] == 2 and meta["final_loss"] < 4.0
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_run_rejects_what_cannot_run_here(tmp_path: Path) -> None:
    gpu = yaml.safe_load(QUICKSTART.read_text())
    gpu["spec"]["gpusPerNode"] = 8
    gpu["spec"]["backend"] = "nccl"
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(gpu))
    proc = leptonctl("run", "-f", str(tmp_path / "gpu.yaml"))
    assert proc.returncode == 2 and "the local backend runs on CPU" in proc.stderr
    proc = leptonctl("run", "-f", str(EXAMPLES / "invalid" / "trainingjob-zero-nodes.yaml"))
    assert proc.returncode == 2 and "spec.nodes in body should be greater than or equal to 1" in proc.stderr
    proc = leptonctl("run", "-f", str(EXAMPLES / "dataset.yaml"))
    assert proc.returncode == 2 and "expected one TrainingJob" in proc.stderr
