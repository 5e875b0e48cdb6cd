"""Parse manifests into models, with errors worded as the apiserver words them.

The apiserver reports `spec.nodes: Invalid value: 0: spec.nodes in body should be greater than or
equal to 1`; pydantic says `Input should be greater than or equal to 1`. The local backend and the
operator print the apiserver's words, so a user sees the same fix whichever rejected the manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from lepton.api.base import RULE_SEPARATOR
from lepton.api.kinds import API_VERSION, KINDS, Resource


class ManifestError(ValueError):
    """A manifest that cannot be accepted; `problems` are 'path: what is wrong' lines."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        super().__init__(f"{where} is invalid:\n" + "\n".join(f"  * {p}" for p in problems))


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return '"object"'
    if isinstance(v, list):
        return '"array"'
    return json.dumps(v)


def _number(v: Any) -> Any:
    """1.0 -> 1, as the apiserver prints bounds."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def describe(error: ErrorDetails) -> list[str]:
    """One pydantic error as the apiserver would word it (one line per broken rule)."""
    if error["type"] == "value_error":
        path = _path(error["loc"])
        messages = str((error.get("ctx") or {}).get("error", error["msg"])).split(RULE_SEPARATOR)
        # Kubernetes 1.37 words a failed CEL rule "<path>: Invalid value: <message>".
        return [f"{path}: Invalid value: {m}" if path else m for m in messages]
    return [_describe_one(error)]


def _describe_one(error: ErrorDetails) -> str:
    path = _path(error["loc"])
    kind = error["type"]
    ctx: dict[str, Any] = {k: _number(v) for k, v in (error.get("ctx") or {}).items()}
    given = error.get("input")
    if kind == "missing":
        return f"{path}: Required value"
    if kind == "extra_forbidden":
        return f'unknown field "{path}"'
    if kind in ("literal_error", "enum"):
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        supported = ", ".join(f'"{a}"' for a in allowed)
        return f"{path}: Unsupported value: {_value(given)}: supported values: {supported}"
    words = {
        "greater_than_equal": "should be greater than or equal to {ge}",
        "greater_than": "should be greater than {gt}",
        "less_than_equal": "should be less than or equal to {le}",
        "less_than": "should be less than {lt}",
        "string_pattern_mismatch": "should match '{pattern}'",
        "string_too_short": "should be at least {min_length} chars long",
        "string_too_long": "may not be more than {max_length} bytes",
        "too_short": "should have at least {min_length} items",
        "too_long": "must have at most {max_length} items",
        "int_type": "must be of type integer",
        "int_parsing": "must be of type integer",
        "int_from_float": "must be of type integer",
        "float_type": "must be of type number",
        "float_parsing": "must be of type number",
        "string_type": "must be of type string",
        "bool_type": "must be of type boolean",
        "bool_parsing": "must be of type boolean",
        "model_type": "must be of type object",
        "dict_type": "must be of type object",
        "list_type": "must be of type array",
    }
    if kind in ("too_short", "too_long") and isinstance(given, list | dict):
        given = len(given)  # the apiserver shows the length it counted
    if kind in words:
        return f"{path}: Invalid value: {_value(given)}: {path} in body {words[kind].format(**ctx)}"
    return f"{path}: {error['msg']}"


def parse(doc: Mapping[str, Any]) -> Resource:
    """Validate one manifest (a dict as read from YAML or the apiserver) into its model."""
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name", "<unnamed>")
    where = f"{kind or 'object'} {name!r}"
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError(
            where,
            [f'apiVersion: Unsupported value: {_value(doc.get("apiVersion"))}: supported values: "{API_VERSION}"'],
        )
    info = KINDS.get(str(kind))
    if info is None:
        supported = ", ".join(f'"{k}"' for k in KINDS)
        raise ManifestError(where, [f"kind: Unsupported value: {_value(kind)}: supported values: {supported}"])
    try:
        return info.model.model_validate(dict(doc))  # type: ignore[return-value]
    except ValidationError as exc:
        raise ManifestError(where, [line for e in exc.errors(include_url=False) for line in describe(e)]) from None
