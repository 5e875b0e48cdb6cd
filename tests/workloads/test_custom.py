"""Custom mode on this machine: `leptonctl run -f` runs your own program as the operator would run it
(the gang's torchrun, the LEPTON_* environment), with or without lepton.sdk, and says what happened in
the program's own words: progress when it reports some, "unknown" when it does not, its exit code and
last lines when it fails. TuningStudy trials of your own program take their values from its reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES, ROOT

pytest.importorskip("torch")

CUSTOM = EXAMPLES / "trainingjob-custom.yaml"


def leptonctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lepton.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


def manifest(tmp_path: Path, command: list[str] | None = None, spec: dict[str, Any] | None = None,
             **hyper: Any) -> Path:  # fmt: skip
    doc = yaml.safe_load(CUSTOM.read_text())
    doc["spec"]["output"]["uri"] = str(tmp_path / "out")
    doc["spec"] |= spec or {}
    if command is not None:
        doc["spec"]["trainer"]["command"] = command
    doc["spec"]["trainer"]["hyperparameters"] |= hyper
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_shipped_program_reports_progress_and_its_final_metrics(tmp_path: Path) -> None:
    # Slowed a little so the progress bar has time to show; the run is the example's, untouched otherwise.
    proc = leptonctl("run", "-f", str(manifest(tmp_path, step_sleep=0.05)), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    bars = [line for line in proc.stderr.splitlines() if line.startswith("[#") or line.startswith("[.")]
    assert bars and "/160" in bars[-1] and "loss " in bars[-1], proc.stderr  # 2048 rows / (32 x 2) x 5 epochs
    assert "progress unknown" not in proc.stderr
    done = proc.stderr.splitlines()[-1]
    assert done.startswith(f"succeeded: output in {tmp_path / 'out'} (accuracy 0.") and "eval_loss 0." in done
    assert (tmp_path / "out" / "model.pt").is_file()
    summary = json.loads(next((tmp_path / "runs").glob("*/mlp-custom-0-0.summary.json")).read_text())
    assert summary["step"] == 160 and set(summary["metrics"]) >= {"accuracy", "eval_loss"}


def test_a_program_without_the_sdk_succeeds_and_its_progress_is_unknown(tmp_path: Path) -> None:
    program = tmp_path / "plain.py"
    program.write_text(
        "import os, time\n"
        "time.sleep(12)  # longer than leptonctl waits for a first report\n"
        "if os.environ['RANK'] == '0':\n"
        "    out = os.environ['LEPTON_OUTPUT_DIR']\n"
        "    os.makedirs(out, exist_ok=True)\n"
        "    open(os.path.join(out, 'result.txt'), 'w').write(os.environ['LEPTON_HYPERPARAMETERS'])\n"
    )
    proc = leptonctl("run", "-f", str(manifest(tmp_path, ["python", str(program)])), "--runs-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "progress unknown" in proc.stderr and "lepton.sdk" in proc.stderr
    assert "no final metrics reported" in proc.stderr.splitlines()[-1]
    assert json.loads((tmp_path / "out" / "result.txt").read_text())["lr"] == 0.05  # the manifest's, as JSON


def test_a_program_that_exits_3_fails_with_code_3_and_its_last_lines(tmp_path: Path) -> None:
    program = tmp_path / "broken.py"
    program.write_text(
        "import os, sys\n"
        "print(f\"rank {os.environ['RANK']}: reading the data\", flush=True)\n"
        "print('bad column: label is missing', file=sys.stderr, flush=True)\n"
        "sys.exit(3 if os.environ['RANK'] == '0' else 0)\n"
    )
    # One node of 2 processes: its torchrun stops the other worker at once (with 2 nodes, the other node's
    # agent would wait for its peer until leptonctl stops it).
    one_node = {"nodes": 1, "procsPerNode": 2}
    proc = leptonctl("run", "-f", str(manifest(tmp_path, ["python", str(program)], one_node)),
                     "--runs-dir", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("failed: "))
    assert "exited with code 3; its last lines:" in lines[failed], proc.stderr
    told = "\n".join(lines[failed + 1 :])
    assert "bad column: label is missing" in told and "rank 0: reading the data" in told
    assert "ChildFailedError" not in told and "(exit code 3)" in lines[-1]


def test_a_study_of_your_own_program_takes_its_values_from_the_programs_reports(tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "tuningstudy-custom.yaml").read_text())
    doc["spec"] |= {"maxTrials": 2, "parallelism": 2, "pruner": {"type": "none"}}
    template = doc["spec"]["trialTemplate"]["trainingJob"]
    template["output"]["uri"] = str(tmp_path / "trials")
    template["trainer"]["hyperparameters"] |= {"epochs": 1}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    proc = leptonctl("run", "-f", str(tmp_path / "study.yaml"), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "study Succeeded: 2/2 trials done" in proc.stderr
    for number in (0, 1):
        summary = json.loads(next((tmp_path / "runs").glob(f"*/mlp-custom-search-{number}*/*-0-0.summary.json"))
                             .read_text())  # fmt: skip
        value = f"{summary['metrics']['eval_loss']:.6g}"
        assert any(line.split()[:1] == [str(number)] and value in line for line in proc.stderr.splitlines()), (
            f"trial {number}'s value is its program's final eval_loss {value}: {proc.stderr}"
        )
        log = next((tmp_path / "runs").glob(f"*/mlp-custom-search-{number}/*-0-0.log")).read_text()
        # The parameters reach the program typed as it reads them: hidden a number, not the choice's text.
        assert "'hidden': 16," in log or "'hidden': 64," in log, log
