"""The base model of every API type, and cross-field rules written once for two enforcers.

A `Rule` carries a CEL expression (emitted into the CRD as `x-kubernetes-validations`, so the
apiserver enforces it) and the same predicate in Python (run by pydantic, so the local backend
rejects the same manifests with the same message). Transition rules, which compare with the stored
object (`oldSelf`), exist only on the apiserver: a manifest on its own has no old version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

RULE_SEPARATOR = "\n"  # between the messages of several broken rules of one object


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


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, as on the apiserver."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
        use_enum_values=True,
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
