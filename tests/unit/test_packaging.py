"""The distribution: `operator/` is a source root, never a package that shadows the standard library's
`operator`; the wheel ships `lepton` and `leptonctl` and works on its own."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from tests.conftest import ROOT

IMPORTS = "import operator, lepton, lepton.api; assert operator.add(2, 3) == 5; print(lepton.__file__)"


def test_imports_from_the_repo_root() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "operator/lepton/__init__.py" in out.stdout


def test_wheel_installs_and_imports_on_its_own(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("lepton_operator-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], check=True)
    for cwd in (ROOT, tmp_path):  # from the repo root too: the source tree must not shadow anything
        out = subprocess.run([python, "-c", IMPORTS], cwd=cwd, capture_output=True, text=True, check=True)
        assert "site-packages/lepton/__init__.py" in out.stdout
    crds = subprocess.run([env_dir / "bin" / "leptonctl", "crds", "--stdout"], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert crds.stdout.count("kind: CustomResourceDefinition") == 4
    stages = subprocess.run([python, "-c", "import lepton.cli.devcluster as d; print(d.FAKE_STAGES.exists())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert stages.stdout.strip() == "True"
