"""A request log (lepton.api.requestlog's store) as a Dataset source: one row per recorded request line,
with the clients' feedback joined by response id.

Listing reads every log file once: up to its last whole line (a replica may be appending to it; the
part read is its digest, so new records give a new version and a version's bytes never change), and,
with feedback, collects the feedback records of the whole store (the latest per response id wins) into
a small JSON file in the cache that reading each file joins from. Files are read in name order, which
is time order. Lines that are not JSON objects (none are written so) are skipped and counted in the log.

Columns: text (the input), output, responseId, index (the input's place in its request), time, route,
model; with feedback also label (int64 when every label given is an integer, else string) and
correction. The store holds masked text only: the server masks before it writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from lepton.api.contract import DataInput
from lepton.api.requestlog import LOG_SUFFIX
from lepton.workloads.data.errors import DataError, Reason
from lepton.workloads.data.sources import InputFile

log = logging.getLogger("lepton.data")
CHUNK = 1 << 20
COLUMNS = ("text", "output", "responseId", "index", "time", "route", "model")
_TYPES = {"index": pa.int64()}
_KEYS = {"text": "input"}  # column -> the record's key


def _feedback_file(cache: Path, index: int) -> Path:
    return cache / f"requestlog-{index}-feedback.json"


def _whole_lines(path: Path, limit: int) -> Iterator[bytes]:
    """The file's bytes up to `limit`, in blocks of whole lines (a partial last line is left out)."""
    rest = b""
    done = 0
    with path.open("rb") as fh:
        while done < limit:
            chunk = fh.read(min(CHUNK, limit - done))
            if not chunk:
                break
            done += len(chunk)
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            block, rest = data[:cut], data[cut:]
            if block:
                yield block


def _records(block: bytes) -> Iterator[dict[str, Any]]:
    for raw in block.split(b"\n"):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            log.warning("request log: skipped a line that is not JSON")
            continue
        if isinstance(doc, dict) and isinstance(doc.get("responseId"), str):
            yield doc


def list_log_inputs(source: DataInput, index: int, cache: Path) -> list[InputFile]:
    """The store's files as InputFiles (size: the whole lines read), feedback collected into the cache."""
    root = Path(source.path or "")
    if not root.is_dir():
        raise DataError(Reason.SOURCE_UNREACHABLE, f"{root}: no request log directory")
    files = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob(f"*{LOG_SUFFIX}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    feedback: dict[str, tuple[str, Any, Any]] = {}
    out = []
    for name, path in files:
        digest, size = hashlib.sha256(), 0
        for block in _whole_lines(path, path.stat().st_size):
            digest.update(block)
            size += len(block)
            if source.feedback and b'"feedback"' in block:
                for doc in _records(block):
                    if doc.get("type") == "feedback":
                        when = str(doc.get("time", ""))
                        old = feedback.get(doc["responseId"])
                        if old is None or when >= old[0]:
                            feedback[doc["responseId"]] = (when, doc.get("label"), doc.get("correction"))
        out.append(InputFile(index, name, size, f"sha256:{digest.hexdigest()}", "jsonl", str(path)))
    if source.feedback:
        labels = [v[1] for v in feedback.values() if v[1] is not None]
        as_int = all(isinstance(x, int) and not isinstance(x, bool) for x in labels)
        joined = {k: [v[1] if as_int or v[1] is None else str(v[1]), v[2]] for k, v in feedback.items()}
        doc = {"labelType": "int64" if as_int else "string", "feedback": joined}
        cache.mkdir(parents=True, exist_ok=True)
        _feedback_file(cache, index).write_text(json.dumps(doc))
    return out


def read_log(source: DataInput, file: InputFile, cache: Path, batch_bytes: int) -> Iterator[pa.Table]:
    """One log file's request records as tables of about `batch_bytes` of input each."""
    feedback: dict[str, list[Any]] = {}
    schema = [pa.field(c, _TYPES.get(c, pa.string())) for c in COLUMNS]
    if source.feedback:
        doc = json.loads(_feedback_file(cache, file.source).read_text())
        feedback = doc["feedback"]
        label_type = pa.int64() if doc["labelType"] == "int64" else pa.string()
        schema += [pa.field("label", label_type), pa.field("correction", pa.string())]
    rows: dict[str, list[Any]] = {f.name: [] for f in schema}
    held = 0
    for block in _whole_lines(Path(file.local or ""), file.size or 0):
        for rec in _records(block):
            if rec.get("type") != "request":
                continue
            for c in COLUMNS:
                value = rec.get(_KEYS.get(c, c))
                rows[c].append(value if isinstance(value, int if c == "index" else str) else None)
            if source.feedback:
                label, correction = feedback.get(rec["responseId"], (None, None))
                rows["label"].append(label)
                rows["correction"].append(correction)
        held += len(block)
        if held >= batch_bytes and rows["text"]:
            yield pa.table({f.name: pa.array(rows[f.name], f.type) for f in schema})
            rows, held = {f.name: [] for f in schema}, 0
    if rows["text"]:
        yield pa.table({f.name: pa.array(rows[f.name], f.type) for f in schema})
