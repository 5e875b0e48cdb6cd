"""Parse manifests into models, accepting exactly what the apiserver accepts, with its words.

The apiserver reports `spec.nodes: Invalid value: 0: spec.nodes in body should be greater than or
equal to 1`; pydantic says `Input should be greater than or equal to 1`. The local backend and the
operator print the apiserver's words, so a user sees the same fix whichever rejected the manifest.

`parse` follows the apiserver's steps for a custom resource (kube-apiserver v1.37, strict field
validation, as kubectl sends it):
1. decoding: a wrongly typed metadata field fails first, then every field the CRD schema does not
   declare is reported (`unknown field "spec.gpus_per_node"`) and nothing else;
2. defaulting: `null` in an object is dropped (then the default applies);
3. the schema (types, bounds, patterns, enums): the models, strictly (no coercion, camelCase only);
4. the CEL rules: the models' `Rule`s, unless step 3 found a blocking error (a wrong type, an
   unsupported value, a missing field, a too long string or list), after which the apiserver skips
   them and so does this module.
Values are printed as the apiserver prints what a Go client sent it: an integral float (2.0) is an
integer, other floats in Go's %v form (1e+06), strings in Go's %q form.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import cache
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from lepton.api.base import INT64_MAX, INT64_MIN, RULE_SEPARATOR, json_type, wire_int
from lepton.api.crd import crd_for
from lepton.api.kinds import API_VERSION, KINDS, OBJECT_META_FIELDS, KindInfo, Resource


class ManifestError(ValueError):
    """A manifest that cannot be accepted; `problems` are 'path: what is wrong' lines."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        super().__init__(f"{where} is invalid:\n" + "\n".join(f"  * {p}" for p in problems))


# --- Go's formatting of values -------------------------------------------------------------------


