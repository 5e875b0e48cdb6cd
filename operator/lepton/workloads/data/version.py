"""A preparation's version: SHA-256 over everything that decides the output bytes and nothing else.

In: the data format version, the workload's package version, every input file (source index,
location-independent name, size, digest, format), the preparation spec (canonical JSON, keys sorted),
and when tokenising the tokenizer.json bytes and max_length. Out: the output directory, paths, ports,
memory and retain, so the same inputs and spec give the same version on any machine and directory.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from lepton.api.contract import DATA_FORMAT_VERSION, DataConfig
from lepton.workloads.data.sources import InputFile

PACKAGE = "lepton-operator"
SPEC_FIELDS = {"text_field", "pipeline", "split", "decontaminate", "augment"}
MiB = 1 << 20


def batch_bytes(memory_limit: int | None) -> int:
    """Input bytes per batch: a batch grows several times over in Arrow and through the steps."""
    if memory_limit is None:
        return 16 * MiB
    return int(min(max(memory_limit // 64, MiB), 64 * MiB))


def workload_version() -> str:
    try:
        return package_version(PACKAGE)
    except PackageNotFoundError:
        return "dev"


def spec(config: DataConfig) -> dict[str, Any]:
    """The preparation spec as canonical JSON data (camelCase keys, unset optionals left out)."""
    doc = config.model_dump(mode="json", by_alias=True, exclude_none=True, include=SPEC_FIELDS)
    if config.tokenizer_path is not None:
        doc["maxLength"] = config.max_length
    return doc


def tokenizer_digest(path: str) -> str:
    """SHA-256 of tokenizer.json: the file `tokenizers` builds the tokenizer from."""
    digest = hashlib.sha256()
    with (Path(path) / "tokenizer.json").open("rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def input_doc(file: InputFile) -> dict[str, Any]:
    return {"source": file.source, "name": file.name, "size": file.size, "digest": file.digest, "format": file.format}


def version_digest(config: DataConfig, inputs: list[InputFile]) -> str:
    """The full hex digest; the version is its first 16 digits."""
    doc = {
        "formatVersion": DATA_FORMAT_VERSION,
        "workloadVersion": workload_version(),
        "inputs": [input_doc(f) for f in inputs],
        "spec": spec(config),
        "tokenizer": tokenizer_digest(config.tokenizer_path) if config.tokenizer_path is not None else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
