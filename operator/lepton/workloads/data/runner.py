"""One preparation: version by content, staged work in resumable shards, one atomic publish.

    <output>/versions/<version>/{train,validation,test}/part-NNNNN.parquet, manifest.json
    <output>/.staging/<version>/shards/shard-NNNNN.{parquet,npz,json}   finished input files
    <output>/.staging/<version>/out/                                     the version being written
    <output>/current, <output>/versions.json                             newest version; kept, newest first

Phase 1 streams each input file (a shard) through the steps and the split; the steps' state (dedupe's
hashes) and counts are saved before the shard's parquet is renamed into place, so a finished shard
always carries what a resumed run needs to go on exactly where it stopped. Phase 2 streams the shards
back (decontamination's reference first), augments the training split, tokenises, and writes the parts
of each split with column statistics. Phase 3 writes the manifest and renames `out/` to
`versions/<version>/` in one step: SIGKILL at any point leaves staging, never a partial version.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lepton.api.contract import DATA_FORMAT_VERSION, DataConfig, ProgressReport
from lepton.api.dataset import MANIFEST, SPLITS, PreparationSummary, SplitRows, StepCount
from lepton.workloads.data.errors import DataError, Reason
from lepton.workloads.data.metrics import ByteProgress, DataMetrics
from lepton.workloads.data.publish import (
    CACHE,
    STAGING,
    ParquetParts,
    Publication,
    Stats,
    atomic_write,
    conform,
    fit,
)
from lepton.workloads.data.sources import InputFile, list_inputs, read_batches
from lepton.workloads.data.stages import Decontaminator, Tokenizer, assign_split, augment
from lepton.workloads.data.steps import StepRunner, build_steps
from lepton.workloads.data.version import batch_bytes, input_doc, spec, version_digest, workload_version

SPLIT = "__lepton_split"  # the shards' split column, dropped on output
Log = Callable[[str], None]
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def prepare(
    config: DataConfig,
    *,
    progress: Callable[[ProgressReport], None] | None = None,
    metrics: DataMetrics | None = None,
    log: Log | None = None,
) -> PreparationSummary:
    """Prepare (or find) the version of `config`'s inputs and spec; raises DataError. Never leaves a
    half-written version visible."""
    return Preparation(config, progress=progress, metrics=metrics, log=log).run()


def _shard(shards: Path, k: int, ext: str) -> Path:
    return shards / f"shard-{k:05d}.{ext}"


class Preparation:
    def __init__(
        self,
        config: DataConfig,
        *,
        progress: Callable[[ProgressReport], None] | None = None,
        metrics: DataMetrics | None = None,
        log: Log | None = None,
    ) -> None:
        self.config, self.metrics = config, metrics or DataMetrics()
        self.report = progress or (lambda _: None)
        self.log: Log = log or (lambda _: None)
        self.root = Path(config.output_dir)
        self.cache = self.root / CACHE
        self.batch_bytes = batch_bytes(config.memory_limit_bytes)
        self.publication = Publication(self.root)

    def run(self) -> PreparationSummary:
        started = time.monotonic()
        try:
            summary = self._run()
        except OSError as exc:  # a write under the output root refused (permissions, read-only, full)
            where = str(exc.filename or "")
            if exc.errno in _UNWRITABLE and where.startswith(str(self.root)):
                raise DataError(Reason.OUTPUT_UNWRITABLE, f"{where}: {exc.strerror}") from None
            raise
        self.metrics.seconds.set(time.monotonic() - started)
        return summary

    def _probe(self) -> None:
        try:
            (self.root / STAGING).mkdir(parents=True, exist_ok=True)
            self.cache.mkdir(exist_ok=True)
            self.publication.versions.mkdir(exist_ok=True)
            atomic_write(self.root / STAGING / ".probe", b"")
            (self.root / STAGING / ".probe").unlink()
        except OSError as exc:
            raise DataError(Reason.OUTPUT_UNWRITABLE, f"{self.root}: {exc.strerror or exc}") from None

    def _run(self) -> PreparationSummary:
        config = self.config
        self._probe()
        inputs = [f for i, s in enumerate(config.sources) for f in list_inputs(s, i, self.cache)]
        if config.tokenizer_path is not None and not (Path(config.tokenizer_path) / "tokenizer.json").is_file():
            raise DataError(Reason.SOURCE_UNREACHABLE, f"tokenize: no tokenizer.json in {config.tokenizer_path}")
        digest = version_digest(config, inputs)
        version = digest[:16]
        self.log(f"version {version} from {len(inputs)} input file(s)")
        if self.publication.published(version):
            manifest = self.publication.manifest(version)
            self.metrics.reused.set(1)
            self._count_output(manifest)
            return self._summary(manifest, True, self.publication.point_at(version, config.retain))
        staging = self.root / STAGING / version
        self.publication.clean_staging(keep=version)
        steps = build_steps(config.pipeline, config.text_field)
        tokenizer = Tokenizer(config.tokenizer_path, config.max_length) if config.tokenizer_path else None
        kept = self._phase1(inputs, staging / "shards", steps)
        if not kept:
            had_rows = bool(steps and steps[0].rows_in)  # without steps, no row kept means no row read
            raise DataError(Reason.EMPTY_RESULT, "no rows left after the pipeline's steps" if had_rows
                            else "the inputs have no rows")  # fmt: skip
        for step in steps:  # dedupe's state (~120 bytes a kept row) is not needed by phase 2
            step.release()
        pa.default_memory_pool().release_unused()
        manifest = self._phase2(inputs, staging, steps, tokenizer, version=version, digest=digest)
        self.publication.publish(version, staging / "out")  # the one switch that makes the version visible
        shutil.rmtree(staging, ignore_errors=True)
        self._count_output(manifest)
        return self._summary(manifest, False, self.publication.point_at(version, config.retain))

    def _count_output(self, manifest: dict[str, Any]) -> None:
        for split in SPLITS:
            self.metrics.rows_out.labels(split=split).set(manifest["rows"].get(split, 0))

    def _summary(self, manifest: dict[str, Any], reused: bool, versions: list[str]) -> PreparationSummary:
        summary = PreparationSummary(
            version=manifest["version"], reused=reused, rows=SplitRows(**manifest["rows"]), bytes=manifest["bytes"],
            columns=list(manifest["schema"]), steps=[StepCount.model_validate(s) for s in manifest["steps"]],
            versions=versions,
        )  # fmt: skip
        return fit(summary)

    # --- phase 1: input files -> shards -------------------------------------------------------------
    def _restore(self, shards: Path, last: int, steps: list[StepRunner]) -> int:
        """The steps as they were after shard `last`; returns the rows kept so far."""
        counts = json.loads(_shard(shards, last, "json").read_text())
        with np.load(_shard(shards, last, "npz")) as saved:
            state = {k: saved[k] for k in saved.files}
        for i, step in enumerate(steps):
            c = counts["steps"][step.name]
            prefix = f"s{i}."
            step.restore({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)},
                         c["rowsIn"], c["rowsOut"], c["details"])  # fmt: skip
        return int(counts["kept"])

    def _save(self, shards: Path, k: int, steps: list[StepRunner], kept: int) -> None:
        tmp = shards / f".shard-{k:05d}.npz.tmp"
        arrays: dict[str, Any] = {f"s{i}.{key}": v for i, s in enumerate(steps) for key, v in s.state().items()}
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, _shard(shards, k, "npz"))
        counts = {"kept": kept, "steps": {s.name: {"rowsIn": s.rows_in, "rowsOut": s.rows_out,
                                                   "details": s.details} for s in steps}}  # fmt: skip
        atomic_write(_shard(shards, k, "json"), json.dumps(counts).encode())

    def _needs_text(self) -> bool:
        c = self.config
        return c.decontaminate is not None or c.augment is not None or c.tokenizer_path is not None

    def _phase1(self, inputs: list[InputFile], shards: Path, steps: list[StepRunner]) -> int:
        config, split = self.config, self.config.split
        shards.mkdir(parents=True, exist_ok=True)
        last = -1
        while last + 1 < len(inputs) and _shard(shards, last + 1, "parquet").is_file():
            last += 1
        kept = 0
        if last >= 0:
            kept = self._restore(shards, last, steps)
            self.log(f"resuming after {last + 1} finished shard(s)")
            self.metrics.shards.labels(outcome="skipped").inc(last + 1)
        sizes = [f.size for f in inputs]
        total = sum(s for s in sizes if s is not None) if None not in sizes else None
        bytes_done = sum(s or 0 for s in sizes[: last + 1])
        meter = ByteProgress(total, bytes_done)
        self._report(meter.advance(bytes_done))
        key = (split.key if split else None) or config.text_field
        for k in range(last + 1, len(inputs)):
            file, source = inputs[k], config.sources[inputs[k].source]
            tmp = shards / f".shard-{k:05d}.parquet.tmp"
            writer: pq.ParquetWriter | None = None
            read = 0
            for batch in read_batches(source, file, self.cache, self.batch_bytes):
                self.metrics.rows_read.inc(batch.num_rows)
                table = batch
                for step in steps:
                    table = step.apply(table)
                if split and key not in table.column_names:
                    raise DataError(Reason.MISSING_COLUMN, f"split: no column {key!r}", file=file.name)
                if self._needs_text() and config.text_field not in table.column_names:
                    raise DataError(Reason.MISSING_COLUMN, f"no text column {config.text_field!r} to "
                                    "decontaminate, augment or tokenize", file=file.name)  # fmt: skip
                column = assign_split(table[key], split) if split else pa.array(["train"] * table.num_rows)
                table = table.append_column(SPLIT, column)
                if table.num_rows:
                    if writer is None:
                        schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                                            for f in table.schema])  # fmt: skip
                        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                    writer.write_table(conform(table, writer.schema, file.name))
                    kept += table.num_rows
                read += self.batch_bytes  # an estimate: a file counts as read in full once its shard is done
                self._report(meter.advance(bytes_done + min(read, max((file.size or 0) - 1, 0))))
            if writer is None:  # nothing left of this file: an empty shard still marks it done
                pq.write_table(pa.table({SPLIT: pa.array([], pa.string())}), tmp)
            else:
                writer.close()
            self._save(shards, k, steps, kept)  # state first: a finished shard always has its state
            os.replace(tmp, _shard(shards, k, "parquet"))
            bytes_done += file.size or 0
            self.metrics.bytes_read.inc(file.size or 0)
            self.metrics.shards.labels(outcome="done").inc()
            self._report(meter.advance(bytes_done))
            self.log(f"shard {k + 1}/{len(inputs)} done: {file.name}")
        return kept

    def _report(self, report: ProgressReport) -> None:
        self.metrics.update(report)
        self.report(report)

    # --- phase 2: shards -> splits ------------------------------------------------------------------
    def _shard_tables(self, shards: Path, count: int) -> Iterator[pa.Table]:
        """Every shard's rows, streamed in batches of about batch_bytes."""
        for k in range(count):
            file = pq.ParquetFile(_shard(shards, k, "parquet"))
            meta = file.metadata
            if meta.num_rows == 0:
                continue
            row_bytes = max(1, sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
                            // meta.num_rows)  # fmt: skip
            for batch in file.iter_batches(batch_size=max(1024, self.batch_bytes // row_bytes)):
                yield pa.Table.from_batches([batch])

    def _phase2(self, inputs: list[InputFile], staging: Path, steps: list[StepRunner], tokenizer: Tokenizer | None,
                *, version: str, digest: str) -> dict[str, Any]:  # fmt: skip
        config, text = self.config, self.config.text_field
        shards, out = staging / "shards", staging / "out"
        shutil.rmtree(out, ignore_errors=True)
        decon = None
        if config.decontaminate is not None and config.split is not None:
            decon = Decontaminator(config.decontaminate)
            for table in self._shard_tables(shards, len(inputs)):  # reference: every held-out row
                held_out = table.filter(pc.not_equal(table[SPLIT], "train"))
                if held_out.num_rows:
                    decon.add_reference(held_out[text])
        writers = {s: ParquetParts(out / s) for s in SPLITS}
        stats = Stats()
        assigned, train_kept, tokens = dict.fromkeys(SPLITS, 0), 0, 0
        for table in self._shard_tables(shards, len(inputs)):
            for split in SPLITS:
                part = table.filter(pc.equal(table[SPLIT], split)).drop_columns([SPLIT])
                if not part.num_rows:
                    continue
                assigned[split] += part.num_rows
                if split == "train" and decon is not None:
                    part = decon.filter(part, text)
                train_kept += part.num_rows if split == "train" else 0
                if split == "train" and config.augment is not None:
                    part = augment(part, text, config.augment)
                if tokenizer is not None:
                    part = tokenizer.apply(part, text)
                    tokens += int(pc.sum(pc.list_value_length(part["input_ids"])).as_py() or 0)
                writers[split].write(part, split)
                stats.add(part)
        files = {s: [p.relative_to(out).as_posix() for p in w.close()] for s, w in writers.items()}
        rows = {s: writers[s].rows for s in SPLITS}
        if not sum(rows.values()):
            raise DataError(Reason.EMPTY_RESULT, "no rows left after decontamination")
        kept = sum(assigned.values())
        counts = [StepCount(step=s.name, rows_in=s.rows_in, rows_out=s.rows_out, details=s.details) for s in steps]
        if config.split is not None:
            counts.append(StepCount(step="split", rows_in=kept, rows_out=kept, details=assigned))
        if decon is not None:
            counts.append(StepCount(step="decontaminate", rows_in=assigned["train"], rows_out=train_kept,
                                    details={"removed": decon.removed}))  # fmt: skip
        if config.augment is not None:
            counts.append(StepCount(step="augment", rows_in=train_kept, rows_out=rows["train"],
                                    details={"added": rows["train"] - train_kept}))  # fmt: skip
        if tokenizer is not None:
            total = sum(rows.values())
            counts.append(StepCount(step="tokenize", rows_in=total, rows_out=total, details={"tokens": tokens}))
        for c in counts:
            self.metrics.step_rows.labels(step=c.step).inc(c.rows_out)
        schema = next(w.schema for w in writers.values() if w.schema is not None)
        manifest = {
            "version": version,
            "digest": f"sha256:{digest}",
            "formatVersion": DATA_FORMAT_VERSION,
            "workloadVersion": workload_version(),
            "dataset": config.dataset,
            "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "inputs": [input_doc(f) for f in inputs],
            "spec": spec(config),
            "schema": {f.name: str(f.type) for f in schema},
            "rows": rows,
            "files": {s: names for s, names in files.items() if names},
            "bytes": sum(w.bytes for w in writers.values()),
            "statistics": stats.result(),
            "steps": [c.to_wire() for c in counts],
        }
        atomic_write(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        return manifest
