"""Shared helpers for every tier."""

from __future__ import annotations

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
