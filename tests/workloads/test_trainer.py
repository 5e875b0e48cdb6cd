"""The trainer under a real 2-process torchrun (gloo on CPU): it learns, it resumes exactly, it exports
a model that loads and generates, it reports every evaluation and its final metrics (what a
TuningStudy's pruner and result read), and it fails clearly on bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lepton.api.contract import TrainingSummary
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
    summary = broken / "termination-log"
    config = trainer_config(tiny_model, broken) | {"strategy": strategy, "terminationLog": str(summary)}
    proc = torchrun(config, broken)
    wait_for((broken / "ckpt" / "step-00000010").exists, 120, "the step-10 checkpoint")
    os.killpg(proc.pid, signal.SIGTERM)  # as Kubernetes does when it deletes the pod (or a study prunes)
    assert finish(proc, broken) != 0
    stopped_at = max(losses(broken))
    assert stopped_at < 40, "the run should have been interrupted"
    log = (broken / "torchrun.log").read_text()
    assert f"stopped on SIGTERM after checkpointing step {stopped_at}" in log  # EXIT_PREEMPTED, checkpoint kept
    assert (broken / "ckpt" / f"step-{stopped_at:08d}").is_dir()
    assert not summary.exists(), "a stopped run has no final metrics"
    assert finish(torchrun(config, broken), broken) == 0
    log = (broken / "torchrun.log").read_text()
    assert "resumed from step-" in log
    assert TrainingSummary.model_validate_json(summary.read_text()).step == 40
    replay, reference = losses(broken), losses(whole)
    assert sorted(replay) == list(range(1, 41))
    for step in range(1, 41):
        assert replay[step] == pytest.approx(reference[step], abs=1e-6), f"step {step} differs after resume"


def _port_pair() -> int:
    """A port p with p + 1 free too: rank r serves on metricsPort + LOCAL_RANK."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)


def _progress(host: str, port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/progress", timeout=2) as rsp:
            doc: dict[str, Any] = json.loads(rsp.read())
            return doc
    except (OSError, urllib.error.URLError):
        return None


def test_progress_keeps_every_evaluation_and_the_termination_log_holds_the_summary(
    tiny_model: Path, tmp_path: Path
) -> None:
    run, port = tmp_path / "run", _port_pair()
    config = trainer_config(tiny_model, run, evalEverySteps=5) | {
        "metricsPort": port, "metricsHost": "127.0.0.1", "terminationLog": str(run / "termination-log")}  # fmt: skip
    proc = torchrun(config, run)
    wait_for(lambda: _progress("127.0.0.1", port) is not None or proc.poll() is not None, 120, "rank 0's /progress")
    assert _progress("127.0.0.2", port) is None, "bound on metricsHost only"  # another loopback address
    polls: list[dict[str, Any]] = []
    while proc.poll() is None:  # a scraper slower than the evaluations: some happen between two reads
        if (doc := _progress("127.0.0.1", port)) is not None and doc.get("evaluations"):
            polls.append(doc)
        time.sleep(0.2)
    assert finish(proc, run) == 0, (run / "torchrun.log").read_text()[-3000:]
    assert polls, "no read of /progress saw an evaluation"
    curve = losses(run)
    for doc in polls:  # each read holds every evaluation so far: none falls between two reads
        steps = [e["step"] for e in doc["evaluations"]]
        assert steps == list(range(5, steps[-1] + 1, 5)) and steps[-1] <= doc["step"], doc
        for e in doc["evaluations"]:
            assert set(e["metrics"]) == {"eval_loss", "loss"} and math.isfinite(e["metrics"]["eval_loss"])
            assert e["metrics"]["loss"] == pytest.approx(curve[e["step"]], abs=1e-9)  # rank 0's loss at that step
    seen = {e["step"]: e["metrics"] for doc in polls for e in doc["evaluations"]}
    assert len(seen) >= 3 and seen[max(seen)]["eval_loss"] < seen[5]["eval_loss"], seen

    text = (run / "termination-log").read_text()
    summary = TrainingSummary.model_validate_json(text)
    meta = json.loads((run / "out" / "lepton-training.json").read_text())
    assert len(text.encode()) <= 4096 and summary.step == 40 and summary.model == str(run / "out")
    assert summary.metrics == {"eval_loss": meta["eval_loss"], "loss": meta["final_loss"]}
    assert summary.metrics["loss"] == pytest.approx(curve[40], abs=1e-9)
    if 40 in seen:  # the last evaluation is the final one, not made twice
        assert seen[40]["eval_loss"] == summary.metrics["eval_loss"]


def test_sequence_classification_reports_its_accuracy(tiny_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = trainer_config(tiny_model, run, maxSteps=10, evalEverySteps=5) | {
        "task": "sequence-classification", "numLabels": 2, "terminationLog": str(run / "termination-log")}  # fmt: skip
    assert finish(torchrun(config, run), run) == 0, (run / "torchrun.log").read_text()[-3000:]
    summary = TrainingSummary.model_validate_json((run / "termination-log").read_text())
    assert set(summary.metrics) == {"eval_loss", "eval_accuracy", "loss"}

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lepton.api.contract import TrainerData
    from lepton.workloads.trainer.data import epoch_order, read_rows

    # The validation split as the trainer draws it, scored one row at a time by the exported model.
    rows = read_rows(TrainerData.model_validate(config["data"]))
    held_out = [rows[i] for i in epoch_order(len(rows), 1, -1)[: int(len(rows) * 0.1)]]
    model = AutoModelForSequenceClassification.from_pretrained(run / "out").eval()
    tok = AutoTokenizer.from_pretrained(run / "out")
    right, loss = 0, 0.0
    with torch.no_grad():
        for row in held_out:
            ids = tok(row["text"], truncation=True, max_length=48, return_tensors="pt")
            out = model(**ids, labels=torch.tensor([row["label"]]))
            right += int(out.logits.argmax(-1).item() == row["label"])
            loss += float(out.loss)
    # Batched with padding there, one row here: the same up to float noise (a near tie may flip one row).
    assert summary.metrics["eval_accuracy"] == pytest.approx(right / len(held_out), abs=1.01 / len(held_out))
    assert summary.metrics["eval_loss"] == pytest.approx(loss / len(held_out), rel=1e-4)


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
