"""The training loop: DDP or FSDP over torchrun's process group (see parallel.py), gradient accumulation,
LR schedule, clipping, evaluation, checkpoints every N steps and on SIGTERM, exact resume, final export.

Tasks: causal-lm and sequence-classification on text (data.py: tokenised rows), image-classification on
images (images.py: decoded pixels, augmented per (seed, epoch, row)). The loop sees only the model and
two `Samples` splits; `_prepare` is where the tasks differ.

Exact resume rests on three things: the data order is a pure function of (seed, epoch); a checkpoint
holds weights, optimizer, schedule and every rank's random state; and the step being resumed is
recomputed from the global step, so a resumed run replays the uninterrupted run's loss curve.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 - the usual name
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_scheduler,
)

from lepton.api.contract import TrainerConfig, TrainingSummary
from lepton.api.trainingjob import CLASSIFICATION_TASKS, Hyperparameters
from lepton.workloads.trainer import checkpoint, datastats, images
from lepton.workloads.trainer.data import (
    DataError,
    Packed,
    Samples,
    TrainerError,
    epoch_order,
    read_rows,
    split,
    tokenize,
)
from lepton.workloads.trainer.export import export_int8
from lepton.workloads.trainer.parallel import Parallel, parallelize
from lepton.workloads.trainer.progress import Progress

MODEL_CLASSES: dict[str, Any] = {
    "causal-lm": AutoModelForCausalLM,
    "sequence-classification": AutoModelForSequenceClassification,
    "image-classification": AutoModelForImageClassification,
}
STOP_CHECK_STEPS = 10
EXIT_PREEMPTED = 143  # 128 + SIGTERM: stopped on request, after a checkpoint
TERMINATION_LOG_BYTES = 4096  # what Kubernetes keeps of a termination message


class Stop:
    """SIGTERM (pod deletion, suspend) asks every rank to checkpoint and leave at the next step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_: Any) -> None:
        self.requested = True

    def flag(self) -> float:
        return 1.0 if self.requested else 0.0


def device_for(backend: str) -> torch.device:
    """nccl: this process's GPU (torchrun's LOCAL_RANK); gloo: the CPU."""
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise TrainerError("backend nccl needs a CUDA GPU in the pod; none is visible (check gpusPerNode)")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on GPUs that support it; fp32 on CPU (autocast on CPU is slower than it helps)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def log(rank: int, message: str) -> None:
    if rank == 0:
        print(f"[trainer] {message}", file=sys.stderr, flush=True)


def _named_labels(config: Any) -> dict[int, str] | None:
    """A config's label names, unless they are the LABEL_<i> placeholders transformers makes up."""
    names = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return None if all(v == f"LABEL_{k}" for k, v in names.items()) else names


class Distiller:
    """Knowledge distillation: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the task loss,
    over the positions the task loss counts (non-padding tokens, or the sequence for classification).
    The teacher sees the student's inputs: the same tokenizer, or images of the same size."""

    def __init__(self, cfg: TrainerConfig, student_config: Any, device: torch.device) -> None:
        assert cfg.distillation is not None
        self.temperature, self.alpha = cfg.distillation.temperature, cfg.distillation.alpha
        if not cfg.teacher_path:
            raise TrainerError("distillation needs a teacher model location (distillation.teacher)")
        config = AutoConfig.from_pretrained(cfg.teacher_path)
        classify = cfg.task in CLASSIFICATION_TASKS
        size = config.num_labels if classify else config.vocab_size
        wanted = student_config.num_labels if classify else student_config.vocab_size
        if size != wanted:
            raise TrainerError(f"teacher and student disagree on the output size ({size} != {wanted}): "
                               "distillation needs the same tokenizer or label set")  # fmt: skip
        theirs, mine = _named_labels(config), _named_labels(student_config)
        if classify and theirs is not None and mine is not None and theirs != mine:
            raise TrainerError(f"teacher and student disagree on the labels ({theirs} != {mine}): "
                               "distillation needs the same label set, in the same order")  # fmt: skip
        if cfg.task == "image-classification":
            for attr in ("image_size", "num_channels"):
                theirs_, mine_ = getattr(config, attr, None), getattr(student_config, attr, None)
                if theirs_ is not None and theirs_ != mine_:
                    raise TrainerError(f"teacher and student disagree on the input images ({attr} {theirs_} != "
                                       f"{mine_}): the teacher is given the student's pixels")  # fmt: skip
        self.teacher: Any = MODEL_CLASSES[cfg.task].from_pretrained(cfg.teacher_path).to(device).eval()
        self.teacher.requires_grad_(False)

    def loss(self, student_out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        s, t = student_out.logits, teacher_logits
        if s.dim() == 3:  # causal LM: next-token distributions where a label exists
            keep = batch["labels"][:, 1:] != -100
            s, t = s[:, :-1][keep], t[:, :-1][keep]
        temp = self.temperature
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                      reduction="batchmean") * temp * temp  # fmt: skip
        combined: torch.Tensor = self.alpha * kl + (1 - self.alpha) * student_out.loss
        return combined


