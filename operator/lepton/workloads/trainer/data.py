"""Training rows from jsonl, csv or parquet files, tokenised once, ordered deterministically."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from lepton.api.contract import TrainerData


class TrainerError(ValueError):
    """A problem the user can fix (data, model, configuration); reported without a traceback."""


class DataError(TrainerError):
    pass


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
            try:
                import pyarrow.parquet as pq  # optional: only parquet input needs it
            except ImportError as exc:
                raise DataError("parquet input needs pyarrow in the trainer image") from exc
            rows += pq.read_table(file).to_pylist()
    missing = [i for i, r in enumerate(rows) if not isinstance(r.get(data.text_field), str)]
    if missing:
        raise DataError(f"{len(missing)} rows have no text in field {data.text_field!r} (first: row {missing[0]})")
    if not rows:
        raise DataError(f"{data.path}: no rows")
    return rows


def tokenize(rows: list[dict[str, Any]], tokenizer: Any, text_field: str, max_length: int) -> list[list[int]]:
    encoded = tokenizer([r[text_field] for r in rows], truncation=True, max_length=max_length)
    return [ids for ids in encoded["input_ids"] if len(ids) > 1]


def collate(batch: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
    labels = input_ids.masked_fill(attention == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The same permutation on every rank and every run: resume depends on it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [int(i) for i in torch.randperm(n, generator=g)]
