"""One preparation: version by content, staged work in resumable shards, one atomic publish.

    <output>/versions/<version>/{train,validation,test}/part-00000.parquet, manifest.json
    <output>/.staging/<version>/shards/shard-NNNNN.{parquet,npz,json}   finished input files
    <output>/.staging/<version>/out/                                     the version being written
    <output>/current, <output>/versions.json                             newest version; kept, newest first

Phase 1 streams each input file through the steps and the split into a shard; a shard's parquet is
renamed into place last, after the steps' state (dedupe's hashes) and counts, so a finished shard
always carries what a resumed run needs to go on exactly where it stopped. Phase 2 reads the shards
back (decontamination's reference first), augments the training split, tokenises, and writes one file
per split with column statistics; `out/` is renamed to `versions/<version>/` in one step. Nothing is
visible until then; SIGKILL at any point leaves staging, never a partial version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lepton.api.contract import DATA_FORMAT_VERSION, DataConfig
from lepton.api.dataset import MANIFEST, SPLITS, VERSIONS_DIR, PreparationSummary, SplitRows, StepCount
from lepton.workloads.data.errors import DataError, Reason
from lepton.workloads.data.metrics import DataMetrics
from lepton.workloads.data.sources import InputFile, list_inputs, read_batches
from lepton.workloads.data.stages import SPLIT_COLUMN, Decontaminator, Tokenizer, assign_split, augment
from lepton.workloads.data.steps import StepRunner, build_steps

STAGING, CACHE, CURRENT, INDEX = ".staging", ".cache", "current", "versions.json"
SUMMARY_LIMIT = 4096  # bytes of a termination message
Log = Callable[[str], None]


def batch_bytes(memory_limit: int | None) -> int:
    """Input bytes per batch: a batch grows several times in Arrow and through the steps."""
    if memory_limit is None:
        return 16 << 20
    return int(min(max(memory_limit // 32, 1 << 20), 64 << 20))


def _workload_version() -> str:
    try:
        return package_version("lepton-operator")
    except PackageNotFoundError:
        return "dev"


def version_digest(config: DataConfig, inputs: list[InputFile], tokenizer: Tokenizer | None) -> str:
    """SHA-256 over what decides the result: the inputs' content, the preparation spec, the workload."""
    doc = {
        "format": DATA_FORMAT_VERSION,
        "workload": _workload_version(),
        "inputs": [[f.source, f.name, f.size, f.digest, f.format] for f in inputs],
        "sources": [s.format for s in config.sources],
        "spec": config.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            include={"text_field", "pipeline", "split", "decontaminate", "augment"},
        ),
        "tokenizer": [tokenizer.digest, config.max_length] if tokenizer else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """`table` in the writer's schema: columns reordered, nulls and promotions cast."""
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
                raise DataError(Reason.BAD_FORMAT, f"column {f.name!r} is {f.type} in one place and {col.type} in "
                                "another", file=where) from None  # fmt: skip
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