def _load_model(cfg: TrainerConfig, config: Any) -> Any:
    """The task's model built from `config`: fresh weights (init: config) or the pretrained ones, a
    classification head of another size than the checkpoint's started afresh."""
    cls = MODEL_CLASSES[cfg.task]
    if cfg.init == "config":
        return cls.from_config(config)
    if cfg.task in CLASSIFICATION_TASKS:
        return cls.from_pretrained(cfg.model_path, config=config, ignore_mismatched_sizes=True)
    return cls.from_pretrained(cfg.model_path, config=config)


def total_steps(
    hp: Hyperparameters, *, step: int, at: tuple[int, int], rows: int, per_step: int, world: int, saved: dict[str, Any]
) -> int:
    """maxSteps, or the steps `epochs` take at `per_step` rows a step. A resumed gang keeps the total its
    checkpoint was written with (so the LR schedule is the one it started); one that comes back at
    another world size (elastic) takes as many more steps as the rest of the data needs now."""
    if hp.max_steps:
        return hp.max_steps
    epochs = hp.epochs or 1
    steps_per_epoch = rows // per_step
    if not saved:
        return math.ceil(epochs * steps_per_epoch)
    if saved.get("world_size") == world and "total" in saved:
        return int(saved["total"])
    done = at[0] + at[1] / rows
    return step + max(0, math.ceil((epochs - done) * steps_per_epoch))


def _unsharded(cfg: TrainerConfig, trained: Any, weights: dict[str, Any]) -> Any:
    """A plain (unsharded, CPU) copy of the trained model for export, built from its own config."""
    model = MODEL_CLASSES[cfg.task].from_config(trained.config)
    model.load_state_dict(weights)
    return model


@dataclass
class Prepared:
    """What a task brings to the loop: the model, its two splits, and what is saved beside the model so
    that it can be used (the tokenizer, or an image processor)."""

    model: Any
    train: Samples
    evals: Samples
    preprocessor: Any


def _prepare(cfg: TrainerConfig) -> Prepared:
    config = AutoConfig.from_pretrained(cfg.model_path)
    if cfg.task == "image-classification":
        geo = images.geometry(cfg.model_path, config)
        train, evals, labels, count = images.load(cfg.data, geo, num_labels=cfg.num_labels,
                                                  seed=cfg.hyperparameters.seed)  # fmt: skip
        kept = _named_labels(config)
        names = labels.names or (list(kept.values()) if kept and sorted(kept) == list(range(count)) else None)
        config.num_labels = count
        if names is not None:
            config.id2label, config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
        return Prepared(_load_model(cfg, config), train, evals, images.processor(geo))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = int(tokenizer.pad_token_id)
    if cfg.task == "sequence-classification":
        config.num_labels = cfg.num_labels or config.num_labels
    model = _load_model(cfg, config)
    model.config.pad_token_id = pad_id
    return Prepared(model, *_samples(cfg, tokenizer, pad_id), tokenizer)


