"""Generate CustomResourceDefinitions from the pydantic models.

Pydantic writes JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema: every node
typed, no $ref, no nullable unions, `exclusiveMinimum` as a boolean, int-or-string spelled as the
extension. This module translates one into the other and adds what only CRDs have (CEL rules come
from the models' `rules`, printer columns, categories, subresources).
"""

from __future__ import annotations

from typing import Any

import yaml

from lepton.api.kinds import CATEGORY, GROUP, VERSION, KindInfo

# JSON Schema keywords that carry over to OpenAPI v3 as they are.
_KEEP = (
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


class SchemaError(ValueError):
    """A model uses a construct that has no structural-schema equivalent."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def structural(node: dict[str, Any], defs: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Translate one pydantic JSON-schema node (and its children) into a structural schema node."""
    node = _resolve(node, defs)
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:  # any JSON value, kept as is
        return {"x-kubernetes-preserve-unknown-fields": True, **{k: node[k] for k in ("description",) if k in node}}
    if node.get("x-kubernetes-int-or-string"):  # e.g. a quantity: its pattern checks strings, minimum ints
        return {"x-kubernetes-int-or-string": True, **{k: node[k] for k in _KEEP if k in node}}
    if "anyOf" in node:
        options = [_resolve(o, defs) for o in node["anyOf"] if o.get("type") != "null"]
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"]:
            out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
            out.update({k: outer[k] for k in ("description",) if k in outer})
            return out
        if len(options) != 1:
            raise SchemaError(f"{where}: unions of {types} have no structural schema")
        return structural({**options[0], **outer}, defs, where)

    out = {}
    # Pydantic writes the bounds of an Optional[Annotated[int, …]] under their Python names.
    for python, json_name in (
        ("ge", "minimum"),
        ("le", "maximum"),
        ("gt", "exclusiveMinimum"),
        ("lt", "exclusiveMaximum"),
    ):
        if python in node:
            node = {**{k: v for k, v in node.items() if k != python}, json_name: node[python]}
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    kind = node.get("type")
    if kind is None:
        raise SchemaError(f"{where}: untyped schema node")
    out["type"] = kind
    for key in _KEEP:
        if key in node:
            out[key] = node[key]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[flag] = node[bound]
            out[bound] = True
    if node.get("default") is not None:
        out["default"] = node["default"]

    if kind == "object":
        props = node.get("properties", {})
        if props:
            out["properties"] = {name: structural(child, defs, f"{where}.{name}") for name, child in props.items()}
            required = node.get("required", [])
            if required:
                out["required"] = list(required)
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = structural(node["additionalProperties"], defs, f"{where}[*]")
    elif kind == "array":
        out["items"] = structural(node["items"], defs, f"{where}[*]")
    return out


def _schema_of(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    return structural(raw, raw.get("$defs", {}), model.__name__)


def _conditions_as_map(status: dict[str, Any]) -> dict[str, Any]:
    conditions = status["properties"].get("conditions")
    if conditions is not None:
        conditions["x-kubernetes-list-type"] = "map"
        conditions["x-kubernetes-list-map-keys"] = ["type"]
    return status


def crd_for(info: KindInfo) -> dict[str, Any]:
    spec = _schema_of(info.spec)
    status = _conditions_as_map(_schema_of(info.status))
    spec["description"] = spec.get("description") or f"Desired state of the {info.kind}."
    status["description"] = f"Observed state of the {info.kind}, written by the operator."
    # Until the operator writes status, the apiserver shows observedGeneration 0: kstatus (Flux) then
    # reads a new object as InProgress, not as Current for want of any status, and Argo CD's check as
    # Progressing.
    status["default"] = {}
    status["properties"]["observedGeneration"]["default"] = 0
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": info.description,
                "required": ["spec"],
                **({"x-kubernetes-validations": [r.to_cel() for r in info.root_rules]} if info.root_rules else {}),
                "properties": {
                    "apiVersion": {"type": "string", "description": "APIVersion of this object."},
                    "kind": {"type": "string", "description": "Kind of this object."},
                    "metadata": {"type": "object"},
                    "spec": spec,
                    "status": status,
                },
            }
        },
        "subresources": {"status": {}},
        "additionalPrinterColumns": [c.to_crd() for c in info.columns],
    }
    if info.scale:
        version["subresources"]["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.crd_name,
            "labels": {"app.kubernetes.io/part-of": "lepton"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


def crd_file_name(info: KindInfo) -> str:
    return f"{GROUP}_{info.plural}.yaml"


HEADER = "# Generated by `leptonctl crds` from lepton.api; do not edit. Regenerate after changing a model.\n"


def render_crd_yaml(info: KindInfo) -> str:
    return HEADER + yaml.safe_dump(crd_for(info), sort_keys=False, width=100, allow_unicode=True)
