"""Reading manifests from files and directories, and `leptonctl validate`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lepton.api.validation import ManifestError, parse


def yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load_documents(path: Path) -> Iterator[dict[str, Any]]:
    """Every non-empty YAML document in a file (a `kind: List` is expanded)."""
    with path.open() as fh:
        for doc in yaml.safe_load_all(fh):
            if not doc:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(str(path), [f"expected a mapping, got {type(doc).__name__}"])
            if doc.get("kind") == "List":
                yield from (item for item in doc.get("items", []) if item)
            else:
                yield doc


def validate_command(args: argparse.Namespace) -> int:
    failures = 0
    for root in args.filename:
        for path in yaml_files(root):
            try:
                for doc in load_documents(path):
                    resource = parse(doc)
                    print(f"{path}: {resource.kind} {resource.metadata.name!r} is valid")
            except (ManifestError, yaml.YAMLError, OSError) as exc:
                failures += 1
                print(f"{path}: {exc}", file=sys.stderr)
    return 1 if failures else 0
