"""The base model of every API type, and cross-field rules written once for two enforcers.

A `Rule` carries a CEL expression (emitted into the CRD as `x-kubernetes-validations`, so the
apiserver enforces it) and the same predicate in Python (run by pydantic, so the local backend
rejects the same manifests with the same message). Transition rules, which compare with the stored
object (`oldSelf`), exist only on the apiserver: a manifest on its own has no old version.

It also says how the apiserver sees a value that a Go client (kubectl) sent it: its JSON type, an
integral float as an integer, and how Go prints it (%v, %q) in an error message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

RULE_SEPARATOR = "\n"  # between the messages of several broken rules of one object

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1  # the bound of counts and seconds that have no natural one
UINT32_MAX = 2**32 - 1  # seeds (numpy's limit)


def wire_int(value: float) -> int | None:
    """The integer an integral float becomes on its way to the apiserver, or None if it stays a float.

    kubectl (and every Go client) turns YAML into JSON with json.Marshal, which writes 2.0 as `2` but
    1e21 as `1e+21`; the apiserver then reads a number that fits int64 as an integer."""
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e21 and INT64_MIN <= value <= INT64_MAX:
        return int(value)
    return None


def json_type(value: Any) -> str:
    """The JSON type the apiserver sees for a value read from YAML (its words in type errors)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if INT64_MIN <= value <= INT64_MAX else "number"
    if isinstance(value, float):
        return "integer" if wire_int(value) is not None else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


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


def type_error(expected: str, value: Any) -> PydanticCustomError:
    """A JSON type mismatch, worded by lepton.api.validation as the apiserver words it."""
    return PydanticCustomError(
        "json_type", "must be of type {expected}", {"expected": expected, "actual": json_type(value)}
    )


def _near_integer(value: float) -> bool:
    """go-openapi's conv.IsFloat64AJSONInteger: within 2^53 and a relative 1e-9 of an integer, a float
    passes the apiserver's type check for an integer (and then fails its int64 format check)."""
    limit = float(2**53 - 1)
    if not math.isfinite(value) or not -limit <= value <= limit:
        return False
    rounded = float(math.trunc(value))  # Go's math.Round: half away from zero
    if abs(value - rounded) >= 0.5:
        rounded += math.copysign(1.0, value)
    if value == rounded:
        return True
    return rounded != 0 and abs(value - rounded) < 1e-9 * abs(rounded)


def _integer(value: Any) -> Any:
    """An integer as the apiserver accepts one: no bools, no strings, no fractions, within int64;
    an integral float (2.0) counts, because a Go client sends it as 2."""
    if json_type(value) != "integer":
        if isinstance(value, float) and _near_integer(value):
            raise PydanticCustomError("int_format", "Checked value must be of type integer (default format)")
        raise type_error("integer", value)
    return value if isinstance(value, int) else wire_int(value)


# An integer field of a spec: declare it `Int` and give it `le=`, so the CRD states its maximum.
Int = Annotated[int, BeforeValidator(_integer)]


def full_match(pattern: str) -> re.Pattern[str]:
    """A '^…$' schema pattern as a Python regex with RE2's meaning: Python's `$` also matches before
    a final newline, RE2's does not, so the anchors are dropped and `fullmatch` used instead."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise ValueError(f"pattern {pattern!r} is not anchored at both ends")
    return re.compile(pattern[1:-1])


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: CEL for the apiserver, `check` for pydantic (None: transition rule)."""

    cel: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None
    reason: str | None = None  # FieldValueInvalid (default), FieldValueForbidden, FieldValueRequired…

    @property
    def is_transition(self) -> bool:
        return "oldSelf" in self.cel

    def to_cel(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def immutable(field: str, what: str) -> Rule:
    """A transition rule on the parent object: `field` may not change once set."""
    return Rule(
        cel=f"!has(oldSelf.{field}) || (has(self.{field}) && self.{field} == oldSelf.{field})",
        message=f"{what} is immutable: create a new resource instead of changing it",
        field_path=f".{field}",
    )


def exactly_one(*fields: str, where: str) -> Rule:
    """Exactly one of the optional `fields` is set."""
    listed = ", ".join(fields[:-1]) + f" or {fields[-1]}"
    return Rule(
        cel="[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size() == 1",
        message=f"{where}: set exactly one of {listed}",
        check=lambda m: sum(getattr(m, _snake(f)) is not None for f in fields) == 1,
    )


def at_most_one(*fields: str, where: str) -> Rule:
    listed = ", ".join(fields[:-1]) + f" and {fields[-1]}"
    return Rule(
        cel="[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size() <= 1",
        message=f"{where}: {listed} are mutually exclusive; set at most one",
        check=lambda m: sum(getattr(m, _snake(f)) is not None for f in fields) <= 1,
    )


def ordered(low: str, high: str, where: str) -> Rule:
    """`low` ≤ `high` when both are set."""
    return Rule(
        cel=f"!has(self.{low}) || !has(self.{high}) || self.{low} <= self.{high}",
        message=f"{where}: {low} must be less than or equal to {high}",
        check=lambda m: (
            getattr(m, _snake(low)) is None
            or getattr(m, _snake(high)) is None
            or getattr(m, _snake(low)) <= getattr(m, _snake(high))
        ),
    )


_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def local_uri(where: str) -> Rule:
    """`uri`, when set, is a local path or a file:// URI: object stores arrive with the Dataset issue."""
    return Rule(
        cel="!has(self.uri) || !self.uri.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://') || self.uri.startsWith('file://')",
        message=f"{where}: s3:// and gs:// URIs are not supported yet: use a PVC or a local path",
        check=lambda m: m.uri is None or not _SCHEME.match(m.uri) or m.uri.startswith("file://"),
    )


def not_supported(field: str, where: str, instead: str) -> Rule:
    """A documented field that does nothing yet: rejected when set, with what to do instead."""
    return Rule(
        cel=f"!has(self.{field})",
        message=f"{where}: {field} is not supported yet: {instead}",
        check=lambda m: getattr(m, _snake(field)) is None,
    )


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, as on the apiserver.

    Code builds models by field name; manifests are parsed by `lepton.api.validation.parse`, which
    accepts the camelCase names only and no coercion (`nodes: "2"` is an error, as on the apiserver)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        validate_default=False,
        use_enum_values=True,
        allow_inf_nan=False,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """Put this class's own rules into its JSON schema, from where they reach the CRD."""
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.rules:
            target["x-kubernetes-validations"] = [rule.to_cel() for rule in cls.rules]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        # Report every broken rule at once, as the apiserver does.
        broken = [r.message for r in type(self).rules if r.check is not None and not r.check(self)]
        if broken:
            raise ValueError(RULE_SEPARATOR.join(broken))
        return self

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form with camelCase keys, leaving out unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
