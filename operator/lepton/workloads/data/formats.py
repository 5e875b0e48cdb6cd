"""One local file as a stream of Arrow tables of about `batch_bytes` of input each (bounded memory),
parsed by pyarrow; a parse error names the file and the 1-based line, found by re-reading the failing
block line by line (pyarrow's messages do not say where).

JSON lines are cut into whole-line blocks here and each parsed with pyarrow.json.read_json rather than
streamed with open_json: open_json fixes the schema from its first block and fails on a later block
whose column widens (int then float, null then string), and a block of our own knows its first line
number. CSV streams with open_csv (types from the first block; a later value of another type is named
by line); Parquet by row-group-sized record batches."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from lepton.workloads.data.errors import DataError, Reason


def _blocks(path: Path, batch_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(lines before the block, block) in whole lines of about batch_bytes."""
    lines_before = 0
    with path.open("rb") as fh:
        rest = b""
        while True:
            chunk = fh.read(batch_bytes)
            data = rest + chunk
            if not chunk:
                if data.strip():
                    yield lines_before, data if data.endswith(b"\n") else data + b"\n"
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: read on
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            yield lines_before, block
            lines_before += block.count(b"\n")


def _bad_json_line(block: bytes, lines_before: int, name: str, cause: Exception) -> DataError:
    for i, raw in enumerate(block.split(b"\n")):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            return DataError(Reason.BAD_FORMAT, f"not valid JSON: {exc.msg}", file=name, line=lines_before + i + 1)
        if not isinstance(value, dict):
            return DataError(Reason.BAD_FORMAT, "a line is not a JSON object", file=name, line=lines_before + i + 1)
    return DataError(Reason.BAD_FORMAT, f"cannot read JSON lines: {cause}", file=name, line=lines_before + 1)


def _jsonl(path: Path, name: str, batch_bytes: int) -> Iterator[pa.Table]:
    for lines_before, block in _blocks(path, batch_bytes):
        try:
            table = pajson.read_json(io.BytesIO(block), read_options=pajson.ReadOptions(block_size=len(block) + 1))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise _bad_json_line(block, lines_before, name, exc) from None
        if table.num_rows:
            yield table


def _bad_csv_line(path: Path, name: str, cause: Exception, schema: pa.Schema | None) -> DataError:
    """The first line that breaks the file: a wrong number of fields, or (a conversion error) a value of
    a column that the rows before gave another type."""
    first = str(cause).splitlines()[0]
    column = re.match(r"In CSV column #(\d+): CSV conversion error to", first)
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        for row in reader:
            if len(row) != len(header):
                return DataError(Reason.BAD_FORMAT, f"expected {len(header)} fields, found {len(row)}",
                                 file=name, line=reader.line_num)  # fmt: skip
            if column and schema is not None:
                i = int(column.group(1))
                try:
                    pa.array([row[i]]).cast(schema.field(i).type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    return DataError(Reason.BAD_FORMAT, f"column {header[i]!r}: {row[i][:40]!r} is not "
                                     f"{schema.field(i).type} like the rows before it", file=name,
                                     line=reader.line_num)  # fmt: skip
    return DataError(Reason.BAD_FORMAT, f"cannot read CSV: {first}", file=name)


def _csv(path: Path, name: str, batch_bytes: int) -> Iterator[pa.Table]:
    schema = None
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=max(batch_bytes, 1 << 16)))
        schema = reader.schema  # column types are inferred from the first block
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _bad_csv_line(path, name, exc, schema) from None


def _parquet(path: Path, name: str, batch_bytes: int) -> Iterator[pa.Table]:
    try:
        file = pq.ParquetFile(path)
        meta = file.metadata
        row_bytes = max(1, sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
                        // max(1, meta.num_rows))  # fmt: skip
        for batch in file.iter_batches(batch_size=max(1, batch_bytes // row_bytes)):
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(Reason.BAD_FORMAT, f"not a readable Parquet file: {exc}", file=name) from None


def _text(path: Path, name: str, batch_bytes: int) -> Iterator[pa.Table]:
    for lines_before, block in _blocks(path, batch_bytes):
        try:
            lines = block.decode("utf-8").split("\n")[:-1]
        except UnicodeDecodeError as exc:
            line = lines_before + block[: exc.start].count(b"\n") + 1
            raise DataError(Reason.BAD_FORMAT, "not UTF-8 text", file=name, line=line) from None
        yield pa.table({"text": pa.array([line.rstrip("\r") for line in lines], pa.string())})


def read_file(path: Path, fmt: str, name: str, batch_bytes: int) -> Iterator[pa.Table]:
    readers = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "text": _text}
    return readers[fmt](path, name, batch_bytes)
