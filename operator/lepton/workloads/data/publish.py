"""Writing a version: Parquet parts through temporary names, column statistics, the summary within a
termination message, and the publication bookkeeping (`current`, `versions.json`, retention).

Every file a reader may look at appears by rename, never half-written: a crash leaves the old state or
the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lepton.api.dataset import MANIFEST, VERSIONS_DIR, PreparationSummary
from lepton.workloads.data.errors import DataError, Reason

STAGING, CACHE, CURRENT, INDEX = ".staging", ".cache", "current", "versions.json"
SUMMARY_LIMIT = 4096  # bytes of a termination message
PART_BYTES = 256 << 20  # Arrow bytes per output part before the next one starts
GROUP_BYTES = 32 << 20  # Arrow bytes per row group, at most
GROUP_ROWS = 64 * 1024


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """`table` in the writer's schema: columns in its order, missing ones null, types cast."""
    extra = [n for n in table.column_names if n not in schema.names]
    if extra:
        raise DataError(Reason.BAD_FORMAT, f"column {extra[0]!r} appears only in some rows or files", file=where)
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table[f.name]
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(Reason.BAD_FORMAT, f"column {f.name!r} is {f.type} in one place and {col.type} "
                                "in another", file=where) from None  # fmt: skip
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


class ParquetParts:
    """One directory of part-NNNNN.parquet files, each written through a temporary name, the next one
    begun after `part_bytes` (Arrow bytes); the schema is the first non-empty table's. Row groups stay
    under GROUP_BYTES."""

    def __init__(self, directory: Path, part_bytes: int = PART_BYTES) -> None:
        self.directory, self.part_bytes = directory, part_bytes
        self.schema: pa.Schema | None = None
        self.writer: pq.ParquetWriter | None = None
        self.path = self.tmp = directory
        self.files: list[Path] = []
        self.rows = self._part_bytes = 0

    def _open(self) -> None:
        name = f"part-{len(self.files):05d}.parquet"
        self.path, self.tmp = self.directory / name, self.directory / f".{name}.tmp"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self._part_bytes = 0

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.path)
            self.files.append(self.path)
            self.writer = None

    def write(self, table: pa.Table, where: str) -> None:
        if not table.num_rows:
            return
        if self.schema is None:
            self.schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                                     for f in table.schema])  # fmt: skip
        table = conform(table, self.schema, where)
        if self.writer is not None and self._part_bytes >= self.part_bytes:
            self._finish()
        if self.writer is None:
            self._open()
        assert self.writer is not None
        row_bytes = max(1, table.nbytes // table.num_rows)
        self.writer.write_table(table, row_group_size=max(1, min(GROUP_ROWS, GROUP_BYTES // row_bytes)))
        self.rows += table.num_rows
        self._part_bytes += table.nbytes

    def close(self) -> list[Path]:
        self._finish()
        return self.files

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


@dataclass
class Stats:
    """Per-column statistics, accumulated batch by batch: nulls; min/max of numbers; min/max/mean
    length in characters of strings."""

    columns: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        for name in table.column_names:
            col = table[name]
            s = self.columns.setdefault(name, {"nulls": 0})
            s["nulls"] += col.null_count
            if len(col) == col.null_count:
                continue
            if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
                self._range(s, "min", "max", pc.min_max(col).as_py())
            elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                lengths = pc.utf8_length(col)
                self._range(s, "minLength", "maxLength", pc.min_max(lengths).as_py())
                s["_total"] = s.get("_total", 0) + (pc.sum(lengths).as_py() or 0)
                s["_count"] = s.get("_count", 0) + len(col) - col.null_count

    @staticmethod
    def _range(s: dict[str, Any], low: str, high: str, mm: dict[str, Any]) -> None:
        if mm["min"] is None:  # only NaN
            return
        s[low] = mm["min"] if low not in s else min(s[low], mm["min"])
        s[high] = mm["max"] if high not in s else max(s[high], mm["max"])

    def result(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, acc in self.columns.items():
            s = {k: v for k, v in acc.items() if not k.startswith("_")}
            if "_count" in acc:
                s["meanLength"] = round(acc["_total"] / max(acc["_count"], 1), 2)
            out[name] = s
        return out


def fit(summary: PreparationSummary) -> PreparationSummary:
    """The summary within a termination message's 4 KiB: step details go first, then the steps, then
    all but the newest versions and the first columns."""
    cuts: list[dict[str, Any]] = [
        {},
        {"steps": [s.model_copy(update={"details": {}}) for s in summary.steps]},
        {"steps": []},
        {"steps": [], "versions": summary.versions[:1], "columns": summary.columns[:20]},
    ]
    for cut in cuts:
        trimmed = summary.model_copy(update=cut)
        if len(trimmed.model_dump_json(by_alias=True, exclude_none=True).encode()) <= SUMMARY_LIMIT:
            return trimmed
    return summary.model_copy(update={"steps": [], "versions": [], "columns": []})


class Publication:
    """The output root's bookkeeping: which versions exist, which is current, which are kept."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / VERSIONS_DIR

    def published(self, version: str) -> bool:
        return (self.versions / version / MANIFEST).is_file()

    def manifest(self, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.versions / version / MANIFEST).read_text())
        return doc

    def order(self) -> list[str]:
        """Published versions, newest first: the recorded order, then any unrecorded ones (an index lost
        or from an older workload) by their manifests' creation time."""
        try:
            recorded = [v for v in json.loads((self.root / INDEX).read_text()) if isinstance(v, str)]
        except (OSError, ValueError, TypeError):
            recorded = []
        recorded = [v for v in dict.fromkeys(recorded) if self.published(v)]
        others = []
        for path in self.versions.iterdir() if self.versions.is_dir() else []:
            if path.name not in recorded and self.published(path.name):
                try:
                    created = str(self.manifest(path.name).get("createdAt", ""))
                except (OSError, ValueError):
                    created = ""
                others.append((created, path.name))
        return recorded + [name for _, name in sorted(others, reverse=True)]

    def publish(self, version: str, staged: Path) -> None:
        """The one rename that makes a version visible, whole."""
        self.versions.mkdir(parents=True, exist_ok=True)
        if not self.published(version):
            os.replace(staged, self.versions / version)

    def point_at(self, version: str, retain: int) -> list[str]:
        """`current` -> version; the version first in versions.json; versions beyond `retain` and staging
        of other versions removed. Returns the versions kept, newest first."""
        atomic_write(self.root / CURRENT, f"{version}\n".encode())
        order = [version, *(v for v in self.order() if v != version)]
        kept, drop = order[:retain], order[retain:]
        atomic_write(self.root / INDEX, json.dumps(kept).encode())
        staging = self.root / STAGING
        for old in drop:
            trash = staging / f"trash-{old}-{time.time_ns()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.versions / old, trash)  # gone from view at once, deleted after
            shutil.rmtree(trash, ignore_errors=True)
        self.clean_staging(keep=None)
        return kept

    def clean_staging(self, keep: str | None) -> None:
        """Staging of other versions (an input or the spec changed since) and leftover trash go."""
        staging = self.root / STAGING
        for path in staging.iterdir() if staging.is_dir() else []:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)
