"""Elastic training under real torchrun agents (c10d rendezvous, gloo on CPU): two agents stand for two
pods of a job with minNodes 1 and maxNodes 2. When one "node" dies mid-run, the other agent re-forms
the rendezvous alone, and the trainer reads on from the latest checkpoint at the new world size."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from lepton.local.trainingjob import free_port
from lepton.render.trainingjob import ELASTIC_ENV
from tests.workloads.conftest import finish, launch, lose_node, losses, trainer_config, wait_for


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def agent(config: Path, port: int, run: Path, name: str) -> subprocess.Popen[bytes]:
    """One node's torchrun agent, as the rendered pod runs it for an elastic job (nnodes min:max)."""
    args = ["--nnodes=1:2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=elastic-test", "--rdzv-conf=last_call_timeout=15", "--max-restarts=3"]  # fmt: skip
    return launch(args, config, run / f"{name}.log", ELASTIC_ENV)


def latest_checkpoint_world(run: Path) -> int:
    """World size of the newest complete checkpoint (0: none yet)."""
    done = sorted(p for p in (run / "ckpt").glob("step-*") if (p / "COMPLETE").exists())
    with contextlib.suppress(OSError, ValueError, KeyError):  # the newest may be pruned while read
        return int(json.loads((done[-1] / "meta.json").read_text())["world_size"]) if done else 0
    return 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_losing_a_node_shrinks_the_world_and_training_reads_on(tiny_model: Path, tmp_path: Path, strategy: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    config = run / "config.json"
    config.write_text(json.dumps(trainer_config(tiny_model, run, maxSteps=40) | {"strategy": strategy}))
    port = free_port()
    first = agent(config, port, run, "node-0")  # hosts the rendezvous store, like pod 0
    wait_for(lambda: listening(port), 60, "node-0's rendezvous store")
    second = agent(config, port, run, "node-1")  # joins within last_call_timeout: the first round has both
    try:
        wait_for(lambda: latest_checkpoint_world(run) == 2, 180, "a checkpoint written by the 2-node world")
        lose_node(second)
        assert finish(first, run, timeout=240, log="node-0.log") == 0
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                lose_node(proc)
    log = (run / "node-0.log").read_text()
    assert "world size 2 -> 1 (elastic)" in log, log[-3000:]
    meta = json.loads((run / "out" / "lepton-training.json").read_text())
    assert meta["world_size"] == 1 and meta["steps"] == 40
    curve = losses(run)
    assert sorted(curve) == list(range(1, 41)), "every step trained, the lost ones again after the resume"
    assert sum(curve[s] for s in range(36, 41)) < sum(curve[s] for s in range(1, 6)), "it still learns"


def test_a_replacement_node_rejoins_and_the_world_grows_back(tiny_model: Path, tmp_path: Path) -> None:
    """What the operator's pod replacement leads to: the new pod's agent joins, the agents restart
    their workers in a world of two again, and training reads on from the latest checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    config = run / "config.json"
    config.write_text(json.dumps(trainer_config(tiny_model, run, maxSteps=5000)))
    port = free_port()
    nodes = [agent(config, port, run, "node-0")]
    wait_for(lambda: listening(port), 60, "node-0's rendezvous store")
    nodes.append(agent(config, port, run, "node-1"))

    def logs() -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(run.glob("node-*.log")))

    def world_of_latest_checkpoint() -> int:
        return latest_checkpoint_world(run)

    try:
        wait_for(lambda: world_of_latest_checkpoint() == 2, 180, "a checkpoint of the 2-node world")
        lose_node(nodes.pop())
        wait_for(lambda: "world size 2 -> 1 (elastic)" in logs(), 180, "training on alone")
        shrunk = len(list((run / "out" / "train_log.jsonl").read_text().splitlines()))
        nodes.append(agent(config, port, run, "node-2"))  # the replacement pod
        wait_for(lambda: "world size 1 -> 2 (elastic)" in logs(), 180, "the world grown back to 2")
        wait_for(lambda: world_of_latest_checkpoint() == 2, 180, "a checkpoint of the regrown world")
        for proc in nodes:  # preempt both (as suspend does): they checkpoint and leave
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in nodes:
            proc.wait(timeout=120)
    finally:
        for proc in nodes:
            if proc.poll() is None:
                lose_node(proc)
    assert len((run / "out" / "train_log.jsonl").read_text().splitlines()) > shrunk, "it trained on after the rejoin"