class _Writer:
    """One Parquet file written through a temporary name; its schema is the first table's."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table, where: str) -> None:
        if self.writer is None:
            if not table.num_rows:
                return
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        table = _conform(table, self.writer.schema, where)
        self.writer.write_table(table, row_group_size=64 * 1024)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.path)


@dataclass
class _Stats:
    """Per-column statistics, accumulated batch by batch."""

    columns: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        for name in table.column_names:
            col, s = table[name], self.columns.setdefault(name, {"type": str(table[name].type), "nulls": 0})
            s["nulls"] += col.null_count
            values: pa.ChunkedArray | None = None
            if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
                values = col
            elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                values = pc.utf8_length(col)
                s["totalLength"] = s.get("totalLength", 0) + (pc.sum(values).as_py() or 0)
                s["count"] = s.get("count", 0) + len(col) - col.null_count
            if values is not None and len(values) > col.null_count:
                mm = pc.min_max(values).as_py()
                key = ("minLength", "maxLength") if "totalLength" in s else ("min", "max")
                s[key[0]] = mm["min"] if key[0] not in s else min(s[key[0]], mm["min"])
                s[key[1]] = mm["max"] if key[1] not in s else max(s[key[1]], mm["max"])

    def result(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, acc in self.columns.items():
            s = dict(acc)
            if "totalLength" in s:
                s["meanLength"] = round(s.pop("totalLength") / max(s.pop("count"), 1), 2)
            out[name] = s
        return out


class Preparation:
    def __init__(self, config: DataConfig, metrics: DataMetrics | None = None, log: Log | None = None) -> None:
        self.config, self.metrics = config, metrics or DataMetrics()
        self.log: Log = log or (lambda _: None)
        self.root = Path(config.output_dir)
        self.batch_bytes = batch_bytes(config.memory_limit_bytes)

    # --- publication ----------------------------------------------------------------------------
    def _index(self) -> list[str]:
        try:
            kept = json.loads((self.root / INDEX).read_text())
            return [v for v in kept if isinstance(v, str) and (self.root / VERSIONS_DIR / v / MANIFEST).is_file()]
        except (OSError, ValueError):
            return []

    def _point_at(self, version: str) -> list[str]:
        """`current` -> version, the version first in the index, versions beyond `retain` deleted."""
        kept = [version, *(v for v in self._index() if v != version)]
        drop, kept = kept[self.config.retain :], kept[: self.config.retain]
        _atomic_write(self.root / INDEX, json.dumps(kept).encode())
        _atomic_write(self.root / CURRENT, version.encode() + b"\n")
        for old in drop:
            trash = self.root / STAGING / f"trash-{old}-{time.time_ns()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / VERSIONS_DIR / old, trash)  # gone from view at once, deleted after
            shutil.rmtree(trash, ignore_errors=True)
        return kept

    def _summary(self, manifest: dict[str, Any], reused: bool, versions: list[str]) -> PreparationSummary:
        summary = PreparationSummary(
            version=manifest["version"], reused=reused, rows=SplitRows(**manifest["rows"]), bytes=manifest["bytes"],
            columns=list(manifest["schema"]), steps=[StepCount.model_validate(s) for s in manifest["steps"]],
            versions=versions,
        )  # fmt: skip
        return fit(summary)

    # --- the run --------------------------------------------------------------------------------
    def run(self) -> PreparationSummary:
        started = time.monotonic()
        try:
            (self.root / CACHE).mkdir(parents=True, exist_ok=True)
            (self.root / VERSIONS_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise DataError(Reason.OUTPUT_UNWRITABLE, f"{self.root}: {exc.strerror}") from None
        inputs = [f for i, s in enumerate(self.config.sources) for f in list_inputs(s, i, self.root / CACHE)]
        tokenizer = (
            Tokenizer(self.config.tokenizer_path, self.config.max_length) if self.config.tokenizer_path else None
        )
        digest = version_digest(self.config, inputs, tokenizer)
        version = digest[:16]
        published = self.root / VERSIONS_DIR / version
        self.log(f"version {version} from {len(inputs)} input file(s)")
        if (published / MANIFEST).is_file():
            manifest = json.loads((published / MANIFEST).read_text())
            self.metrics.reused.set(1)
            return self._summary(manifest, True, self._point_at(version))
        staging = self.root / STAGING / version
        steps = build_steps(self.config.pipeline, self.config.text_field)
        self._clean_staging(keep=version)
        self._phase1(inputs, staging / "shards", steps)
        manifest = self._phase2(inputs, staging, steps, version=version, digest=digest, tokenizer=tokenizer)
        if not published.exists():
            os.replace(staging / "out", published)  # the one switch that makes the version visible
        shutil.rmtree(staging, ignore_errors=True)
        versions = self._point_at(version)
        self.metrics.seconds.set(time.monotonic() - started)
        for split in SPLITS:
            self.metrics.rows_out.labels(split=split).set(manifest["rows"][split])
        return self._summary(manifest, False, versions)

    def _clean_staging(self, keep: str) -> None:
        """Staging of other versions (an input changed since) and old trash go."""
        for path in (self.root / STAGING).glob("*") if (self.root / STAGING).is_dir() else []:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)

    def _phase1(self, inputs: list[InputFile], shards: Path, steps: list[StepRunner]) -> None:
        shards.mkdir(parents=True, exist_ok=True)
        done = [k for k in range(len(inputs)) if (shards / f"shard-{k:05d}.parquet").is_file()]
        last = -1
        while last + 1 in done:
            last += 1
        if last >= 0:  # resume: the steps' state as it was after the last finished shard
            counts = json.loads((shards / f"shard-{last:05d}.json").read_text())
            with np.load(shards / f"shard-{last:05d}.npz") as saved:
                state = {k: saved[k] for k in saved.files}
            for step in steps:
                c = counts[step.name]
                step.restore({k.split("/", 1)[1]: v for k, v in state.items() if k.split("/", 1)[0] == step.name},
                             c["rowsIn"], c["rowsOut"], c["details"])  # fmt: skip
            self.log(f"resuming after {last + 1} finished shard(s)")
            self.metrics.shards.labels(outcome="resumed").inc(last + 1)
        total = sum(f.size or 0 for f in inputs) or None
        done_bytes = sum(f.size or 0 for f in inputs[: last + 1])
        split = self.config.split
        for k in range(last + 1, len(inputs)):
            file, source = inputs[k], self.config.sources[inputs[k].source]
            writer = _Writer(shards / f"shard-{k:05d}.parquet")
            for batch in read_batches(source, file, self.root / CACHE, self.batch_bytes):
                self.metrics.rows_read.inc(batch.num_rows)
                table = batch
                for step in steps:
                    table = step.apply(table)
                key = (split.key if split else None) or self.config.text_field
                if key not in table.column_names:
                    raise DataError(Reason.MISSING_COLUMN, f"split: no column {key!r}", file=file.name)
                writer.write(table.append_column(SPLIT_COLUMN, assign_split(table[key], split)), file.name)
            size = file.size or 0
            done_bytes += size
            self.metrics.bytes_read.inc(size)
            self.metrics.progress(done_bytes, total)
            state = {f"{s.name}/{k2}": v for s in steps for k2, v in s.state().items()}
            np.savez(shards / f".shard-{k:05d}.npz", **state)  # np.savez appends .npz to a name without it
            os.replace(shards / f".shard-{k:05d}.npz", shards / f"shard-{k:05d}.npz")
            counts = {s.name: {"rowsIn": s.rows_in, "rowsOut": s.rows_out, "details": s.details} for s in steps}
            _atomic_write(shards / f"shard-{k:05d}.json", json.dumps(counts).encode())
            if writer.writer is None:  # nothing left of this file: an empty shard still marks it done
                pq.write_table(pa.table({SPLIT_COLUMN: pa.array([], pa.string())}), writer.tmp)
                os.replace(writer.tmp, writer.path)
            else:
                writer.close()
            self.metrics.shards.labels(outcome="done").inc()
            self.log(f"shard {k + 1}/{len(inputs)} done: {file.name}")

    def _shard_tables(self, shards: Path, count: int) -> Any:
        for k in range(count):
            file = pq.ParquetFile(shards / f"shard-{k:05d}.parquet")
            if file.metadata.num_rows == 0:
                continue
            rows = max(1024, self.batch_bytes // max(1, file.metadata.row_group(0).total_byte_size
                                                      // max(1, file.metadata.row_group(0).num_rows)))  # fmt: skip
            for batch in file.iter_batches(batch_size=rows):
                yield pa.Table.from_batches([batch])

    def _phase2(self, inputs: list[InputFile], staging: Path, steps: list[StepRunner], *, version: str,
                digest: str, tokenizer: Tokenizer | None) -> dict[str, Any]:  # fmt: skip
        config, text = self.config, self.config.text_field
        shards, out = staging / "shards", staging / "out"
        shutil.rmtree(out, ignore_errors=True)
        decon = None
        if config.decontaminate is not None and config.split is not None:
            decon = Decontaminator(config.decontaminate)
            for table in self._shard_tables(shards, len(inputs)):
                held_out = table.filter(pc.not_equal(table[SPLIT_COLUMN], "train"))
                if held_out.num_rows:
                    decon.add_reference(held_out[text])
        writers = {s: _Writer(out / s / "part-00000.parquet") for s in SPLITS}
        stats, kept, assigned = _Stats(), 0, dict.fromkeys(SPLITS, 0)
        for table in self._shard_tables(shards, len(inputs)):
            kept += table.num_rows
            for split in SPLITS:
                part = table.filter(pc.equal(table[SPLIT_COLUMN], split)).drop_columns([SPLIT_COLUMN])
                if not part.num_rows:
                    continue
                assigned[split] += part.num_rows
                if split == "train" and decon is not None:
                    part = decon.filter(part, text)
                if split == "train" and config.augment is not None:
                    part = augment(part, text, config.augment)
                if tokenizer is not None:
                    part = tokenizer.apply(part, text)
                writers[split].write(part, split)
                stats.add(part)
        for w in writers.values():
            w.close()
        if not kept or not any(w.rows for w in writers.values()):
            raise DataError(Reason.EMPTY_RESULT, "no rows left after the pipeline's steps"
                            + ("" if sum(s.rows_in for s in steps[:1]) else " (the inputs have no rows)"))  # fmt: skip
        rows = {s: writers[s].rows for s in SPLITS}
        counts = [StepCount(step=s.name, rows_in=s.rows_in, rows_out=s.rows_out, details=s.details) for s in steps]
        if config.split is not None:
            counts.append(StepCount(step="split", rows_in=kept, rows_out=kept, details=assigned))
        if decon is not None:
            counts.append(StepCount(step="decontaminate", rows_in=kept, rows_out=kept - decon.removed,
                                    details={"removed": decon.removed}))  # fmt: skip
        if config.augment is not None:
            train_in = rows["train"] // (config.augment.copies + 1)
            counts.append(StepCount(step="augment", rows_in=train_in, rows_out=rows["train"],
                                    details={"added": rows["train"] - train_in}))  # fmt: skip
        schema = pq.read_schema(next(w.path for w in writers.values() if w.rows))
        manifest = {
            "version": version,
            "digest": f"sha256:{digest}",
            "formatVersion": DATA_FORMAT_VERSION,
            "workloadVersion": _workload_version(),
            "dataset": config.dataset,
            "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "inputs": [
                {"source": f.source, "name": f.name, "size": f.size, "digest": f.digest, "format": f.format}
                for f in inputs
            ],
            "spec": config.model_dump(
                mode="json",
                by_alias=True,
                exclude_none=True,
                include={"text_field", "pipeline", "split", "decontaminate", "augment"},
            ),
            "schema": {f.name: str(f.type) for f in schema},
            "rows": rows,
            "files": {s: [f"{s}/part-00000.parquet"] for s in SPLITS if rows[s]},
            "bytes": sum(w.path.stat().st_size for w in writers.values() if w.rows),
            "statistics": stats.result(),
            "steps": [c.to_wire() for c in counts],
        }
        _atomic_write(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        for step in steps:
            self.metrics.step_rows.labels(step=step.name).inc(step.rows_out)
        return manifest


def fit(summary: PreparationSummary) -> PreparationSummary:
    """The summary within a termination message's 4 KiB: details go first, then steps, then versions."""
    cuts: list[dict[str, Any]] = [
        {},
        {"steps": [s.model_copy(update={"details": {}}) for s in summary.steps]},
        {"steps": []},
        {"steps": [], "versions": summary.versions[:1], "columns": summary.columns[:20]},
    ]
    for cut in cuts:
        trimmed = summary.model_copy(update=cut)
        if len(trimmed.model_dump_json(by_alias=True, exclude_none=True)) <= SUMMARY_LIMIT:
            return trimmed
    return summary.model_copy(update={"steps": [], "versions": [], "columns": []})


def prepare(config: DataConfig, metrics: DataMetrics | None = None, log: Log | None = None) -> PreparationSummary:
    """Prepare (or find) the version of `config`'s inputs and pipeline; raises DataError."""
    return Preparation(config, metrics, log).run()
