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
from functools import cache
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from lepton.api.base import INT64_MIN, RULE_SEPARATOR, go_float, go_quote, go_value, json_type
from lepton.api.crd import crd_for
from lepton.api.kinds import API_VERSION, KINDS, OBJECT_META_FIELDS, KindInfo, Resource


class ManifestError(ValueError):
    """A manifest that cannot be accepted; `problems` are 'path: what is wrong' lines."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        super().__init__(f"{where} is invalid:\n" + "\n".join(f"  * {p}" for p in problems))


def _bound(bound: float, given: Any) -> str:
    """A schema bound as the apiserver prints it: as an integer when the value it checked is one."""
    if json_type(given) == "integer" and float(bound).is_integer():
        return str(int(bound))
    return go_float(float(bound))


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

    if schema is not None and _kept_as_is(schema):
        return
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
    return [f'unknown field "{path}"' for path in found]  # quoted as it is, not escaped


# --- step 2: defaulting ----------------------------------------------------------------------------


def _kept_as_is(schema: Mapping[str, Any]) -> bool:
    """Any JSON value (x-kubernetes-preserve-unknown-fields without properties): neither pruned nor walked."""
    return bool(schema.get("x-kubernetes-preserve-unknown-fields")) and "properties" not in schema


def _without_nulls(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """`null` in an object is dropped, as the apiserver drops non-nullable nulls before defaulting."""
    if schema is not None and _kept_as_is(schema):
        return value
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


# --- YAML as kubectl reads it ---------------------------------------------------------------------

_GO_BOOLS = {
    **dict.fromkeys(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], True),
    **dict.fromkeys(["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], False),
}
_GO_SPECIAL: dict[str, Any] = {
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], None),
    **dict.fromkeys([".nan", ".NaN", ".NAN"], math.nan),
    **dict.fromkeys([".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"], math.inf),
    **dict.fromkeys(["-.inf", "-.Inf", "-.INF"], -math.inf),
}
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_GO_INT = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_GO_TAG = "tag:lepton.ai,2025:go-yaml-plain"


def _go_plain(text: str) -> Any:
    """A plain YAML scalar as go-yaml v2 resolves it (sigs.k8s.io/yaml, which kubectl uses): `1e-4`
    is a float, `y` a bool, `1:30` and `2024-01-01` strings (PyYAML reads these three differently)."""
    if text in _GO_SPECIAL:
        return _GO_SPECIAL[text]
    if text in _GO_BOOLS:
        return _GO_BOOLS[text]
    if text[0] == ".":
        return float(text) if _GO_FLOAT.fullmatch(text) else text
    if text[0] not in "+-0123456789":
        return text
    plain = text.replace("_", "")
    match = _GO_INT.fullmatch(plain)
    if match:
        sign, digits = match.groups()
        base, body = 10, digits
        if len(digits) > 1 and digits[0] == "0":  # Go's ParseInt(…, 0, 64): 0x, 0o, 0b, or a leading 0: octal
            prefixed = digits[1].lower() in "xob"
            base = {"x": 16, "o": 8, "b": 2}[digits[1].lower()] if prefixed else 8
            body = digits[2:] if prefixed else digits[1:]
        number = int(body, base) * (-1 if sign == "-" else 1)
        if INT64_MIN <= number <= 2**64 - 1:  # int64, or uint64
            return number
    if _GO_FLOAT.fullmatch(plain):
        return float(plain)
    return text


class ManifestLoader(yaml.SafeLoader):
    """PyYAML reading plain scalars as kubectl does, so a manifest means the same to both: use
    `yaml.load_all(stream, Loader=ManifestLoader)` where `yaml.safe_load_all` would read it."""


ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag.rsplit(":", 1)[-1] in ("merge", "value")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ManifestLoader.add_implicit_resolver(_GO_TAG, re.compile(r"(?s).*"), [*"+-.0123456789yYnNtTfFoO~", ""])


def _construct_plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    assert isinstance(node, yaml.ScalarNode)
    return _go_plain(str(loader.construct_scalar(node)))


ManifestLoader.add_constructor(_GO_TAG, _construct_plain)


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
        return [f'unknown field "{path}"']
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
    if kind == "int_format":  # a float a hair from an integer: not a type error for the apiserver
        return [f"{error['msg']} in {path}"]
    if kind == "finite_number":
        return [f"{path}: Invalid value: {go_value(given)}: must be a finite number (JSON has no .inf or .nan)"]
    if kind == "string_too_long":
        return [f"{path}: Too long: may not be more than {ctx['max_length']} bytes"]
    if kind == "too_long":
        return [f"{path}: Too many: {len(given)}: must have at most {ctx['max_length']} items"]
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        detail = f"{words} {_bound(ctx[key], given)}"
    elif kind == "string_pattern_mismatch":
        detail = f"should match '{ctx['pattern']}'"
    elif kind == "string_too_short":
        detail = f"should be at least {ctx['min_length']} chars long"
    elif kind == "too_short":
        unit = "properties" if isinstance(given, dict) else "items"  # minProperties or minItems
        given = len(given)  # the apiserver shows the length it counted
        detail = f"should have at least {ctx['min_length']} {unit}"
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
    meta = wire.get("metadata")
    for key in ("labels", "annotations"):  # Go decodes a null value of a map[string]string as ""
        if isinstance(meta, dict) and isinstance(meta.get(key), dict):
            meta[key] = {k: "" if v is None else v for k, v in meta[key].items()}
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
