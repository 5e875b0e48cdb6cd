"""How the model is spread over the ranks: DistributedDataParallel (every rank holds the whole model) or
FSDP (torch's `fully_shard`: parameters, gradients and optimizer state sharded, each transformer block
all-gathered only while it runs). The training loop talks to both through `Parallel`.

Checkpoints follow the strategy: DDP writes one full state file from rank 0; FSDP writes a sharded
torch.distributed.checkpoint (DCP) directory to which every rank contributes its shard, and which loads
back at any world size (an elastic job that comes back with fewer nodes resumes from it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.nn.parallel import DistributedDataParallel

from lepton.workloads.trainer.data import TrainerError

SHARDED = "sharded"  # the DCP directory inside a checkpoint written by FSDP


class Parallel:
    """DistributedDataParallel: the whole model on every rank, gradients all-reduced."""

    strategy = "ddp"

    def __init__(self, model: Any, device: torch.device, amp: torch.dtype | None) -> None:
        self.model = model.to(device)
        self.device, self.amp = device, amp
        self.wrapped: Any = self.wrap(self.model)

    def wrap(self, model: Any) -> Any:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def __call__(self, **batch: torch.Tensor) -> Any:
        return self.wrapped(**batch)

    @contextlib.contextmanager
    def micro_step(self, *, sync: bool) -> Iterator[None]:
        """One micro-batch of gradient accumulation: gradients are exchanged only on the last one; the
        forward pass runs under autocast when a reduced precision was asked for."""
        cast = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        with contextlib.nullcontext() if sync else self.wrapped.no_sync(), cast:
            yield

    def grad_scaler(self) -> Any:
        return torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)

    def eval_forward_count(self, mine: int, most: int) -> int:
        """How many evaluation forwards this rank runs: only its own batches, DDP's forward is local."""
        return mine

    # --- checkpoints -------------------------------------------------------------------------------
    def training_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What rank 0 writes into the checkpoint's state file."""
        return {"model": self.model.state_dict(), "optimizer": optimizer.state_dict()}

    def save_sharded(self, tmp: Path, optimizer: torch.optim.Optimizer) -> None:
        """Collective part of a checkpoint (nothing for DDP)."""

    def restore(self, path: Path, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        if "model" not in state:
            raise StrategyMismatchError(path, "fsdp", self.strategy)
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    def full_state_dict(self) -> dict[str, Any] | None:
        """The whole model's weights, gathered (every rank calls this); None: each rank's model is whole."""
        return None


class ShardedParallel(Parallel):
    """FSDP2: each transformer block (the model's `_no_split_modules`) and then the root are sharded."""

    strategy = "fsdp"

    def wrap(self, model: Any) -> Any:
        amp = self.amp
        kwargs: dict[str, Any] = {}
        if amp is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32)
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, **kwargs)
        fully_shard(model, **kwargs)
        return model  # sharded in place

    @contextlib.contextmanager
    def micro_step(self, *, sync: bool) -> Iterator[None]:
        # Precision comes from the mixed-precision policy (parameters cast once per all-gather), not autocast.
        sharded: FSDPModule = self.wrapped
        sharded.set_requires_gradient_sync(sync)
        yield

    def grad_scaler(self) -> Any:
        return ShardedGradScaler(enabled=self.amp == torch.float16)

    def eval_forward_count(self, mine: int, most: int) -> int:
        # Every forward all-gathers parameters: all ranks must run as many forwards as the busiest one.
        return most

    def training_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {}

    def save_sharded(self, tmp: Path, optimizer: torch.optim.Optimizer) -> None:
        model_state, optim_state = get_state_dict(self.model, optimizer)
        dcp_save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / SHARDED)

    def restore(self, path: Path, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        if not (path / SHARDED).is_dir():
            raise StrategyMismatchError(path, "ddp", self.strategy)
        model_state, optim_state = get_state_dict(self.model, optimizer)
        dcp_load({"model": model_state, "optimizer": optim_state}, checkpoint_id=path / SHARDED)  # in place
        set_state_dict(self.model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)

    def full_state_dict(self) -> dict[str, Any] | None:
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class StrategyMismatchError(TrainerError):
    def __init__(self, path: Path, written: str, wanted: str) -> None:
        super().__init__(
            f"checkpoint {path.name} was written with strategy {written}, this run uses {wanted}: "
            f"keep the strategy, or start over with checkpoint.resume: none"
        )


def parallelize(strategy: str, model: Any, device: torch.device, amp: torch.dtype | None) -> Parallel:
    return ShardedParallel(model, device, amp) if strategy == "fsdp" else Parallel(model, device, amp)
