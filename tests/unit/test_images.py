"""The Dockerfiles (Docker cannot run here): non-root, each installs only its own extra, and runs an
entrypoint module that exists in the package."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib

import pytest

from tests.conftest import ROOT

IMAGES = {  # image -> (extra, entrypoint module)
    "operator": ("operator", "lepton.cli.main"),
    "trainer": ("train", "lepton.workloads.trainer"),
    "tuner": ("tune", "lepton.workloads.tuner"),
    "server": ("serve", "lepton.workloads.server"),
    "data": ("data", "lepton.workloads.data"),
}
# Workloads whose issue has not landed yet: their image is ready, their module is not. When a module
# arrives, this test fails until its entry is removed here (so the table cannot go stale).
NOT_YET: set[str] = set()


def test_every_image_has_a_dockerfile() -> None:
    assert sorted(p.name for p in (ROOT / "images").glob("*.Dockerfile")) == sorted(
        f"{name}.Dockerfile" for name in IMAGES
    )


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_is_non_root_and_installs_only_its_extra(image: str) -> None:
    extra, module = IMAGES[image]
    text = (ROOT / "images" / f"{image}.Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must run as non-root"
    assert re.findall(r"\[(\w+)\]", text) and set(re.findall(r"\[(\w+)\]", text)) == {extra}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extra in extras
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M)
    assert entry
    argv = json.loads(entry.group(1))
    target = "lepton.cli.main" if argv == ["leptonctl"] else argv[argv.index("-m") + 1]
    assert target == module


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_module_exists_unless_its_issue_is_pending(image: str) -> None:
    _, module = IMAGES[image]
    exists = importlib.util.find_spec(module) is not None
    assert exists != (module in NOT_YET), f"{module}: update NOT_YET"
