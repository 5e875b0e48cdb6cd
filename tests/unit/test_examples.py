"""Every shipped example is accepted; every examples/invalid/ manifest is rejected with its message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lepton.api import KINDS
from lepton.api.base import ApiModel, Rule
from lepton.api.validation import ManifestError, parse
from tests.conftest import EXAMPLES, expected_messages

VALID = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("quickstart/*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def test_there_are_examples_for_every_kind() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in VALID if p.parent == EXAMPLES}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_is_accepted(path: Path) -> None:
    resource = parse(yaml.safe_load(path.read_text()))
    assert resource.metadata.name


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_example_is_rejected_with_its_message(path: Path) -> None:
    expected = expected_messages(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(ManifestError) as caught:
        parse(yaml.safe_load(path.read_text()))
    text = str(caught.value)
    for message in expected:
        assert message in text
    assert len(caught.value.problems) == 1, f"{path.name} should break exactly one rule: {text}"


def _all_models() -> set[type[ApiModel]]:
    seen: set[type[ApiModel]] = set()
    stack: list[type[ApiModel]] = [info.model for info in KINDS.values()]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            for arg in _types_in(field.annotation):
                if isinstance(arg, type) and issubclass(arg, ApiModel):
                    stack.append(arg)
    return seen


def _types_in(annotation: object) -> list[object]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _types_in(a)]


def _rules() -> list[Rule]:
    return sorted({r for m in _all_models() for r in m.rules if not r.is_transition}, key=lambda r: r.message)


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r.message[:60])
def test_every_rule_has_an_invalid_example(rule: Rule) -> None:
    covered = [p.name for p in INVALID if rule.message in expected_messages(p)]
    assert covered, f"no examples/invalid/ manifest exercises: {rule.message}"
