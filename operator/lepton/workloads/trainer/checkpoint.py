"""Checkpoints that a restarted gang resumes from exactly: weights, optimizer, schedule, step, and
every rank's random state. Written to a temporary directory and renamed, so a checkpoint is either
complete or absent. The weights and optimizer are in rank 0's state file (DDP) or in a sharded
directory that every rank writes through `write_shards` (FSDP)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

COMPLETE = "COMPLETE"


def latest(root: Path) -> Path | None:
    done = [p for p in root.glob("step-*") if (p / COMPLETE).exists()] if root.exists() else []
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


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
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({k: v for k, v in state.items() if k != "rng"}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "world_size": world}))
    torch.distributed.barrier()
    if write_shards is not None:
        write_shards(tmp)
    torch.save(state["rng"], tmp / f"rng-{rank}.pt")
    torch.distributed.barrier()
    if rank == 0:
        (tmp / COMPLETE).touch()
        os.replace(tmp, final)
        old = sorted((p for p in root.glob("step-*") if p != final), key=lambda p: p.name)
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    torch.distributed.barrier()
    return final


def load(path: Path, rank: int, map_location: torch.device | str = "cpu") -> tuple[dict[str, Any], Any]:
    state = torch.load(path / "state.pt", weights_only=False, map_location=map_location)
    rng_file = path / f"rng-{rank}.pt"
    rng = torch.load(rng_file, weights_only=False, map_location="cpu") if rng_file.exists() else None
    return state, rng
