"""Reading manifests from files and directories, and `leptonctl validate`.

Whatever a file holds, reading it ends in documents or in one `ManifestReadError` line that names the
file (and the line, for YAML syntax); nothing raises past it. Directories are searched recursively for
*.yaml and *.yml, leaving out hidden directories (.git, .lepton).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lepton.api.validation import ManifestError, ManifestLoader, parse

SUFFIXES = (".yaml", ".yml")


class ManifestReadError(ValueError):
    """A file that holds no readable manifests; the message is one line that starts with the path."""


def yaml_files(path: Path) -> list[Path]:
    """`path` itself, or every *.yaml / *.yml below it (sorted, hidden directories left out)."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1]))  # fmt: skip


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own text spans several)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        return f"{mark.line + 1}:{mark.column + 1}: invalid YAML: {what}"
    if isinstance(exc, yaml.reader.ReaderError):
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return f"invalid YAML: character {char} at position {exc.position} ({exc.reason})"
    return "invalid YAML: " + str(exc).splitlines()[0]


def read_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in a file, a `kind: List` expanded into its items."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestReadError(f"{path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestReadError(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})") from None
    try:
        loaded = list(yaml.load_all(text, Loader=ManifestLoader))  # YAML scalars read as kubectl reads them
    except yaml.YAMLError as exc:
        sep = ":" if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None else ": "
        raise ManifestReadError(f"{path}{sep}{_yaml_problem(exc)}") from None
    except RecursionError:
        raise ManifestReadError(f"{path}: invalid YAML: nested too deeply") from None
    docs = []
    for number, doc in enumerate(loaded, 1):
        where = f"{path}: document {number}" if len(loaded) > 1 else str(path)
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestReadError(f"{where}: expected a mapping (a Kubernetes object), got {_type(doc)}")
        if doc.get("kind") == "List":
            docs.extend(_list_items(where, doc.get("items")))
        else:
            docs.append(doc)
    return docs


def _type(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list"}.get(
        type(value), type(value).__name__
    )


def _list_items(where: str, items: Any) -> list[dict[str, Any]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise ManifestReadError(f"{where}: the List's items must be a list, got {_type(items)}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ManifestReadError(f"{where}: items[{index}] of the List: expected a mapping "
                                    f"(a Kubernetes object), got {_type(item)}")  # fmt: skip
    return [item for item in items if item]


def load_documents(path: Path) -> Iterator[dict[str, Any]]:
    """Every document in `path` (a file, or a directory searched recursively)."""
    files = yaml_files(path)
    if not files:
        raise ManifestReadError(f"no manifests found in {path}")
    for file in files:
        yield from read_documents(file)


@dataclass
class Tally:
    valid: int = 0
    invalid: int = 0  # resources that failed validation, and files that could not be read
    empty: int = 0  # files or directories given that hold no manifest
    files: set[Path] = field(default_factory=set)

    def line(self) -> str:
        files = len(self.files)
        return f"{self.valid} valid, {self.invalid} invalid in {files} file{'s' if files != 1 else ''}"


def validate_command(args: argparse.Namespace) -> int:
    tally = Tally()
    for root in args.filename:
        files, documents = yaml_files(root), 0
        for path in files:
            tally.files.add(path)
            try:
                docs = read_documents(path)
            except ManifestReadError as exc:
                tally.invalid += 1
                documents += 1
                print(exc, file=sys.stderr)
                continue
            documents += len(docs)
            for doc in docs:
                try:
                    resource = parse(doc)
                except ManifestError as exc:
                    tally.invalid += 1
                    print(f"{path}: {exc}", file=sys.stderr)
                else:
                    tally.valid += 1
                    print(f"{path}: {resource.kind} {resource.metadata.name!r} is valid")
        if not documents:
            tally.empty += 1
            print(f"leptonctl validate: no manifests found in {root}", file=sys.stderr)
    print(tally.line())
    return 1 if tally.invalid or tally.empty else 0
