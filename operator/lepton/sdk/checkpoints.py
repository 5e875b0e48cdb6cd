"""The checkpoint layout every Lepton training program shares (the built-in trainer and user code):

    <root>/step-00000120/            one complete checkpoint, any files in it
    <root>/step-00000120/COMPLETE    written last: a directory without it is not a checkpoint
    <root>/.tmp-step-00000130/       one being written; renamed to step-00000130 once complete

So a checkpoint is either complete or absent, whatever kills the writer, and `latest` is what a
restarted gang resumes from. What goes into a checkpoint (torch.save files, shards, JSON) is the
writer's business. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

COMPLETE = "COMPLETE"
_NAME = re.compile(r"step-(\d+)")


def step_dir(root: Path, step: int) -> Path:
    """Where the complete checkpoint of `step` lives."""
    return root / f"step-{step:08d}"


def temp_dir(root: Path, step: int) -> Path:
    """Where the checkpoint of `step` is written before it is complete."""
    return root / f".tmp-step-{step:08d}"


def step_of(path: Path | str) -> int:
    """The step of a checkpoint directory (`.../step-00000120` -> 120)."""
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint directory (step-<number>)")
    return int(match.group(1))


def complete(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=step_of)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    found = complete(root)
    return found[-1] if found else None


def begin(root: Path, step: int) -> Path:
    """A fresh, empty temporary directory for the checkpoint of `step` (a leftover of an interrupted
    writer is removed)."""
    tmp = temp_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(root: Path, step: int, keep: int) -> Path:
    """Mark the temporary checkpoint of `step` complete, rename it into place and keep only the `keep`
    newest (this one always among them). Returns its final path."""
    tmp, final = temp_dir(root, step), step_dir(root, step)
    (tmp / COMPLETE).touch()
    if final.exists():  # the same step written again (a run started over with resume: none)
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune(root, keep, current=final)
    return final


def prune(root: Path, keep: int, current: Path | None = None) -> list[Path]:
    """Remove all but the `keep` newest complete checkpoints; `current` counts as one of them whatever its
    step. Returns what was removed."""
    others = [p for p in complete(root) if p != current]
    kept = max(keep - (1 if current is not None else 0), 0)
    removed = others[: max(len(others) - kept, 0)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
