"""The trainer under a real 2-process torchrun (gloo on CPU): it learns, it resumes exactly, it exports
a model that loads and generates, and it fails clearly on bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.workloads.conftest import finish, losses, torchrun, trainer_config, wait_for

STRATEGIES = pytest.mark.parametrize("strategy", ["ddp", "fsdp"])


@STRATEGIES
def test_two_processes_learn_and_export_a_model(tiny_model: Path, tmp_path: Path, strategy: str) -> None:
    run = tmp_path / "run"
    config = trainer_config(tiny_model, run) | {"strategy": strategy}
    assert finish(torchrun(config, run), run) == 0, (run / "torchrun.log").read_text()
    curve = losses(run)
    assert sorted(curve) == list(range(1, 41))
    first, last = sum(curve[s] for s in range(1, 6)) / 5, sum(curve[s] for s in range(36, 41)) / 5
    assert last < first * 0.8, f"loss did not decrease: {first:.3f} -> {last:.3f}"
    meta = json.loads((run / "out" / "lepton-training.json").read_text())
    assert meta["steps"] == 40 and meta["world_size"] == 2 and meta["eval_loss"] is not None

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "out")
    tok = AutoTokenizer.from_pretrained(run / "out")
    ids = tok("Ticket 7: the dashboard", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


@STRATEGIES
def test_resume_after_sigterm_replays_the_uninterrupted_loss_curve(
    tiny_model: Path, tmp_path: Path, strategy: str
) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert finish(torchrun(trainer_config(tiny_model, whole) | {"strategy": strategy}, whole), whole) == 0
    proc = torchrun(trainer_config(tiny_model, broken) | {"strategy": strategy}, broken)
    wait_for((broken / "ckpt" / "step-00000010").exists, 120, "the step-10 checkpoint")
    os.killpg(proc.pid, signal.SIGTERM)  # as Kubernetes does when it deletes the pod
    assert finish(proc, broken) != 0
    stopped_at = max(losses(broken))
    assert stopped_at < 40, "the run should have been interrupted"
    assert finish(torchrun(trainer_config(tiny_model, broken) | {"strategy": strategy}, broken), broken) == 0
    log = (broken / "torchrun.log").read_text()
    assert "resumed from step-" in log
    replay, reference = losses(broken), losses(whole)
    assert sorted(replay) == list(range(1, 41))
    for step in range(1, 41):
        assert replay[step] == pytest.approx(reference[step], abs=1e-6), f"step {step} differs after resume"


def test_runs_without_a_validation_split(tiny_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "noval"
    config = trainer_config(tiny_model, run, maxSteps=3)
    config["data"]["validationFraction"] = 0.0
    assert finish(torchrun(config, run, procs=1), run) == 0, (run / "torchrun.log").read_text()[-2000:]
    assert json.loads((run / "out" / "lepton-training.json").read_text())["eval_loss"] is None


def test_bad_data_fails_with_a_clear_message(tiny_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "bad"
    config = trainer_config(tiny_model, run)
    config["data"]["textField"] = "body"
    assert finish(torchrun(config, run, procs=1), run) != 0
    assert "no text in field 'body'" in (run / "torchrun.log").read_text()


def test_invalid_configuration_is_rejected_before_torch_starts(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"job": "x"}))
    proc = subprocess.run([sys.executable, "-m", "lepton.workloads.trainer", "--config", str(bad)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2 and "invalid trainer configuration" in proc.stderr and "modelPath" in proc.stderr


def test_distillation_and_int8_export_give_a_model_that_loads_and_predicts(tiny_model: Path, tmp_path: Path) -> None:
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert finish(torchrun(trainer_config(tiny_model, teacher, maxSteps=30), teacher), teacher) == 0
    config = trainer_config(tiny_model, student, maxSteps=20)
    config |= {"distillation": {"teacher": {"uri": str(teacher / "out")}, "temperature": 2.0, "alpha": 0.7},
               "teacherPath": str(teacher / "out"), "quantization": "dynamic-int8"}  # fmt: skip
    assert finish(torchrun(config, student), student) == 0, (student / "torchrun.log").read_text()[-3000:]
    meta = json.loads((student / "out" / "lepton-training.json").read_text())
    assert meta["distillation"]["alpha"] == 0.7 and meta["int8_layers"] >= 1
    curve = losses(student)
    assert curve[20] < curve[1], "the distilled student learns"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lepton.workloads.trainer.export import load_int8

    tok = AutoTokenizer.from_pretrained(student / "out")
    int8 = load_int8(student / "out", AutoModelForCausalLM)
    fp32 = AutoModelForCausalLM.from_pretrained(student / "out").eval()
    ids = tok("Ticket 3: billing charges us twice.", return_tensors="pt")
    import torch

    with torch.no_grad():
        a, b = fp32(**ids).logits, int8(**ids).logits
    assert a.shape == b.shape and torch.isfinite(b).all()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8, "int8 predicts what fp32 predicts, mostly"
    out = int8.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_teacher_with_another_vocabulary_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    other = tmp_path / "other"
    GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=16, n_layer=1, n_head=1)).save_pretrained(other)
    run = tmp_path / "run"
    config = trainer_config(tiny_model, run) | {"distillation": {"teacher": {"uri": str(other)}},
                                                "teacherPath": str(other)}  # fmt: skip
    assert finish(torchrun(config, run, procs=1), run) != 0
    assert "teacher and student disagree on the output size" in (run / "torchrun.log").read_text()


def test_checkpoint_of_another_strategy_is_refused_with_a_clear_message(tiny_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert finish(torchrun(trainer_config(tiny_model, run, maxSteps=5), run, procs=1), run) == 0
    config = trainer_config(tiny_model, run, maxSteps=10) | {"strategy": "fsdp"}
    assert finish(torchrun(config, run, procs=1), run) != 0
    log = (run / "torchrun.log").read_text()
    assert "checkpoint step-00000005 was written with strategy ddp, this run uses fsdp" in log
