"""Training rows from jsonl, csv or parquet files, tokenised once, ordered deterministically.

What the training loop needs of a split is `Samples`: its length and a batch of model inputs for a
list of row indices. Text gives `Packed` (here), images give `images.Images`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Protocol

import torch

from lepton.api.contract import TrainerData


class TrainerError(ValueError):
    """A problem the user can fix (data, model, configuration); reported without a traceback."""


class DataError(TrainerError):
    pass


class Samples(Protocol):
    """One split of a task's data, encoded once. `epoch` is given for the training split only: a split
    with random augmentation draws it as a pure function of (seed, epoch, row), so resume stays exact."""

    def __len__(self) -> int: ...

    def batch(self, indices: list[int], epoch: int | None = None) -> dict[str, torch.Tensor]: ...


def split(n: int, seed: int, validation_fraction: float) -> tuple[list[int], list[int]]:
    """(training rows, validation rows) of `n` rows: the validation split is the first
    `int(n * validation_fraction)` rows of a seeded permutation, the same for every task."""
    order = epoch_order(n, seed, -1)
    n_eval = int(n * validation_fraction)
    return order[n_eval:], order[:n_eval]


def read_parquet(file: Path, columns: list[str] | None = None) -> Any:
    """The pyarrow Table in `file` (only `columns`, when given: each must be there)."""
    try:
        import pyarrow.parquet as pq  # optional: only parquet input needs it
    except ImportError as exc:
        raise DataError("parquet input needs pyarrow in the trainer image") from exc
    try:
        names = pq.read_schema(file).names
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
    missing = [c for c in columns or () if c not in names]
    if missing:
        raise DataError(f"{file}: no column {missing[0]!r} (it has {', '.join(names) or 'none'})")
    return pq.read_table(file, columns=columns)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".csv", ".parquet"))
        if not files:
            raise DataError(f"{path}: no .jsonl, .csv or .parquet files")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    return [path]


def read_rows(data: TrainerData) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for file in _files(Path(data.path)):
        fmt = data.format if data.format != "auto" else {".csv": "csv", ".parquet": "parquet"}.get(file.suffix, "jsonl")
        if fmt == "jsonl":
            with file.open() as fh:
                rows += [json.loads(line) for line in fh if line.strip()]
        elif fmt == "csv":
            with file.open(newline="") as fh:
                rows += list(csv.DictReader(fh))
        else:
            rows += read_parquet(file).to_pylist()
    missing = [i for i, r in enumerate(rows) if not isinstance(r.get(data.text_field), str)]
    if missing:
        raise DataError(f"{len(missing)} rows have no text in field {data.text_field!r} (first: row {missing[0]})")
    if not rows:
        raise DataError(f"{data.path}: no rows")
    return rows


def tokenize(rows: list[dict[str, Any]], tokenizer: Any, text_field: str, max_length: int) -> list[list[int]]:
    if not rows:  # e.g. no validation split
        return []
    encoded = tokenizer([r[text_field] for r in rows], truncation=True, max_length=max_length)
    return [ids for ids in encoded["input_ids"] if len(ids) > 1]


class Packed:
    """Every sample padded once into one tensor; a batch is an index lookup and a trim to its longest
    row (what a per-batch collate would build, without per-step Python loops)."""

    def __init__(self, samples: list[list[int]], pad_id: int, labels: list[int] | None = None) -> None:
        width = max((len(s) for s in samples), default=1)
        self.input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
        self.lengths = torch.tensor([len(s) for s in samples], dtype=torch.long)
        for i, ids in enumerate(samples):
            self.input_ids[i, : len(ids)] = torch.tensor(ids)
        self.attention = (torch.arange(width)[None, :] < self.lengths[:, None]).long()
        self.labels = torch.tensor(labels) if labels is not None else None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, indices: list[int], epoch: int | None = None) -> dict[str, torch.Tensor]:
        idx = torch.tensor(indices, dtype=torch.long)
        width = int(self.lengths[idx].max())
        ids, mask = self.input_ids[idx, :width], self.attention[idx, :width]
        if self.labels is not None:
            return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[idx]}
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The same permutation on every rank and every run: resume depends on it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [int(i) for i in torch.randperm(n, generator=g)]