def _samples(cfg: TrainerConfig, tokenizer: Any, pad_id: int) -> tuple[Packed, Packed]:
    rows = read_rows(cfg.data)
    train_rows, eval_rows = split(len(rows), cfg.hyperparameters.seed, cfg.data.validation_fraction)
    evals, trains = [rows[i] for i in eval_rows], [rows[i] for i in train_rows]

    def encode(part: list[dict[str, Any]]) -> Packed:
        if cfg.task == "sequence-classification":
            try:
                labels = [int(r[cfg.data.label_field]) for r in part]
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"field {cfg.data.label_field!r} must hold integer class ids: {exc}") from None
            encoded = tokenizer([r[cfg.data.text_field] for r in part], truncation=True,
                                max_length=cfg.hyperparameters.max_seq_length)["input_ids"] if part else []  # fmt: skip
            return Packed(list(encoded), pad_id, labels)
        return Packed(tokenize(part, tokenizer, cfg.data.text_field, cfg.hyperparameters.max_seq_length), pad_id)

    return encode(trains), encode(evals)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()} if device.type != "cpu" else batch


def _evaluate(
    par: Parallel, data: Samples, cfg: TrainerConfig, *, rank: int, world: int, device: torch.device
) -> dict[str, float]:
    """The validation split's mean loss (`eval_loss`) and, for classification, its accuracy
    (`eval_accuracy`: the logits are there already); {} without a validation split. One collective."""
    if not len(data):
        return {}
    model = par.model
    model.eval()
    classify = cfg.task in CLASSIFICATION_TASKS
    sums = torch.zeros(3, device=device)  # loss x rows, rows, rows predicted right
    batch = cfg.hyperparameters.batch_size
    mine = list(range(rank, len(data), world))
    most = math.ceil(math.ceil(len(data) / world) / batch)
    with torch.no_grad():
        for b in range(par.eval_forward_count(math.ceil(len(mine) / batch), most)):
            items = mine[b * batch : (b + 1) * batch]
            # A rank with no batch left still runs a forward (FSDP's all-gathers are collective); it counts 0.
            inputs = _to(data.batch(items or [0]), device)
            output = model(**inputs)
            if items:
                sums[0] += output.loss.detach().float() * len(items)
                sums[1] += len(items)
                if classify:
                    sums[2] += (output.logits.argmax(-1) == inputs["labels"]).sum()
    dist.all_reduce(sums)
    model.train()
    rows = max(float(sums[1].item()), 1.0)
    metrics = {"eval_loss": float(sums[0].item()) / rows}
    if classify:
        metrics["eval_accuracy"] = float(sums[2].item()) / rows
    return metrics


