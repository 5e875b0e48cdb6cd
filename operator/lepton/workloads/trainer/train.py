"""The training loop: DistributedDataParallel over torchrun's process group, gradient accumulation, LR
schedule, clipping, evaluation, checkpoints every N steps and on SIGTERM, exact resume, final export.

Exact resume rests on three things: the data order is a pure function of (seed, epoch); a checkpoint
holds weights, optimizer, schedule and every rank's random state; and the step being resumed is
recomputed from the global step, so a resumed run replays the uninterrupted run's loss curve.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_scheduler,
)

from lepton.api.contract import TrainerConfig
from lepton.workloads.trainer import checkpoint
from lepton.workloads.trainer.data import DataError, collate, epoch_order, read_rows, tokenize
from lepton.workloads.trainer.progress import Progress

EXIT_PREEMPTED = 143  # 128 + SIGTERM: stopped on request, after a checkpoint


class Stop:
    """SIGTERM (pod deletion, suspend) asks every rank to checkpoint and leave at the next step."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_: Any) -> None:
        self.requested = True

    def agreed(self) -> bool:
        flag = torch.tensor([1 if self.requested else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def log(rank: int, message: str) -> None:
    if rank == 0:
        print(f"[trainer] {message}", file=sys.stderr, flush=True)


def _load_model(cfg: TrainerConfig) -> Any:
    config = AutoConfig.from_pretrained(cfg.model_path)
    if cfg.task == "sequence-classification":
        config.num_labels = cfg.num_labels or config.num_labels
        cls: Any = AutoModelForSequenceClassification
    else:
        cls = AutoModelForCausalLM
    if cfg.init == "config":
        return cls.from_config(config)
    return cls.from_pretrained(cfg.model_path, config=config)


def _samples(cfg: TrainerConfig, tokenizer: Any) -> tuple[list[Any], list[Any]]:
    rows = read_rows(cfg.data)
    order = epoch_order(len(rows), cfg.hyperparameters.seed, -1)
    n_eval = int(len(rows) * cfg.data.validation_fraction)
    evals, trains = [rows[i] for i in order[:n_eval]], [rows[i] for i in order[n_eval:]]

    def encode(part: list[dict[str, Any]]) -> list[Any]:
        ids = tokenize(part, tokenizer, cfg.data.text_field, cfg.hyperparameters.max_seq_length)
        if cfg.task == "sequence-classification":
            return [(i, int(r[cfg.data.label_field])) for i, r in zip(ids, part, strict=False)]
        return ids

    return encode(trains), encode(evals)


def _batch(items: list[Any], cfg: TrainerConfig, pad_id: int) -> dict[str, torch.Tensor]:
    if cfg.task == "sequence-classification":
        out = collate([ids for ids, _ in items], pad_id)
        out["labels"] = torch.tensor([label for _, label in items])
        return out
    return collate(items, pad_id)


def _evaluate(model: Any, data: list[Any], cfg: TrainerConfig, *, pad_id: int, rank: int, world: int) -> float | None:
    if not data:
        return None
    model.eval()
    total, count = torch.zeros(1), torch.zeros(1)
    batch = cfg.hyperparameters.batch_size
    mine = data[rank::world]
    with torch.no_grad():
        for i in range(0, len(mine), batch):
            items = mine[i : i + batch]
            total += model(**_batch(items, cfg, pad_id)).loss.detach() * len(items)
            count += len(items)
    dist.all_reduce(total)
    dist.all_reduce(count)
    model.train()
    return float(total.item() / max(count.item(), 1))


def run(cfg: TrainerConfig) -> int:  # noqa: PLR0915 - one loop, read top to bottom
    dist.init_process_group(backend=cfg.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    hp = cfg.hyperparameters
    torch.manual_seed(hp.seed)  # identical initial weights on every rank
    torch.use_deterministic_algorithms(True, warn_only=True)
    stop = Stop()

    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = int(tokenizer.pad_token_id)
    model = _load_model(cfg)
    model.config.pad_token_id = pad_id
    train, evals = _samples(cfg, tokenizer)
    per_step = world * hp.batch_size * hp.gradient_accumulation_steps
    steps_per_epoch = len(train) // per_step
    if steps_per_epoch == 0:
        raise DataError(f"{len(train)} training rows are fewer than one step needs ({per_step} = world {world} "
                        f"x batch {hp.batch_size} x accumulation {hp.gradient_accumulation_steps})")  # fmt: skip
    total = hp.max_steps or math.ceil((hp.epochs or 1) * steps_per_epoch)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = get_scheduler(hp.lr_scheduler, optimizer, num_warmup_steps=hp.warmup_steps, num_training_steps=total)

    ckpt_root, out = Path(cfg.checkpoint_dir), Path(cfg.output_dir)
    step = 0
    found = checkpoint.latest(ckpt_root) if cfg.resume == "latest" else None
    if found is not None:
        state, rng = checkpoint.load(found, rank)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        if rng is not None:
            torch.set_rng_state(rng)
        log(rank, f"resumed from {found.name} at step {step}")

    progress = Progress(total, rank)
    progress.update(startStep=step, step=step)
    progress.serve(cfg.metrics_port + int(os.environ.get("LOCAL_RANK", "0")) if cfg.metrics_port else 0)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    history = out / "train_log.jsonl"
    started, eval_loss = time.monotonic(), None
    ddp.train()
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        order = epoch_order(len(train), hp.seed, epoch)
        block = order[offset * per_step : (offset + 1) * per_step]
        loss_sum = 0.0
        for micro in range(hp.gradient_accumulation_steps):
            first = (micro * world + rank) * hp.batch_size
            items = [train[i] for i in block[first : first + hp.batch_size]]
            sync = contextlib.nullcontext() if micro == hp.gradient_accumulation_steps - 1 else ddp.no_sync()
            with sync:
                loss = ddp(**_batch(items, cfg, pad_id)).loss / hp.gradient_accumulation_steps
                loss.backward()
            loss_sum += float(loss.detach())
        if hp.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        mean = torch.tensor([loss_sum])
        dist.all_reduce(mean)
        loss_value = float(mean.item()) / world
        if hp.eval_every_steps and step % hp.eval_every_steps == 0:
            eval_loss = _evaluate(ddp.module, evals, cfg, pad_id=pad_id, rank=rank, world=world)
        rate = per_step * (step - progress.state["startStep"]) / max(time.monotonic() - started, 1e-9)
        progress.update(step=step, epoch=step / steps_per_epoch, loss=loss_value, samplesPerSecond=rate,
                        evalLoss=eval_loss)  # fmt: skip
        if rank == 0:
            with history.open("a") as fh:
                fh.write(json.dumps({"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0]}) + "\n")
        preempted = stop.agreed()
        if step % cfg.checkpoint_every_steps == 0 or preempted or step == total:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "rng": torch.get_rng_state()}  # fmt: skip
            checkpoint.save(ckpt_root, step, rank=rank, world=world, state=state, keep=cfg.checkpoint_keep)
        if preempted:
            log(rank, f"stopped on SIGTERM after checkpointing step {step}")
            dist.destroy_process_group()
            return EXIT_PREEMPTED

    eval_loss = _evaluate(ddp.module, evals, cfg, pad_id=pad_id, rank=rank, world=world)
    if rank == 0:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        meta = {"job": cfg.job, "task": cfg.task, "steps": step, "world_size": world, "final_loss": loss_value,
                "eval_loss": eval_loss, "train_rows": len(train), "data": cfg.data.to_wire(),
                "hyperparameters": hp.to_wire(), "source_model": cfg.model_path}  # fmt: skip
        (out / "lepton-training.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        log(rank, f"done: {step} steps, loss {loss_value:.4f}, model in {out}")
    dist.barrier()
    progress.close()
    dist.destroy_process_group()
    return 0