def go_float(value: float) -> str:
    """A float64 as Go's %v prints it (strconv 'g', shortest digits): 1e+06, 123456.5, 5e-08."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + exponent  # digits before the decimal point
    exp = point - 1
    minus = "-" if sign else ""
    if value == 0:
        return minus + "0"
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return minus + text + "0" * (point - len(text))
    return f"{minus}{text[:point]}.{text[point:]}"


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """A string as Go's %q (strconv.Quote) prints it: printable characters as they are."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():  # Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols, ' '
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def go_value(value: Any) -> str:
    """A value as the apiserver prints it in 'Invalid value: …' (what a Go client sent for it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if INT64_MIN <= value <= INT64_MAX else go_float(float(value))
    if isinstance(value, float):
        as_int = wire_int(value)
        return str(as_int) if as_int is not None else go_float(value)
    if isinstance(value, str):
        return go_quote(value)
    return go_quote(json_type(value))


def _bound(value: Any) -> str:
    return go_float(value) if isinstance(value, float) else str(value)


# --- step 1: decoding ------------------------------------------------------------------------------

_GO_KIND = {"string": "string", "boolean": "bool", "object": "object", "array": "array"}
_META_STRINGS = ("generateName", "name", "namespace", "resourceVersion", "selfLink", "uid")
_META_MAPS = ("annotations", "labels")


def _go_kind(value: Any) -> str:
    return _GO_KIND.get(json_type(value), "number")


def _metadata_type_error(meta: Any) -> str | None:
    """The first error of decoding metadata into metav1.ObjectMeta (keys in sorted order, as Go sees them)."""
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return f"json: cannot unmarshal {_go_kind(meta)} into Go value of type v1.ObjectMeta"
    for key in sorted(meta):
        value = meta[key]
        if value is None:
            continue
        if key in _META_STRINGS and not isinstance(value, str):
            return f"json: cannot unmarshal {_go_kind(value)} into Go struct field ObjectMeta.{key} of type string"
        if key in _META_MAPS:
            if not isinstance(value, dict):
                return (
                    f"json: cannot unmarshal {_go_kind(value)} into Go struct field ObjectMeta.{key} "
                    "of type map[string]string"
                )
            for item in (value[k] for k in sorted(value)):
                if item is not None and not isinstance(item, str):
                    return (
                        f"json: cannot unmarshal {_go_kind(item)} into Go struct field ObjectMeta.{key} of type string"
                    )
    return None


def _unknown(value: Any, schema: Mapping[str, Any] | None, path: str, found: list[str]) -> None:
    """The apiserver's pruning walk (apiextensions-apiserver schema/pruning): every key the schema
    does not declare, with its path, as `unknown field "…"` under strict field validation."""

    def at(key: str) -> str:
        return f"{path}.{key}" if path else key

    if isinstance(value, dict):
        if schema is None:
            found += [at(k) for k in value]
            return
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            if key in properties:
                _unknown(child, properties[key], at(key), found)
            elif isinstance(extra, dict):
                _unknown(child, extra, at(key), found)
            else:
                found.append(at(key))
    elif isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        for i, child in enumerate(value):
            _unknown(child, items, f"{path}[{i}]", found)


def _decoding_problems(doc: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    meta = doc.get("metadata")
    problem = _metadata_type_error(meta)
    if problem:
        return [problem]
    found: list[str] = []
    if isinstance(meta, dict):
        found += [f"metadata.{k}" for k in meta if k not in OBJECT_META_FIELDS]
    properties = root["properties"]
    for key, value in doc.items():
        if key == "metadata":
            continue
        if key in properties:
            _unknown(value, properties[key], key, found)
        else:
            found.append(key)
    return [f"unknown field {go_quote(path)}" for path in found]


# --- step 2: defaulting ----------------------------------------------------------------------------


def _without_nulls(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """`null` in an object is dropped, as the apiserver drops non-nullable nulls before defaulting."""
    if isinstance(value, dict) and schema is not None:
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: _without_nulls(v, properties.get(k, extra if isinstance(extra, dict) else None))
            for k, v in value.items()
            if v is not None
        }
    if isinstance(value, list) and schema is not None:
        return [_without_nulls(v, schema.get("items")) for v in value]
    return value


def _as_json(value: Any) -> Any:
    """YAML's extras as a Go client turns them into JSON: non-string keys and dates become strings."""
    if isinstance(value, dict):
        return {_key(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_json(v) for v in value]
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


# --- steps 3 and 4: the schema and the rules ------------------------------------------------------


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_TYPE_ERRORS = {
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "float_type": "number",
    "float_parsing": "number",
    "string_type": "string",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "model_type": "object",
    "model_attributes_type": "object",
    "dict_type": "object",
    "list_type": "array",
}
# Errors after which the apiserver evaluates no CEL rule (strategy.go, hasBlockingErr).
_BLOCKING = {*_TYPE_ERRORS, "json_type", "missing", "field_required", "literal_error", "string_too_long", "too_long"}
_BOUNDS = {
    "greater_than_equal": ("should be greater than or equal to", "ge"),
    "greater_than": ("should be greater than", "gt"),
    "less_than_equal": ("should be less than or equal to", "le"),
    "less_than": ("should be less than", "lt"),
}


def describe(error: ErrorDetails) -> list[str]:
    """One pydantic error as the apiserver words it (one line per broken rule)."""
    path = _path(error["loc"])
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    given = error.get("input")
    if kind == "value_error":
        messages = str(ctx.get("error", error["msg"])).split(RULE_SEPARATOR)
        # Kubernetes 1.37 words a failed CEL rule "<path>: Invalid value: <message>".
        return [f"{path}: Invalid value: {m}" if path else m for m in messages]
    if kind == "field_invalid":
        return [f"{path}: Invalid value: {go_value(given)}: {detail}" for detail in ctx["details"]]
    if kind == "field_required":
        return [f"{path}: Required value: {error['msg']}"]
    if kind == "missing":
        return [f"{path}: Required value"]
    if kind == "extra_forbidden":
        return [f"unknown field {go_quote(path)}"]
    if kind == "literal_error" and not isinstance(given, str):
        kind, ctx = "json_type", {"expected": "string", "actual": json_type(given)}
    if kind in _TYPE_ERRORS:
        kind, ctx = "json_type", {"expected": _TYPE_ERRORS[kind], "actual": json_type(given)}
    if kind == "json_type":
        actual = go_quote(ctx["actual"])
        return [f"{path}: Invalid value: {actual}: {path} in body must be of type {ctx['expected']}: {actual}"]
    if kind == "literal_error":
        supported = ", ".join(f'"{a}"' for a in re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        return [f"{path}: Unsupported value: {go_value(given)}: supported values: {supported}"]
    if kind == "finite_number":
        return [f"{path}: Invalid value: {go_value(given)}: must be a finite number (JSON has no .inf or .nan)"]
    if kind == "string_too_long":
        return [f"{path}: Too long: may not be more than {ctx['max_length']} bytes"]
    if kind == "too_long":
        return [f"{path}: Too many: {len(given)}: must have at most {ctx['max_length']} items"]
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        detail = f"{words} {_bound(ctx[key])}"
    elif kind == "string_pattern_mismatch":
        detail = f"should match '{ctx['pattern']}'"
    elif kind == "string_too_short":
        detail = f"should be at least {ctx['min_length']} chars long"
    elif kind == "too_short":
        given = len(given)  # the apiserver shows the length it counted
        detail = f"should have at least {ctx['min_length']} items"
    else:
        return [f"{path}: {error['msg']}"]
    return [f"{path}: Invalid value: {go_value(given)}: {path} in body {detail}"]


def problems_of(exc: ValidationError) -> list[str]:
    """The apiserver's lines for a failed validation; no rule's line after a blocking error."""
    errors = exc.errors(include_url=False)
    if any(e["type"] in _BLOCKING for e in errors):
        errors = [e for e in errors if e["type"] != "value_error"]
    return [line for e in errors for line in describe(e)]


@cache
def _root_schema(info: KindInfo) -> dict[str, Any]:
    schema: dict[str, Any] = crd_for(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def parse(doc: Mapping[str, Any]) -> Resource:
    """Validate one manifest (a dict as read from YAML or the apiserver) into its model."""
    kind = doc.get("kind")
    meta = doc.get("metadata")
    name = (meta.get("name") if isinstance(meta, dict) else None) or "<unnamed>"
    where = f"{kind or 'object'} {name!r}"
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError(
            where,
            [f'apiVersion: Unsupported value: {go_value(doc.get("apiVersion"))}: supported values: "{API_VERSION}"'],
        )
    info = KINDS.get(str(kind))
    if info is None:
        supported = ", ".join(f'"{k}"' for k in KINDS)
        raise ManifestError(where, [f"kind: Unsupported value: {go_value(kind)}: supported values: {supported}"])
    root = _root_schema(info)
    wire = _as_json(dict(doc))
    problems = _decoding_problems(wire, root)
    if problems:
        raise ManifestError(where, problems)
    wire = _without_nulls(wire, root)
    wire.setdefault("metadata", {})  # the apiserver then asks for a name, not for metadata
    try:
        return _validate(info, wire)
    except ValidationError as exc:
        if not any(e["loc"][:1] == ("status",) for e in exc.errors()):
            raise ManifestError(where, problems_of(exc)) from None
    # On create and update the apiserver discards the status a manifest brings (only the status
    # subresource writes it), once its field names are known: so does parse, when it cannot read it.
    try:
        return _validate(info, {k: v for k, v in wire.items() if k != "status"})
    except ValidationError as exc:
        raise ManifestError(where, problems_of(exc)) from None


def _validate(info: KindInfo, wire: dict[str, Any]) -> Resource:
    return info.model.model_validate(wire, strict=True, by_alias=True, by_name=False)  # type: ignore[return-value]
