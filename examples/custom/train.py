"""A custom-mode TrainingJob program: plain PyTorch DDP, a small classifier on generated data.

Runs anywhere:   torchrun --nproc-per-node=2 examples/custom/train.py      (model in ./output)
or alone:        python examples/custom/train.py
or as a TrainingJob with spec.trainer.command: [python, train.py]. Lepton then starts it under
torchrun on every pod and tells it, through LEPTON_* variables that `lepton.sdk` reads, its
hyperparameters and where to checkpoint and write the model; it reads the progress this program
reports, stops it with SIGTERM (deletion, suspend, a pruned trial) and restarts it from its newest
checkpoint. Resuming is exact: the data order is a function of (seed, epoch) only, and a checkpoint
holds the weights, the optimizer and every rank's random state, so an interrupted and resumed run
ends with the same weights as one that ran through.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from lepton import sdk

DEFAULTS = {"lr": 0.01, "batch_size": 32, "epochs": 3, "max_steps": 0, "seed": 0, "hidden": 64,
            "eval_every": 20, "report_every": 5, "step_sleep": 0.0}  # fmt: skip
FEATURES, CLASSES, TRAIN_SAMPLES, EVAL_SAMPLES, DATA_SEED = 16, 4, 2048, 512, 1234


def make_data() -> tuple[TensorDataset, TensorDataset]:
    """Points labelled by a fixed random linear teacher (plus noise): the same on every rank and run."""
    g = torch.Generator().manual_seed(DATA_SEED)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    x = torch.randn(TRAIN_SAMPLES + EVAL_SAMPLES, FEATURES, generator=g)
    y = (x @ teacher + 0.3 * torch.randn(len(x), CLASSES, generator=g)).argmax(dim=1)
    return TensorDataset(x[:TRAIN_SAMPLES], y[:TRAIN_SAMPLES]), TensorDataset(x[TRAIN_SAMPLES:], y[TRAIN_SAMPLES:])


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES))  # fmt: skip


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, device: torch.device) -> dict[str, float]:
    """Every rank evaluates the whole (small) set with the same weights: the same numbers everywhere."""
    model.eval()
    x, y = (t.to(device) for t in data.tensors)
    logits = model(x)
    model.train()
    return {"eval_loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}


def log(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[train] {message}", flush=True)


def init_distributed() -> torch.device:
    """The process group (nccl on GPUs, gloo on CPUs) and this process's device."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(sdk.local_rank())
    backend = "nccl" if cuda else "gloo"
    if "RANK" in os.environ:  # under torchrun: its environment says where the others are
        dist.init_process_group(backend)
    else:  # `python train.py`: a group of one
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return torch.device("cuda", sdk.local_rank()) if cuda else torch.device("cpu")


def rng_state() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def save(step: int, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank calls this: rank 0 writes the checkpoint (with every rank's random state), the others
    wait until it is complete."""
    rngs: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(rngs, rng_state())
    if dist.get_rank() == 0:
        with sdk.save_checkpoint(step) as tmp:  # complete, renamed into place, old ones pruned on exit
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "rng": rngs},
                       tmp / "state.pt")  # fmt: skip
    dist.barrier()


def resume(net: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load the newest checkpoint, if any; the step it was taken after (0: none)."""
    found = sdk.latest_checkpoint()
    if found is None:
        return 0
    state = torch.load(found / "state.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rank, rngs = dist.get_rank(), state["rng"]
    if len(rngs) == dist.get_world_size():  # the same world size: each rank's random state (dropout) too
        torch.set_rng_state(rngs[rank]["cpu"])
        if rngs[rank]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rngs[rank]["cuda"])
    log(f"resumed from {found.name} at step {state['step']}")
    return int(state["step"])


def save_model(out: Path, net: nn.Module, info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "model.pt")
    info = {"features": FEATURES, "classes": CLASSES, **info}
    (out / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def main() -> int:
    hp = {**DEFAULTS, **sdk.hyperparameters()}
    device = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    train_set, eval_set = make_data()
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=int(hp["seed"]),
                                 drop_last=True)  # fmt: skip
    batch = int(hp["batch_size"])
    steps_per_epoch = len(sampler) // batch
    total = int(hp["max_steps"]) or int(hp["epochs"]) * steps_per_epoch

    torch.manual_seed(int(hp["seed"]))  # the same initial weights on every rank
    net = make_model(int(hp["hidden"])).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=float(hp["lr"]))
    torch.manual_seed(int(hp["seed"]) + rank)  # but each rank its own dropout
    start = resume(net, optimizer)  # a restarted job (or gang) goes on from its newest checkpoint
    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    log(f"{world} processes, {steps_per_epoch} steps an epoch, steps {start + 1}..{total}, hyperparameters {hp}")

    sdk.report(step=start, total_steps=total)  # where this process starts: the ETA counts from here
    x_all, y_all = train_set.tensors
    order_epoch, order, started = -1, list[int](), time.monotonic()
    for step in range(start + 1, total + 1):
        epoch, position = divmod(step - 1, steps_per_epoch)
        if epoch != order_epoch:  # this rank's share of the epoch: a function of (seed, epoch) alone
            sampler.set_epoch(epoch)
            order_epoch, order = epoch, list(sampler)
        idx = order[position * batch : (position + 1) * batch]
        loss = F.cross_entropy(model(x_all[idx].to(device)), y_all[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # One small collective a step: the mean loss, and whether any rank was told to stop (SIGTERM).
        both = torch.tensor([loss.item(), float(sdk.stopping())], device=device)
        dist.all_reduce(both)
        mean_loss, stop = both[0].item() / world, bool(both[1].item() > 0)
        if step % hp["report_every"] == 0 or step == total:
            rate = (step - start) * batch * world / max(time.monotonic() - started, 1e-9)
            sdk.report(step=step, total_steps=total, loss=mean_loss, epoch=step / steps_per_epoch,
                       samples_per_second=rate)  # fmt: skip
        if step % hp["eval_every"] == 0:
            sdk.report(step=step, metrics=evaluate(net, eval_set, device))
        if sdk.should_checkpoint(step, stopping=stop):  # every N steps (the job's), and when stopping
            save(step, net, optimizer)
        if stop:
            log(f"stopped on SIGTERM at step {step}" + (" after a checkpoint" if sdk.checkpoint_dir() else ""))
            dist.destroy_process_group()
            return sdk.EXIT_STOPPED
        if hp["step_sleep"]:  # a tiny model trains in a blink: this lets one watch (or interrupt) it
            time.sleep(hp["step_sleep"])

    metrics = evaluate(net, eval_set, device)
    out = sdk.output_dir() or Path("output")
    if rank == 0:
        save_model(out, net, {"steps": total, "metrics": metrics, "hyperparameters": hp})
        log(f"done: {total} steps, eval_loss {metrics['eval_loss']:.4f}, accuracy {metrics['accuracy']:.4f}, "
            f"model in {out}")  # fmt: skip
    sdk.finish(metrics=metrics, model=out)  # rank 0 writes the summary the operator reads
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