def _model_kept(cfg: TrainerConfig, out: Path, step: int, *, rank: int, device: torch.device) -> bool:
    """Whether the output already holds this job's model at `step` (rank 0 looks; every rank hears)."""
    kept = 0.0
    if rank == 0:
        try:
            meta = json.loads((out / "lepton-training.json").read_text())
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict) and meta.get("job") == cfg.job and meta.get("steps") == step:
            kept = float((out / "config.json").exists())
    flag = torch.tensor([kept], device=device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def _write_summary(cfg: TrainerConfig, step: int, metrics: dict[str, float | None], out: Path) -> None:
    """Rank 0's TrainingSummary in its termination log: the final metrics reach the TrainingJob's status
    (and a TuningStudy's trial result) through the pod's status, with no API access. Kubernetes keeps
    4 KiB of it: a model path too long for that is left out rather than the JSON cut."""
    if not cfg.termination_log:
        return
    kept = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
    summary = TrainingSummary(step=step, metrics=kept, model=str(out))
    text = json.dumps(summary.to_wire(), sort_keys=True)
    if len(text.encode()) > TERMINATION_LOG_BYTES:
        text = json.dumps(summary.model_copy(update={"model": None}).to_wire(), sort_keys=True)
    try:
        Path(cfg.termination_log).write_text(text)
    except OSError as exc:  # no termination log to write (not in a pod): the model is what matters
        log(0, f"could not write the termination log {cfg.termination_log}: {exc}")


def _loss(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def run(cfg: TrainerConfig) -> int:  # noqa: PLR0915 - one loop, read top to bottom
    device = device_for(cfg.backend)
    dist.init_process_group(backend=cfg.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    hp = cfg.hyperparameters
    torch.manual_seed(hp.seed)  # identical initial weights on every rank
    torch.use_deterministic_algorithms(True, warn_only=True)
    stop = Stop(device)

    prepared = _prepare(cfg)
    model, train, evals = prepared.model, prepared.train, prepared.evals
    per_step = world * hp.batch_size * hp.gradient_accumulation_steps
    if len(train) < per_step:
        raise DataError(f"{len(train)} training rows are fewer than one step needs ({per_step} = world {world} "
                        f"x batch {hp.batch_size} x accumulation {hp.gradient_accumulation_steps})")  # fmt: skip
    ckpt_root, out = Path(cfg.checkpoint_dir), Path(cfg.output_dir)
    found = checkpoint.latest(ckpt_root) if cfg.resume == "latest" else None
    state, rng = checkpoint.load(found, rank, map_location=device) if found is not None else ({}, None)
    # Where the data stream stands: (epoch, position in that epoch's order). Kept as a position, not a
    # step, so an elastic gang that comes back with another world size reads on where it stopped.
    step, epoch, position = int(state.get("step", 0)), int(state.get("epoch", 0)), int(state.get("position", 0))
    start, loss_value = step, _loss(state.get("loss"))  # a resume at the last step trains nothing
    total = total_steps(hp, step=step, at=(epoch, position), rows=len(train), per_step=per_step, world=world,
                        saved=state)  # fmt: skip
    amp = autocast_dtype(hp.precision, device)
    par = parallelize(cfg.strategy, model, device, amp)
    distiller = Distiller(cfg, model.config, device) if cfg.distillation is not None else None
    scaler = par.grad_scaler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = get_scheduler(hp.lr_scheduler, optimizer, num_warmup_steps=hp.warmup_steps, num_training_steps=total)
    if found is not None:
        par.restore(found, state, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if rng is not None:
            _set_rng_state(rng, device)
        log(rank, f"resumed from {found.name} at step {step}")
        if state.get("world_size", world) != world:
            log(rank, f"world size {state['world_size']} -> {world} (elastic): reading on from epoch {epoch} "
                      f"row {position}, {per_step} rows a step, {total} steps in all")  # fmt: skip

    progress = Progress(total, rank)
    progress.update(startStep=step, step=step)
    progress.serve(cfg.metrics_port + int(os.environ.get("LOCAL_RANK", "0")) if cfg.metrics_port else 0,
                   host=cfg.metrics_host)  # fmt: skip
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    history_file = (out / "train_log.jsonl").open("a") if rank == 0 else None
    started, ckpt_seconds = time.monotonic(), 0.0
    evaluation: dict[str, float] = {}  # the latest evaluation's metrics
    evaluated_at = -1  # the step it was made at
    model.train()
    order_epoch, order = -1, []
    while step < total:
        if position + per_step > len(train):  # the rest of an epoch too small for a step is skipped
            epoch, position = epoch + 1, 0
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(train), hp.seed, epoch)
        block = order[position : position + per_step]
        position += per_step
        loss_sum = 0.0
        for micro in range(hp.gradient_accumulation_steps):
            first = (micro * world + rank) * hp.batch_size
            items = block[first : first + hp.batch_size]
            with par.micro_step(sync=micro == hp.gradient_accumulation_steps - 1):
                batch = _to(train.batch(items, epoch), device)
                output = par(**batch)
                task_loss = distiller.loss(output, batch) if distiller is not None else output.loss
                loss = task_loss / hp.gradient_accumulation_steps
            scaler.scale(loss).backward()
            loss_sum += float(loss.detach())
        if hp.max_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        # The loss logged is rank 0's (no extra collective per step); the ranks agree on a SIGTERM
        # every STOP_CHECK_STEPS steps, well within a pod's grace period.
        loss_value = loss_sum
        preempted = False
        if step % STOP_CHECK_STEPS == 0 or step % cfg.checkpoint_every_steps == 0 or step == total:
            flags = torch.tensor([stop.flag()], device=device)
            dist.all_reduce(flags)
            preempted = bool(flags.item() > 0)
        if hp.eval_every_steps and step % hp.eval_every_steps == 0:
            evaluation, evaluated_at = _evaluate(par, evals, cfg, rank=rank, world=world, device=device), step
            progress.evaluated(step, {**evaluation, "loss": loss_value})  # the training loss at that step too
        rate = per_step * (step - progress.state["startStep"]) / max(time.monotonic() - started, 1e-9)
        progress.update(step=step, epoch=epoch + position / len(train), loss=loss_value, samplesPerSecond=rate,
                        evalLoss=evaluation.get("eval_loss"))  # fmt: skip
        if history_file is not None:  # with the evaluation made at this step, if one was
            row = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0]}
            history_file.write(json.dumps(row | (evaluation if evaluated_at == step else {})) + "\n")
            history_file.flush()
        if step % cfg.checkpoint_every_steps == 0 or preempted or step == total:
            state = {**par.training_state(optimizer), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "position": position,
                     "world_size": world, "total": total, "loss": loss_value, "rng": _rng_state(device)}  # fmt: skip
            t0 = time.monotonic()
            saved = checkpoint.save(ckpt_root, step, rank=rank, world=world, state=state, keep=cfg.checkpoint_keep,
                                    write_shards=lambda tmp: par.save_sharded(tmp, optimizer))  # fmt: skip
            ckpt_seconds += time.monotonic() - t0
            progress.update(checkpoint=str(saved))
        if preempted:
            if history_file is not None:
                history_file.close()
            log(rank, f"stopped on SIGTERM after checkpointing step {step}")
            dist.destroy_process_group()
            return EXIT_PREEMPTED

    train_seconds = time.monotonic() - started - ckpt_seconds
    if history_file is not None:
        history_file.close()
    if step == start and _model_kept(cfg, out, step, rank=rank, device=device):
        log(rank, f"nothing to train: resumed at the last step ({step} of {total}); the model in {out} is kept")
        progress.close()
        dist.destroy_process_group()
        return 0
    trained = per_step * (step - int(progress.state["startStep"]))
    if evaluated_at != step:  # the last step's evaluation, unless the loop just made it
        evaluation = _evaluate(par, evals, cfg, rank=rank, world=world, device=device)
        progress.evaluated(step, {**evaluation, "loss": loss_value})
    eval_loss = evaluation.get("eval_loss")
    weights = par.full_state_dict()
    if rank == 0:
        final = _unsharded(cfg, model, weights) if weights is not None else model
        final.save_pretrained(out)
        prepared.preprocessor.save_pretrained(out)
        quantized = export_int8(final, out) if cfg.quantization == "dynamic-int8" else None
        meta = {"job": cfg.job, "task": cfg.task, "steps": step, "total_steps": total, "world_size": world,
                "final_loss": loss_value, "eval_loss": eval_loss, "eval_accuracy": evaluation.get("eval_accuracy"),
                "train_rows": len(train), "data": cfg.data.to_wire(),
                "hyperparameters": hp.to_wire(), "source_model": cfg.model_path,
                "distillation": cfg.distillation.to_wire() if cfg.distillation else None,
                "lineage": cfg.lineage.to_wire() if cfg.lineage else None,
                "int8_layers": quantized, "train_seconds": train_seconds, "checkpoint_seconds": ckpt_seconds,
                "samples_per_second": trained / max(train_seconds, 1e-9),
                "dataStats": datastats.of(train, max_length=hp.max_seq_length,
                                          num_labels=getattr(final.config, "num_labels", None))}  # fmt: skip
        (out / "lepton-training.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        _write_summary(cfg, step, {**evaluation, "loss": loss_value}, out)
        log(rank, f"done: {step} steps, loss {'n/a' if loss_value is None else f'{loss_value:.4f}'}, model in {out}")
    dist.barrier()
    progress.close()
    dist.destroy_process_group()
    return 0
