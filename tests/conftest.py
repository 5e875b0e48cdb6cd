"""Shared helpers for every tier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def expected_messages(path: Path) -> list[str]:
    """The `# expect: …` lines at the top of an examples/invalid/ manifest."""
    return [
        line.split("# expect:", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("# expect:")
    ]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI (LEPTON_REQUIRE_ALL=1) a skipped test is a failure: every component must be there."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("LEPTON_REQUIRE_ALL") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where everything must run: {report.longrepr}"


GOLDEN = ROOT / "tests" / "unit" / "golden"


def assert_golden(name: str, text: str) -> None:
    """`text` equals the committed golden file tests/unit/golden/NAME; LEPTON_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("LEPTON_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with LEPTON_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"rerun with LEPTON_UPDATE_GOLDEN=1 and review {path}"
