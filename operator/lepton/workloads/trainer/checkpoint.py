"""Checkpoints that a restarted gang resumes from exactly: weights, optimizer, schedule, step, and
every rank's random state. The layout (`<root>/step-%08d/` with a COMPLETE marker, written as
`.tmp-step-%08d` and renamed, the newest `keep` kept) lives in `lepton.sdk.checkpoints`, shared with
custom programs; this module holds what is torch's: the files inside. The weights and optimizer are in
rank 0's state file (DDP) or in a sharded directory that every rank writes through `write_shards` (FSDP)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lepton.sdk.checkpoints import COMPLETE, begin, commit, latest, step_dir, temp_dir

__all__ = ["COMPLETE", "latest", "load", "save"]


def save(
    root: Path,
    step: int,
    *,
    rank: int,
    world: int,
    state: dict[str, Any],
    keep: int,
    write_shards: Callable[[Path], None] | None = None,
) -> Path:
    """Every rank calls this (between barriers): rank 0 writes the shared state, each rank its RNG and,
    with `write_shards`, its part of the sharded weights."""
    tmp = temp_dir(root, step)
    if rank == 0:
        begin(root, step)
        torch.save({k: v for k, v in state.items() if k != "rng"}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "world_size": world}))
    torch.distributed.barrier()
    if write_shards is not None:
        write_shards(tmp)
    torch.save(state["rng"], tmp / f"rng-{rank}.pt")
    torch.distributed.barrier()
    if rank == 0:
        commit(root, step, keep=keep)
    torch.distributed.barrier()
    return step_dir(root, step)


def load(path: Path, rank: int, map_location: torch.device | str = "cpu") -> tuple[dict[str, Any], Any]:
    state = torch.load(path / "state.pt", weights_only=False, map_location=map_location)
    rng_file = path / f"rng-{rank}.pt"
    rng = torch.load(rng_file, weights_only=False, map_location="cpu") if rng_file.exists() else None
    return state, rng
